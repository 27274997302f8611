"""Generators with named taps and PatchGAN discriminators, built by name from a config."""

from __future__ import annotations

from torch import nn

from ackd_fast.models.architectures import ARCHITECTURES, DEFAULT_TAPS, GENERATORS, Architecture, build_generator
from ackd_fast.models.base import INITS, TappedGenerator, init_weights
from ackd_fast.models.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from ackd_fast.models.mobile_resnet import MobileResnetGenerator, mobile_resnet_9blocks
from ackd_fast.models.module_taps import ModuleTaps
from ackd_fast.models.resnet import ResnetGenerator, resnet_9blocks
from ackd_fast.models.spec import GeneratorSpec
from ackd_fast.models.unet import UnetGenerator, unet_256, unet_256_bn

DISCRIMINATORS = ("n_layers", "multi_scale")


def build_discriminator(
    name: str, in_channels: int, ndf: int = 64, n_layers: int = 3, init: str = "normal"
) -> nn.Module:
    if name == "n_layers":
        return init_weights(NLayerDiscriminator(in_channels, ndf, n_layers), init)
    if name == "multi_scale":
        return init_weights(MultiscaleDiscriminator(in_channels, ndf, n_layers), init)
    raise ValueError(f"discriminator must be one of {DISCRIMINATORS}, got {name!r}")


__all__ = [
    "ARCHITECTURES",
    "DEFAULT_TAPS",
    "DISCRIMINATORS",
    "GENERATORS",
    "INITS",
    "Architecture",
    "GeneratorSpec",
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
