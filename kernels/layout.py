"""The memory layouts of the ACK-A kernels' maps, without Triton: what the launchers and the ops' fake kernels
(ackd_fast/ops/attention.py) share, so that a traced graph sees the strides a launch returns."""

from __future__ import annotations

import torch
from torch import Tensor


def map_strides(x: Tensor) -> tuple[tuple[int, int, int, int], bool]:
    """(batch, channel, row, column) strides of a (B, C, H, W) map, and whether its rows follow each other in
    memory; then the column stride returned is the token stride."""
    sb, sc, sh, sw = x.stride()
    height, width = x.shape[2], x.shape[3]
    if width == 1:
        return (sb, sc, sh, sh), True
    return (sb, sc, sh, sw), height == 1 or sh == width * sw


def output_like(x: Tensor) -> Tensor:
    """A new map for an output or gradient of `x`: in x's memory format (channels_last in, channels_last out; a
    view's layout as torch.empty_like suggests it), NCHW contiguous where that layout's rows would not follow each
    other (a permuted H/W). The kernels write it through its (batch, channel, token) strides."""
    y = torch.empty_like(x)
    return y if map_strides(y)[1] else torch.empty(x.shape, dtype=x.dtype, device=x.device)
