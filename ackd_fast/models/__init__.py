"""Generators with named taps and PatchGAN discriminators, built by name from a config."""

from __future__ import annotations

from torch import nn

from ackd_fast.models.base import INITS, TappedGenerator, init_weights
from ackd_fast.models.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from ackd_fast.models.mobile_resnet import MobileResnetGenerator, mobile_resnet_9blocks
from ackd_fast.models.module_taps import ModuleTaps
from ackd_fast.models.resnet import ResnetGenerator, resnet_9blocks
from ackd_fast.models.unet import UnetGenerator, unet_256, unet_256_bn

GENERATORS = {
    "resnet_9blocks": resnet_9blocks,
    "mobile_resnet_9blocks": mobile_resnet_9blocks,
    "unet_256": unet_256,
    "unet_256_bn": unet_256_bn,
}
DISCRIMINATORS = ("n_layers", "multi_scale")

# The taps the distiller reads by default: the ResNet's end of stem and blocks 3, 6, 9 (docs/DESIGN.md section 1).
# A U-Net has no such convention; its config must name its taps.
DEFAULT_TAPS = {
    "resnet_9blocks": ("stem", "block3", "block6", "block9"),
    "mobile_resnet_9blocks": ("stem", "block3", "block6", "block9"),
}


def build_generator(
    name: str, ngf: int, in_channels: int = 3, out_channels: int = 3, init: str = "normal"
) -> TappedGenerator:
    """The generator `name` at width `ngf`, initialised as `init` says (INITS; "normal": the peers' normal(0, 0.02))."""
    if name not in GENERATORS:
        raise ValueError(f"generator must be one of {tuple(GENERATORS)}, got {name!r}")
    return init_weights(GENERATORS[name](ngf=ngf, in_channels=in_channels, out_channels=out_channels), init)


def build_discriminator(
    name: str, in_channels: int, ndf: int = 64, n_layers: int = 3, init: str = "normal"
) -> nn.Module:
    if name == "n_layers":
        return init_weights(NLayerDiscriminator(in_channels, ndf, n_layers), init)
    if name == "multi_scale":
        return init_weights(MultiscaleDiscriminator(in_channels, ndf, n_layers), init)
    raise ValueError(f"discriminator must be one of {DISCRIMINATORS}, got {name!r}")


__all__ = [
    "DEFAULT_TAPS",
    "DISCRIMINATORS",
    "GENERATORS",
    "INITS",
    "MobileResnetGenerator",
    "ModuleTaps",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "ResnetGenerator",
    "TappedGenerator",
    "UnetGenerator",
    "build_discriminator",
    "build_generator",
    "init_weights",
    "mobile_resnet_9blocks",
    "resnet_9blocks",
    "unet_256",
    "unet_256_bn",
]
