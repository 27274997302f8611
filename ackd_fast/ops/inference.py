"""The CPU inference ops of `ackd_fast.deploy`'s rewrite, `mobile_block` and `narrow_conv2d` (C++ in ackd_fast._C,
csrc/cpu/deploy_cpu.cpp): their fake kernels, so that inductor traces them, and whether they can run. They are
forward-only: the rewrite (`ackd_fast.rewrite`) swaps them into a generator in eval mode."""

from __future__ import annotations

import torch

from ackd_fast.ops import dispatch
from ackd_fast.ops.fusion import _output_format

KERNEL_DTYPES = (torch.float32, torch.float64)
MAX_NARROW_OUT = 4  # narrow_conv2d's output channels (csrc/cpu/deploy_cpu.cpp)

if dispatch.EXTENSION_LOADED and hasattr(torch.ops.ackd_fast, "mobile_block"):

    @torch.library.register_fake("ackd_fast::mobile_block")
    def _mobile_block_fake(x, dw1, pw1, dw2, pw2, eps):
        return torch.empty_like(x, memory_format=_output_format(x))

    @torch.library.register_fake("ackd_fast::narrow_conv2d")
    def _narrow_conv2d_fake(x, weight, bias, act, reflect_pad=0):
        h, w = (x.shape[i] + 2 * reflect_pad - weight.shape[i] + 1 for i in (2, 3))
        return x.new_empty((x.shape[0], weight.shape[0], h, w))


def kernels_available() -> str | None:
    """Why the inference kernels cannot run, or None when they can."""
    if not dispatch.EXTENSION_LOADED:
        return f"the C++ extension ackd_fast._C did not load ({dispatch.EXTENSION_ERROR})"
    if not hasattr(torch.ops.ackd_fast, "mobile_block"):
        return "ackd_fast._C was built without the inference kernels (rebuild it)"
    return None
