"""The built-in generators, one row each: how to build one, its default taps, the key layouts its files come in and
the one `export --format peer` writes. `peers`, `export` and `assembly` read these rows; nothing else names an
architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ackd_fast.models.base import TappedGenerator, init_weights
from ackd_fast.models.mobile_resnet import mobile_resnet_9blocks
from ackd_fast.models.resnet import resnet_9blocks
from ackd_fast.models.unet import unet_256, unet_256_bn

# The state-dict key layouts a generator file can have (peers.py maps between them)
OURS = "ackd_fast"
GAN_COMPRESSION = "gan_compression"
CYCLEGAN_PIX2PIX = "cyclegan_pix2pix"
LAYOUT_NAMES = {
    OURS: "ackd_fast",
    GAN_COMPRESSION: "GAN Compression / OMGD",
    CYCLEGAN_PIX2PIX: "pytorch-CycleGAN-and-pix2pix / OMGD",
}


@dataclass(frozen=True)
class Architecture:
    """A built-in generator. build(ngf=, in_channels=, out_channels=); family: "resnet" or "unet" (which key mapping
    of peers.py applies); default_taps: what the distiller reads when --taps is empty (); layouts: the key layouts
    its files come in, in the order they are tried; peer_layout: the layout `export --format peer` writes (the one
    GAN Compression's / OMGD's test.py loads); first_conv: the key whose output channels are ngf."""

    build: Callable[..., TappedGenerator]
    family: str
    default_taps: tuple[str, ...]
    layouts: tuple[str, ...]
    peer_layout: str

    @property
    def first_conv(self) -> str:
        return "stages.enc1.0.weight" if self.family == "unet" else "stages.stem.1.weight"


# The ResNets' default taps: the end of the stem and of blocks 3, 6, 9 (docs/DESIGN.md section 1). A U-Net has no
# such convention; its run must name its taps.
_RESNET_TAPS = ("stem", "block3", "block6", "block9")
ARCHITECTURES = {
    "resnet_9blocks": Architecture(
        resnet_9blocks, "resnet", _RESNET_TAPS, (OURS, GAN_COMPRESSION, CYCLEGAN_PIX2PIX), GAN_COMPRESSION
    ),
    "mobile_resnet_9blocks": Architecture(
        mobile_resnet_9blocks, "resnet", _RESNET_TAPS, (OURS, GAN_COMPRESSION), GAN_COMPRESSION
    ),
    "unet_256": Architecture(unet_256, "unet", (), (OURS, CYCLEGAN_PIX2PIX), CYCLEGAN_PIX2PIX),
    "unet_256_bn": Architecture(unet_256_bn, "unet", (), (OURS, CYCLEGAN_PIX2PIX), CYCLEGAN_PIX2PIX),
}
GENERATORS = tuple(ARCHITECTURES)
DEFAULT_TAPS = {name: arch.default_taps for name, arch in ARCHITECTURES.items() if arch.default_taps}


def build_generator(
    name: str, ngf: int, in_channels: int = 3, out_channels: int = 3, init: str = "normal"
) -> TappedGenerator:
    """The built-in generator `name` at width `ngf`, initialised as `init` says (INITS; "normal": the peers'
    normal(0, 0.02))."""
    if name not in ARCHITECTURES:
        raise ValueError(f"generator must be one of {GENERATORS}, got {name!r}")
    generator = ARCHITECTURES[name].build(ngf=ngf, in_channels=in_channels, out_channels=out_channels)
    return init_weights(generator, init)


__all__ = ["ARCHITECTURES", "DEFAULT_TAPS", "GENERATORS", "LAYOUT_NAMES", "Architecture", "build_generator"]
