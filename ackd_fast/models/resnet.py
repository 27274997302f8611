"""The pix2pix / CycleGAN ResNet generator (`resnet_9blocks`) with named taps.

Layout of the original (Johnson et al.; Isola et al.; Zhu et al.): reflect-pad 3, 7x7 conv to ngf, IN, ReLU; two
stride-2 3x3 convs to 4*ngf; `n_blocks` residual blocks (reflect pad, 3x3 conv, IN, ReLU, reflect pad, 3x3 conv,
IN, no dropout); two stride-2 transposed convs back to ngf; reflect-pad 3, 7x7 conv to 3, tanh. The input is
clamped to [-1, 1] first, as GAN Compression's and OMGD's forward does. The instance norms
are not affine and every conv has a bias, as in the original: at ngf 64 that is 11,378,179 parameters and 56.8 GMACs
(torchprofile convention) at 1x3x256x256.

Taps (docs/DESIGN.md section 1): "stem" (end of the downsampling stem), then one tap every `n_blocks // 3` blocks,
named after the block count: "block3", "block6", "block9" for 9 blocks. All taps have 4*ngf channels at H/4 x W/4.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ackd_fast import checks
from ackd_fast.models.base import TappedGenerator

N_DOWNSAMPLING = 2  # the stem halves the resolution twice: taps live at H/4 x W/4 with 4*ngf channels


def instance_norm(channels: int) -> nn.Module:
    # The original's `norm='instance'`: no affine parameters, no running statistics.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding), instance_norm(c_out), nn.ReLU(inplace=True)]


def downsampling_stem(in_channels: int, ngf: int) -> nn.Sequential:
    layers = [nn.ReflectionPad2d(3), *conv_norm_relu(in_channels, ngf, 7)]
    for i in range(N_DOWNSAMPLING):
        mult = 2**i
        layers += conv_norm_relu(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1)
    return nn.Sequential(*layers)


def upsampling_head(ngf: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(N_DOWNSAMPLING):
        mult = 2 ** (N_DOWNSAMPLING - i)
        c_out = ngf * mult // 2
        layers += [
            nn.ConvTranspose2d(ngf * mult, c_out, 3, stride=2, padding=1, output_padding=1),
            instance_norm(c_out),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
    return nn.Sequential(*layers)


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, IN, ReLU, pad, conv3x3, IN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            *conv_norm_relu(dim, dim, 3),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            instance_norm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(TappedGenerator):
    """Args:
    in_channels, out_channels: image channels (3, 3).
    ngf: channels after the first conv; the residual blocks run at 4*ngf.
    n_blocks: residual blocks, a multiple of 3 (a tap every n_blocks // 3 blocks).
    block: the residual block class (MobileResnetGenerator swaps in separable convs).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        block: Callable[[int], nn.Module] = ResnetBlock,
    ):
        super().__init__()
        checks.positive_int("in_channels", in_channels)
        checks.positive_int("out_channels", out_channels)
        self.ngf = checks.positive_int("ngf", ngf)
        checks.positive_int("n_blocks", n_blocks)
        if n_blocks % 3:
            raise ValueError(f"n_blocks must be a multiple of 3 (a tap every n_blocks // 3 blocks), got {n_blocks}")
        dim, per_tap = ngf * 2**N_DOWNSAMPLING, n_blocks // 3
        stages: dict[str, nn.Module] = {"stem": downsampling_stem(in_channels, ngf)}
        for t in range(1, 4):
            stages[f"block{t * per_tap}"] = nn.Sequential(*(block(dim) for _ in range(per_tap)))
        self.stages = nn.ModuleDict(stages)
        self.head = upsampling_head(ngf, out_channels)

    # GAN Compression's and OMGD's ResnetGenerator clamp their input to [-1, 1] (their MobileResnetGenerator does
    # not): the same here, so a generator loaded from their files gives their output on any input.
    clamp_input = True

    def tap_channels(self) -> dict[str, int]:
        dim = self.ngf * 2**N_DOWNSAMPLING
        return dict.fromkeys(self.stages, dim)

    def _run(self, x: Tensor, taps: tuple[str, ...], replace: dict[str, Tensor], features: dict[str, Tensor]):
        return super()._run(x.clamp(-1, 1) if self.clamp_input else x, taps, replace, features)


def resnet_9blocks(ngf: int = 64, in_channels: int = 3, out_channels: int = 3) -> ResnetGenerator:
    return ResnetGenerator(in_channels, out_channels, ngf=ngf, n_blocks=9)
