"""PatchGAN discriminators: the pix2pix `n_layers` PatchGAN (70x70 receptive field at 3 layers) and a multi-scale
variant (pix2pixHD) that runs copies of it on the input downsampled by 2, 4, ... Both return a list of logit maps,
one per scale, so the GAN losses treat them alike."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ackd_fast import checks
from ackd_fast.models.resnet import instance_norm

MAX_MULT = 8


class NLayerDiscriminator(nn.Module):
    """conv4x4/2 + LeakyReLU, then n_layers-1 conv4x4/2 + IN + LeakyReLU, conv4x4/1 + IN + LeakyReLU, conv4x4/1 -> 1."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        checks.positive_int("in_channels", in_channels)
        checks.positive_int("ndf", ndf)
        checks.positive_int("n_layers", n_layers)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, MAX_MULT)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1),
                instance_norm(ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.model(x)]


class MultiscaleDiscriminator(nn.Module):
    """`num_scales` PatchGANs; scale s sees the input average-pooled s times by 2."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, num_scales: int = 2):
        super().__init__()
        checks.positive_int("num_scales", num_scales)
        self.scales = nn.ModuleList(NLayerDiscriminator(in_channels, ndf, n_layers) for _ in range(num_scales))

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outs += d(x)
        return outs
