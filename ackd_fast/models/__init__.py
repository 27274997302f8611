"""Generators with named taps and PatchGAN discriminators, built by name from a config."""

from __future__ import annotations

from torch import nn

from ackd_fast.models.base import TappedGenerator
from ackd_fast.models.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from ackd_fast.models.mobile_resnet import MobileResnetGenerator, mobile_resnet_9blocks
from ackd_fast.models.resnet import ResnetGenerator, resnet_9blocks
from ackd_fast.models.unet import UnetGenerator, unet_256, unet_256_bn

GENERATORS = {
    "resnet_9blocks": resnet_9blocks,
    "mobile_resnet_9blocks": mobile_resnet_9blocks,
    "unet_256": unet_256,
    "unet_256_bn": unet_256_bn,
}
DISCRIMINATORS = ("n_layers", "multi_scale")

# The taps the distiller reads by default: the ResNet's end of stem and blocks 3, 6, 9 (DESIGN.md section 1). A U-Net
# has no such convention; its config must name its taps.
DEFAULT_TAPS = {
    "resnet_9blocks": ("stem", "block3", "block6", "block9"),
    "mobile_resnet_9blocks": ("stem", "block3", "block6", "block9"),
}


def build_generator(name: str, ngf: int, in_channels: int = 3, out_channels: int = 3) -> TappedGenerator:
    if name not in GENERATORS:
        raise ValueError(f"generator must be one of {tuple(GENERATORS)}, got {name!r}")
    return GENERATORS[name](ngf=ngf, in_channels=in_channels, out_channels=out_channels)


def build_discriminator(name: str, in_channels: int, ndf: int = 64, n_layers: int = 3) -> nn.Module:
    if name == "n_layers":
        return NLayerDiscriminator(in_channels, ndf, n_layers)
    if name == "multi_scale":
        return MultiscaleDiscriminator(in_channels, ndf, n_layers)
    raise ValueError(f"discriminator must be one of {DISCRIMINATORS}, got {name!r}")


__all__ = [
    "DEFAULT_TAPS",
    "DISCRIMINATORS",
    "GENERATORS",
    "MobileResnetGenerator",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "ResnetGenerator",
    "TappedGenerator",
    "UnetGenerator",
    "build_discriminator",
    "build_generator",
    "mobile_resnet_9blocks",
    "resnet_9blocks",
    "unet_256",
    "unet_256_bn",
]
