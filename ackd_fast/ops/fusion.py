"""ACK-F's ops, `ack_accumulate` and `instance_norm_act_residual`: C++/CUDA kernels in ackd_fast._C.

They reach Python only through the dispatcher (`torch.ops.ackd_fast.*`); this file gives them their fake kernels
(for torch.compile and opcheck). Their autograd is C++ (csrc/autograd.cpp, the Autograd key, as torchvision's ops),
so an eager call stays in C++ down to the kernel; the backward is an op of its own.

Autocast (csrc/autocast.cpp): the inputs that must share a dtype are promoted to the widest among them, as torch.cat
does: the sources of `ack_accumulate`; x and residual of `instance_norm_act_residual`. Parameters keep their dtype.
So under autocast an fp32 source beside a bf16 one (an align conv's output) is accumulated in fp32, and a bf16 conv
output normalised beside an fp32 skip path gives fp32, as the plain PyTorch composition does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ackd_fast.ops import dispatch


def _require_extension() -> None:
    if not dispatch.EXTENSION_LOADED:
        raise RuntimeError(
            f"this op needs the C++ extension ackd_fast._C, which did not load ({dispatch.EXTENSION_ERROR})"
        )


def _output_format(x: Tensor) -> torch.memory_format:
    # Same rule as output_format() in csrc/checks.h: outputs follow a channels_last input.
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate in: fp32 for fp16/bf16."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def ack_accumulate(sources: Sequence[Tensor], weights: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """acc = sum_j weights[j] * resize(sources[j] -> size) in one pass over each source (C++/CUDA).

    sources: 1 to 4 maps (B, C, H_j, W_j) of one batch, channel count, dtype and device (under autocast: of one
    floating dtype after promotion); weights: (k,); size: (H, W); mode: "bilinear" (as F.interpolate with
    align_corners=False), "nearest" or "area" (adaptive average pooling). fp32, fp64, fp16, bf16 (fp16/bf16
    accumulate in fp32). Differentiable in sources and weights. The output is channels_last when sources[0] is.
    """
    _require_extension()
    return torch.ops.ackd_fast.ack_accumulate(list(sources), weights, [int(s) for s in size], mode)


def instance_norm_act_residual(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    act: str = "relu",
    eps: float = 1e-5,
) -> Tensor:
    """act(instance_norm(x) * weight + bias) + residual in one kernel (C++/CUDA); act is "relu" or "none".

    Instance norm per sample and channel with the biased variance, as F.instance_norm, statistics in fp32 for
    fp16/bf16. Differentiable in x, weight, bias and residual. The output takes the layout and dtype of x; residual
    must share x's dtype, except under autocast, where the wider of the two is taken (as an add would).
    """
    _require_extension()
    y, _, _ = torch.ops.ackd_fast.instance_norm_act_residual(x, weight, bias, residual, act, float(eps))
    return y


if dispatch.EXTENSION_LOADED:

    @torch.library.register_fake("ackd_fast::ack_accumulate")
    def _accumulate_fake(sources, weights, size, mode):
        first = sources[0]
        torch._check(len(sources) == weights.shape[0], lambda: "ack_accumulate: one weight per source")
        shape = (first.shape[0], first.shape[1], size[0], size[1])
        return torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=_output_format(first))

    @torch.library.register_fake("ackd_fast::ack_accumulate_backward")
    def _accumulate_backward_fake(grad, sources, weights, mode):
        grads = [torch.empty(a.shape, dtype=a.dtype, device=a.device, memory_format=_output_format(a)) for a in sources]
        return grads, weights.new_empty(weights.shape)

    @torch.library.register_fake("ackd_fast::instance_norm_act_residual")
    def _norm_fake(x, weight, bias, residual, act, eps):
        stats = x.new_empty(x.shape[:2], dtype=_opmath(x.dtype))
        return torch.empty_like(x, memory_format=_output_format(x)), stats, stats.clone()

    @torch.library.register_fake("ackd_fast::instance_norm_act_residual_backward")
    def _norm_backward_fake(grad, x, mean, rstd, weight, bias, act):
        param = weight if weight is not None else (bias if bias is not None else x)
        grad_param = x.new_empty(x.shape[1], dtype=param.dtype)
        return torch.empty_like(x, memory_format=_output_format(x)), grad_param, grad_param.clone()
