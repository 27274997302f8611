"""GAN Compression's MobileResnetGenerator (`mobile_resnet_9blocks`): the ResNet generator with its residual
blocks built from depthwise-separable convs (depthwise 3x3, IN, pointwise 1x1). Stem, head and taps are the
ResNet's. At ngf 16 this is the 0.137 M parameter / 1.41 GMAC student of GAN Compression and OMGD.
"""

from __future__ import annotations

from torch import Tensor, nn

from ackd_fast.models.resnet import ResnetGenerator, instance_norm


class SeparableConv2d(nn.Sequential):
    """Depthwise kxk conv, IN, pointwise 1x1 conv (both with bias, as in GAN Compression)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3):
        super().__init__(nn.Conv2d(c_in, c_in, kernel, groups=c_in), instance_norm(c_in), nn.Conv2d(c_in, c_out, 1))


class MobileResnetBlock(nn.Module):
    """x + (pad, sepconv, IN, ReLU, pad, sepconv, IN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            SeparableConv2d(dim, dim),
            instance_norm(dim),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            SeparableConv2d(dim, dim),
            instance_norm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MobileResnetGenerator(ResnetGenerator):
    clamp_input = False  # GAN Compression's and OMGD's MobileResnetGenerator take the input as it is

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 16, n_blocks: int = 9):
        super().__init__(in_channels, out_channels, ngf=ngf, n_blocks=n_blocks, block=MobileResnetBlock)


def mobile_resnet_9blocks(ngf: int = 16, in_channels: int = 3, out_channels: int = 3) -> MobileResnetGenerator:
    return MobileResnetGenerator(in_channels, out_channels, ngf=ngf, n_blocks=9)
