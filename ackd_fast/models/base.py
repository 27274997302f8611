"""Generators with named taps: the stage structure is data, so nothing outside the model indexes its layers.

A `TappedGenerator` runs an ordered list of stages. Some stages end at a *tap*, a named feature map the distiller
may read (`taps=`) or replace (`replace=`: the map given continues the forward in place of the computed one, which
is how the ACK refiners are trained through the frozen teacher, docs/DESIGN.md section 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

# How a network we create starts: "normal" is GAN Compression's and pix2pix's init_net (every conv and linear weight
# ~ normal(0, 0.02), biases 0, BatchNorm scales ~ normal(1, 0.02)); "default" keeps PyTorch's per-layer init.
INITS = ("normal", "default")
INIT_GAIN = 0.02


@torch.no_grad()
def init_weights(module: nn.Module, init: str = "normal", gain: float = INIT_GAIN) -> nn.Module:
    """Re-initialises `module`'s layers in place as `init` says (INITS) and returns it."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "default":
        return module
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


class TappedGenerator(nn.Module):
    """Base of the generators. Subclasses build `self.stages` (an nn.ModuleDict whose keys are the tap names,
    in forward order) and may override `_run` when the forward is not a plain chain (the U-Net's skips)."""

    stages: nn.ModuleDict

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(self.stages.keys())

    def tap_channels(self) -> dict[str, int]:
        """Channels of each tap's feature map, read from the stage modules (no forward needed)."""
        return {name: self._out_channels(stage) for name, stage in self.stages.items()}

    @staticmethod
    def _out_channels(stage: nn.Module) -> int:
        channels = getattr(stage, "out_channels", None)
        if channels is not None:
            return channels
        for m in reversed(list(stage.modules())):  # the last conv of the stage sets its channels
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                return m.out_channels
        raise ValueError(f"cannot tell the output channels of stage {type(stage).__name__}")

    def _check_names(self, arg: str, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self.stages]
        if unknown:
            raise ValueError(f"{arg} names unknown taps {unknown}; {type(self).__name__} has taps {self.tap_names}")

    def forward(
        self, x: Tensor, taps: Iterable[str] = (), replace: Mapping[str, Tensor] | None = None
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Returns the output image, or (output, {tap: feature}) when `taps` names any. A replaced tap reports
        the map that was put in its place."""
        taps = tuple(taps)
        replace = dict(replace or {})
        self._check_names("taps", taps)
        self._check_names("replace", replace)
        features: dict[str, Tensor] = {}
        out = self._run(x, taps, replace, features)
        return (out, features) if taps else out

    def _run(self, x: Tensor, taps: tuple[str, ...], replace: dict[str, Tensor], features: dict[str, Tensor]):
        """A plain chain: stages in order, then `self.head`. The forward starts at the last replaced tap, since
        nothing before it can reach the output."""
        names = list(self.stages.keys())
        start = max((names.index(n) for n in replace), default=-1)
        for i, name in enumerate(names):
            if i < start and not any(t in taps for t in names[i:start]):
                continue
            x = replace[name] if name in replace else self.stages[name](x)
            if name in taps:
                features[name] = x
        return self.head(x)
