"""The pix2pix U-Net generator (`unet_256`: 8 downsamplings, 256x256 -> 1x1 at the bottleneck) with named taps.

Encoder i (i = 1..N) halves the resolution with a 4x4 stride-2 conv (LeakyReLU 0.2 before it, IN after it except at
the first and the innermost); decoder i doubles it with a 4x4 stride-2 transposed conv (ReLU before, IN after) and
reads the concatenation of encoder i's map and decoder i+1's. Taps are every encoder and decoder output: "enc1" ..
"encN", "decN" .. "dec2" (dec1 is the tanh image). The taps have different channels and resolutions, which the
ACK refiners accept; the distiller's config picks which ones to use.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ackd_fast import checks
from ackd_fast.models.base import TappedGenerator
from ackd_fast.models.resnet import instance_norm

MAX_MULT = 8  # encoder channels stop growing at 8*ngf, as in pix2pix


def _down(c_in: int, c_out: int, first: bool, innermost: bool) -> nn.Sequential:
    layers: list[nn.Module] = [] if first else [nn.LeakyReLU(0.2, inplace=True)]
    layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
    if not (first or innermost):
        layers.append(instance_norm(c_out))
    return nn.Sequential(*layers)


def _up(c_in: int, c_out: int, outermost: bool) -> nn.Sequential:
    # Not in place: the ReLU's input is a concatenation whose halves are also taps.
    layers: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
    layers.append(nn.Tanh() if outermost else instance_norm(c_out))
    return nn.Sequential(*layers)


class UnetGenerator(TappedGenerator):
    """Args: in_channels, out_channels (3, 3); num_downs: downsamplings (8 for 256x256, which must then be
    divisible by 2**num_downs); ngf: channels of the first encoder."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_downs: int = 8, ngf: int = 64):
        super().__init__()
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
            stages[f"enc{i + 1}"] = _down(c_in, ch[i], first=i == 0, innermost=i == num_downs - 1)
        for i in range(num_downs - 1, 0, -1):  # decoder i+1 reads encoder i+1 (+ decoder i+2), outputs ch[i-1]
            c_in = ch[i] if i == num_downs - 1 else 2 * ch[i]
            stages[f"dec{i + 1}"] = _up(c_in, ch[i - 1], outermost=False)
        self.stages = nn.ModuleDict(stages)
        self.head = _up(2 * ch[0], out_channels, outermost=True)

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
