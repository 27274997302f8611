"""The pix2pix U-Net generator (`unet_256`: 8 downsamplings, 256x256 -> 1x1 at the bottleneck) with named taps.

Encoder i (i = 1..N) halves the resolution with a 4x4 stride-2 conv (LeakyReLU 0.2 before it, IN after it except at
the first and the innermost); decoder i doubles it with a 4x4 stride-2 transposed conv (ReLU before, IN after) and
reads the concatenation of encoder i's map and decoder i+1's. Taps are every encoder and decoder output: "enc1" ..
"encN", "decN" .. "dec2" (dec1 is the tanh image). The taps have different channels and resolutions, which the
ACK refiners accept; the distiller's config picks which ones to use.

Two variants: `unet_256` (instance norm, every conv with a bias) and `unet_256_bn`, the default pix2pix U-Net of
pytorch-CycleGAN-and-pix2pix and OMGD's U-Net teachers and students: BatchNorm (affine, running statistics), no bias
on the convs of the encoders and decoders (only the outermost transposed conv keeps one), and dropout 0.5 after the
decoders of the 8*ngf levels between the fourth and the innermost (decoders 5 to 7 of 8).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ackd_fast import checks
from ackd_fast.models.base import TappedGenerator
from ackd_fast.models.resnet import instance_norm

MAX_MULT = 8  # encoder channels stop growing at 8*ngf, as in pix2pix
NORMS = ("instance", "batch")
FIRST_DROPOUT_LEVEL = 5  # pix2pix: the levels between 4*ngf -> 8*ngf and the innermost drop out


def _norm(kind: str, channels: int) -> nn.Module:
    return instance_norm(channels) if kind == "instance" else nn.BatchNorm2d(channels)


def _down(c_in: int, c_out: int, first: bool, innermost: bool, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = [] if first else [nn.LeakyReLU(0.2, inplace=True)]
    # the peers' rule: a conv has a bias unless the net uses BatchNorm (even where no norm follows it)
    layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=norm == "instance"))
    if not (first or innermost):
        layers.append(_norm(norm, c_out))
    return nn.Sequential(*layers)


def _up(c_in: int, c_out: int, outermost: bool, norm: str, dropout: bool = False) -> nn.Sequential:
    # Not in place: the ReLU's input is a concatenation whose halves are also taps.
    conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=outermost or norm == "instance")
    layers: list[nn.Module] = [nn.ReLU(), conv, nn.Tanh() if outermost else _norm(norm, c_out)]
    if dropout:
        layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers)


class UnetGenerator(TappedGenerator):
    """Args: in_channels, out_channels (3, 3); num_downs: downsamplings (8 for 256x256, which must then be
    divisible by 2**num_downs); ngf: channels of the first encoder; norm: "instance" or "batch" (then the convs
    lose their biases, as in pix2pix); dropout: dropout 0.5 after decoders 5 .. num_downs-1 (pix2pix)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
    ):
        super().__init__()
        checks.one_of("norm", norm, NORMS)
        checks.positive_int("in_channels", in_channels)
        checks.positive_int("out_channels", out_channels)
        self.num_downs = checks.positive_int("num_downs", num_downs)
        if num_downs < 2:
            raise ValueError(f"num_downs must be >= 2, got {num_downs}")
        self.ngf = checks.positive_int("ngf", ngf)
        ch = [ngf * min(2**i, MAX_MULT) for i in range(num_downs)]  # encoder i+1 outputs ch[i]
        stages: dict[str, nn.Module] = {}
        for i in range(num_downs):
            c_in = in_channels if i == 0 else ch[i - 1]
            stages[f"enc{i + 1}"] = _down(c_in, ch[i], first=i == 0, innermost=i == num_downs - 1, norm=norm)
        for i in range(num_downs - 1, 0, -1):  # decoder i+1 reads encoder i+1 (+ decoder i+2), outputs ch[i-1]
            c_in = ch[i] if i == num_downs - 1 else 2 * ch[i]
            drop = dropout and FIRST_DROPOUT_LEVEL <= i + 1 < num_downs
            stages[f"dec{i + 1}"] = _up(c_in, ch[i - 1], outermost=False, norm=norm, dropout=drop)
        self.stages = nn.ModuleDict(stages)
        self.head = _up(2 * ch[0], out_channels, outermost=True, norm=norm)

    def _run(self, x: Tensor, taps: tuple[str, ...], replace: dict[str, Tensor], features: dict[str, Tensor]):
        def stage(name: str, inp: Tensor) -> Tensor:
            out = replace[name] if name in replace else self.stages[name](inp)
            if name in taps:
                features[name] = out
            return out

        skips = []
        for i in range(1, self.num_downs + 1):
            x = stage(f"enc{i}", x)
            skips.append(x)
        y = skips.pop()
        for i in range(self.num_downs, 1, -1):
            y = stage(f"dec{i}", y if i == self.num_downs else torch.cat([skips.pop(), y], 1))
        return self.head(torch.cat([skips.pop(), y], 1))


def unet_256(ngf: int = 64, in_channels: int = 3, out_channels: int = 3) -> UnetGenerator:
    return UnetGenerator(in_channels, out_channels, num_downs=8, ngf=ngf)


def unet_256_bn(ngf: int = 64, in_channels: int = 3, out_channels: int = 3) -> UnetGenerator:
    """The pix2pix default (pytorch-CycleGAN-and-pix2pix `--netG unet_256 --norm batch`, OMGD's U-Nets)."""
    return UnetGenerator(in_channels, out_channels, num_downs=8, ngf=ngf, norm="batch", dropout=True)
