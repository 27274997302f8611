"""The peers' generator and discriminator layouts as data, and plain functional forwards over their tensors: the
oracle the loaders are checked against. Written from the peers' model code (GAN Compression and OMGD
models/modules/resnet_architecture, pytorch-CycleGAN-and-pix2pix models/networks.py), independently of
ackd_fast.peers: nothing here imports ackd_fast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resnet_shapes(ngf: int, block_conv2: int, mobile: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a 9-block ResNet generator saved by the peers: `model.N.*`, a block's second conv at
    `conv_block.6` (GAN Compression / OMGD: a Dropout at 4) or `conv_block.5` (pytorch-CycleGAN-and-pix2pix);
    mobile blocks: `conv_block.{1,6}.conv.{0,2}` (depthwise 3x3, pointwise 1x1)."""
    d = 4 * ngf
    convs = {"model.1": (ngf, 3, 7, 7), "model.4": (2 * ngf, ngf, 3, 3), "model.7": (d, 2 * ngf, 3, 3)}
    for block in range(10, 19):
        for i in (1, block_conv2):
            if mobile:
                convs[f"model.{block}.conv_block.{i}.conv.0"] = (d, 1, 3, 3)
                convs[f"model.{block}.conv_block.{i}.conv.2"] = (d, d, 1, 1)
            else:
                convs[f"model.{block}.conv_block.{i}"] = (d, d, 3, 3)
    convs |= {"model.19": (d, 2 * ngf, 3, 3), "model.22": (2 * ngf, ngf, 3, 3), "model.26": (3, ngf, 7, 7)}
    shapes = {}
    for k, w in convs.items():
        out = w[1] if k in ("model.19", "model.22") else w[0]  # ConvTranspose2d weights are (in, out, k, k)
        shapes[f"{k}.weight"], shapes[f"{k}.bias"] = w, (out,)
    return shapes


def old_instance_norm_stats(ngf: int) -> dict[str, tuple[int, ...]]:
    """The running statistics old pytorch-CycleGAN-and-pix2pix files carry for each instance norm of a
    `resnet_9blocks` (no dropout): norms at model.2/5/8, conv_block.2/6 of each block, model.20/23."""
    d = 4 * ngf
    norms = {"model.2": ngf, "model.5": 2 * ngf, "model.8": d, "model.20": 2 * ngf, "model.23": ngf}
    for block in range(10, 19):
        norms |= {f"model.{block}.conv_block.2": d, f"model.{block}.conv_block.6": d}
    shapes = {}
    for k, c in norms.items():
        shapes |= {f"{k}.running_mean": (c,), f"{k}.running_var": (c,), f"{k}.num_batches_tracked": ()}
    return shapes


def unet_shapes(ngf: int, batch_norm: bool, num_downs: int = 8) -> dict[str, tuple[int, ...]]:
    """Key -> shape of pytorch-CycleGAN-and-pix2pix's / OMGD's UnetGenerator: nested blocks, `model.model.` the
    outermost ([downconv, inner, relu, upconv, tanh]), `1.model.` the next, `3.model.` each deeper one ([lrelu,
    downconv, downnorm, inner, relu, upconv, upnorm, (dropout)]; the innermost [lrelu, downconv, relu, upconv,
    upnorm]). With batch norm the convs have no bias, except the outermost upconv."""
    outer = [3] + [ngf * min(2**i, 8) for i in range(num_downs)]  # level L: outer_nc outer[L-1], inner_nc outer[L]
    shapes: dict[str, tuple[int, ...]] = {}
    prefix = "model.model."
    for level in range(1, num_downs + 1):
        o, i = outer[level - 1], outer[level]
        if level == 1:
            parts = {"0": ("conv", (i, 3, 4, 4)), "3": ("upconv_bias", (2 * i, 3, 4, 4))}
        elif level == num_downs:
            parts = {"1": ("conv", (i, o, 4, 4)), "3": ("conv_t", (i, o, 4, 4)), "4": ("norm", (o,))}
        else:
            parts = {"1": ("conv", (i, o, 4, 4)), "2": ("norm", (i,)), "5": ("conv_t", (2 * i, o, 4, 4)),
                     "6": ("norm", (o,))}  # fmt: skip
        for index, (kind, shape) in parts.items():
            key = prefix + index
            if kind == "norm":
                if batch_norm:
                    c = shape
                    shapes |= {f"{key}.weight": c, f"{key}.bias": c, f"{key}.running_mean": c,
                               f"{key}.running_var": c, f"{key}.num_batches_tracked": ()}  # fmt: skip
                continue
            shapes[f"{key}.weight"] = shape
            if kind == "upconv_bias" or not batch_norm:
                shapes[f"{key}.bias"] = (shape[1] if kind in ("conv_t", "upconv_bias") else shape[0],)
        prefix += "1.model." if level == 1 else "3.model."
    return shapes


def discriminator_shapes(in_channels: int, ndf: int, n_layers: int = 3) -> dict[str, tuple[int, ...]]:
    """pix2pix's NLayerDiscriminator with instance norm (GAN Compression's latest_net_D.pth): convs at model.0,
    then model.2, 5, 8, ... (conv, norm, lrelu), the last one 1-channel."""
    chans = [in_channels, ndf] + [ndf * min(2**n, 8) for n in range(1, n_layers + 1)] + [1]
    shapes = {}
    for j in range(len(chans) - 1):
        key = "model.0" if j == 0 else f"model.{3 * j - 1}"
        shapes |= {f"{key}.weight": (chans[j + 1], chans[j], 4, 4), f"{key}.bias": (chans[j + 1],)}
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], generator: torch.Generator) -> dict[str, Tensor]:
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[k] = torch.randn(shape, generator=generator) * 0.2
    return state


# ----------------------------------------------------------------------------------------- the oracles


def _conv(sd, x, key, stride=1, padding=0, groups=1):
    return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride, padding, groups=groups)


def _up(sd, x, key, kernel_padding=1, output_padding=1):
    return F.conv_transpose2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), 2, kernel_padding, output_padding)


def _inorm(x):
    return F.instance_norm(x, eps=1e-5)


def _reflect(x, p):
    return F.pad(x, (p, p, p, p), mode="reflect")


def resnet_forward(sd: dict, x: Tensor, block_conv2: int, mobile: bool, clamp: bool) -> Tensor:
    """The peers' ResnetGenerator / MobileResnetGenerator forward, written out."""
    h = x.clamp(-1, 1) if clamp else x
    h = F.relu(_inorm(_conv(sd, _reflect(h, 3), "model.1")))
    h = F.relu(_inorm(_conv(sd, h, "model.4", 2, 1)))
    h = F.relu(_inorm(_conv(sd, h, "model.7", 2, 1)))
    for block in range(10, 19):

        def conv3(y, i, block=block):
            y = _reflect(y, 1)
            key = f"model.{block}.conv_block.{i}"
            if mobile:
                return _conv(sd, _inorm(_conv(sd, y, f"{key}.conv.0", groups=y.shape[1])), f"{key}.conv.2")
            return _conv(sd, y, key)

        h = h + _inorm(conv3(F.relu(_inorm(conv3(h, 1))), block_conv2))
    h = F.relu(_inorm(_up(sd, h, "model.19")))
    h = F.relu(_inorm(_up(sd, h, "model.22")))
    return torch.tanh(_conv(sd, _reflect(h, 3), "model.26"))


def unet_forward(sd: dict, x: Tensor, batch_norm: bool, num_downs: int = 8) -> Tensor:
    """pytorch-CycleGAN-and-pix2pix's UnetGenerator forward in eval mode (dropout off, batch norm on its running
    statistics). Its down ReLU is in place: the skip a block concatenates is its input after the leaky ReLU."""

    def norm(h, key):
        if not batch_norm:
            return _inorm(h)
        return F.batch_norm(h, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                            sd[f"{key}.bias"], False, 0.1, 1e-5)  # fmt: skip

    def block(h, level, prefix):
        if level == 1:
            inner = block(_conv(sd, h, prefix + "0", 2, 1), 2, prefix + "1.model.")
            return torch.tanh(_up(sd, F.relu(inner), prefix + "3", 1, 0))
        h = F.leaky_relu(h, 0.2)
        if level == num_downs:
            up = norm(_up(sd, F.relu(_conv(sd, h, prefix + "1", 2, 1)), prefix + "3", 1, 0), prefix + "4")
            return torch.cat([h, up], 1)
        inner = block(norm(_conv(sd, h, prefix + "1", 2, 1), prefix + "2"), level + 1, prefix + "3.model.")
        return torch.cat([h, norm(_up(sd, F.relu(inner), prefix + "5", 1, 0), prefix + "6")], 1)

    return block(x, 1, "model.model.")


def discriminator_forward(sd: dict, x: Tensor) -> Tensor:
    keys = sorted({k.rsplit(".", 1)[0] for k in sd}, key=lambda k: int(k.split(".")[1]))
    h = F.leaky_relu(_conv(sd, x, keys[0], 2, 1), 0.2)
    for j, key in enumerate(keys[1:-1], 1):
        stride = 2 if j < len(keys) - 2 else 1
        h = F.leaky_relu(_inorm(_conv(sd, h, key, stride, 1)), 0.2)
    return _conv(sd, h, keys[-1], 1, 1)
