"""The custom ops and their dispatch: which backend runs each op on each device.

Ops of the C++ extension reach Python only through the dispatcher (`torch.ops.ackd_fast.*`); this file gives
them their fake kernels (for torch.compile and opcheck) and their autograd. `backends()` reports what is
built and what each op runs; a backend that is forced but cannot run raises instead of falling back.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from ackd_fast import checks

try:  # importing _C runs its TORCH_LIBRARY registrations
    from ackd_fast import _C  # noqa: F401

    EXTENSION_ERROR: str | None = None
except ImportError as exc:
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"

EXTENSION_LOADED = EXTENSION_ERROR is None
TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None

# The backends each module-level op can run on, fastest first; "auto" takes the first that can run on the
# input's device and dtype.
BACKENDS: dict[str, tuple[str, ...]] = {
    "ack_attention": ("triton", "reference"),
    "ack_fusion": ("extension", "reference"),
}

# What the C++ kernels of each device compute in (CUDA accumulates fp16/bf16 in fp32).
EXTENSION_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
# (backend, device type) pairs that "auto" passes over although they can run: the Triton interpreter on CPU
# is for testing the kernels, far too slow for users.
AUTO_SKIPS = {("triton", "cpu")}
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def extension_cuda_version() -> int | None:
    """CUDA runtime version `ackd_fast._C` was compiled with (e.g. 13000), or None for a CPU-only build."""
    if not EXTENSION_LOADED:
        return None
    version = torch.ops.ackd_fast.cuda_version()
    return None if version < 0 else version


def _unavailable(backend: str, device_type: str, dtype: torch.dtype | None = None) -> str | None:
    """Why `backend` cannot run on `device_type` (for inputs of `dtype`, when given), or None when it can."""
    if backend == "reference":
        return None
    if backend == "triton":
        if not TRITON_IMPORTABLE:
            return "triton is not installed"
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "set TRITON_INTERPRET=1 before importing ackd_fast to run Triton kernels on CPU"
        if device_type not in ("cpu", "cuda"):
            return "the Triton kernels run on cuda (and on cpu under the Triton interpreter)"
        if dtype is not None and dtype not in TRITON_DTYPES:
            return f"the Triton kernels compute in {TRITON_DTYPES}, got {dtype}"
        return None
    if backend == "extension":
        if not EXTENSION_LOADED:
            return f"the C++ extension ackd_fast._C did not load ({EXTENSION_ERROR})"
        if device_type == "cuda" and extension_cuda_version() is None:
            return "ackd_fast._C was built without CUDA (rebuild with FORCE_CUDA=1)"
        supported = EXTENSION_DTYPES.get(device_type, ())
        if not supported:
            return f"ackd_fast._C has no kernels for {device_type}"
        if dtype is not None and dtype not in supported:
            return f"its {device_type} kernels take {', '.join(str(d) for d in supported)}, got {dtype}"
        return None
    return f"unknown backend {backend!r}"


def check_backend(op: str, backend: str) -> str:
    """Validates a constructor's `backend` argument for `op`."""
    choices = ("auto", *BACKENDS[op])
    if backend not in choices:
        raise ValueError(f"backend for {op} must be one of {choices}, got {backend!r}")
    return backend


def resolve_backend(op: str, backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The backend that runs `op` on `device` (for inputs of `dtype`, when given): the forced one (or an error
    saying why it cannot run), or for "auto" the fastest that can."""
    device_type = torch.device(device).type
    if backend != "auto":
        reason = _unavailable(backend, device_type, dtype)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} for {op} cannot run on {device_type}: {reason}")
        return backend
    for candidate in BACKENDS[op]:
        if (candidate, device_type) not in AUTO_SKIPS and _unavailable(candidate, device_type, dtype) is None:
            return candidate
    raise RuntimeError(f"no backend for {op} can run on {device_type}")  # unreachable: reference always runs


def backends() -> dict:
    """What is built and present, and which backend each op runs per device under backend="auto" (for float32;
    `resolve_backend` answers for other dtypes)."""
    triton_version = None
    if TRITON_IMPORTABLE:
        import triton

        triton_version = triton.__version__
    cuda_version = extension_cuda_version()
    return {
        "extension": {
            "loaded": EXTENSION_LOADED,
            "cuda_compiled": cuda_version is not None,
            "cuda_version": cuda_version,
            "error": EXTENSION_ERROR,
        },
        "triton": {
            "importable": triton_version is not None,
            "version": triton_version,
            "interpret": os.environ.get("TRITON_INTERPRET") == "1",
        },
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "ops": {
            op: {dev: resolve_backend(op, "auto", dev, torch.float32) for dev in ("cpu", "cuda")} for op in BACKENDS
        },
    }


# ------------------------------------------------------------------------------------------- ACK-F ops


def _require_extension() -> None:
    if not EXTENSION_LOADED:
        raise RuntimeError(f"this op needs the C++ extension ackd_fast._C, which did not load ({EXTENSION_ERROR})")


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

    sources: 1 to 4 maps (B, C, H_j, W_j) of one batch, channel count, dtype and device; weights: (k,);
    size: (H, W); mode: "bilinear" (as F.interpolate with align_corners=False), "nearest" or "area" (adaptive
    average pooling). Differentiable in sources and weights. The output is channels_last when sources[0] is.
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

    Instance norm per sample and channel with the biased variance, as F.instance_norm. Differentiable in x,
    weight, bias and residual. The output takes the layout of x, and the dtype of `norm(x) + residual`: a
    residual wider than x (an fp32 skip path beside bf16 maps under autocast) widens the computation.
    """
    _require_extension()
    if residual is not None and residual.dtype != x.dtype and x.is_floating_point() and residual.is_floating_point():
        dtype = torch.promote_types(x.dtype, residual.dtype)
        x, residual = x.to(dtype), residual.to(dtype)
    y, _, _ = torch.ops.ackd_fast.instance_norm_act_residual(x, weight, bias, residual, act, float(eps))
    return y


def _accumulate_setup_context(ctx, inputs, output):
    sources, weights, _, mode = inputs
    ctx.save_for_backward(weights, *sources)
    ctx.mode = mode


def _accumulate_backward(ctx, grad):
    weights, *sources = ctx.saved_tensors
    grad_sources, grad_weights = torch.ops.ackd_fast.ack_accumulate_backward(grad, sources, weights, ctx.mode)
    return list(grad_sources), grad_weights, None, None


def _norm_setup_context(ctx, inputs, output):
    x, weight, bias, residual, act, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, mean, rstd, weight, bias)
    ctx.act = act
    ctx.has_residual = residual is not None


def _norm_backward(ctx, grad, _grad_mean, _grad_rstd):
    x, mean, rstd, weight, bias = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.ackd_fast.instance_norm_act_residual_backward(
        grad, x, mean, rstd, weight, bias, ctx.act
    )
    return (
        grad_x,
        grad_weight if weight is not None else None,
        grad_bias if bias is not None else None,
        grad if ctx.has_residual else None,
        None,
        None,
    )


if EXTENSION_LOADED:

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

    torch.library.register_autograd(
        "ackd_fast::ack_accumulate", _accumulate_backward, setup_context=_accumulate_setup_context
    )
    torch.library.register_autograd(
        "ackd_fast::instance_norm_act_residual", _norm_backward, setup_context=_norm_setup_context
    )


# ------------------------------------------------------------------------------------------ ack_attention


def ack_attention(
    q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], heads: int, scale: float | None = None
) -> Tensor:
    """Multi-head cross-attention of q over the tokens of all key/value sources under one softmax (Triton).

    q: (B, heads*d, Hq, Wq); keys[j], values[j]: (B, heads*d, H_j, W_j), 1 to 4 sources, any strides;
    fp16, bf16 or fp32 (fp32 matmuls follow torch.get_float32_matmul_precision()); d <= 128. Returns
    (B, heads*d, Hq, Wq), NCHW contiguous; `scale` defaults to 1/sqrt(d). Differentiable in q, keys, values.
    Runs on CUDA, and on CPU under the Triton interpreter (TRITON_INTERPRET=1) for tests;
    `ackd_fast.reference.ack_attention` is the same computation in plain PyTorch.
    """
    q, keys, values = checks.attention_inputs(q, keys, values, heads)
    if scale is not None:
        scale = float(scale)
    reason = _unavailable("triton", q.device.type, q.dtype)
    if reason is not None:
        raise RuntimeError(f"ack_attention (Triton) cannot run on {q.device.type}: {reason}")
    return torch.ops.ackd_fast.ack_attention(q, keys, values, heads, scale)[0]


def _kernels():
    # Imported on first use: triton is imported only when a kernel runs, and TRITON_INTERPRET is read then.
    return importlib.import_module("ackd_fast.kernels.ack_attention")


@torch.library.custom_op("ackd_fast::ack_attention", mutates_args=())
def _ack_attention_op(
    q: Tensor, keys: list[Tensor], values: list[Tensor], heads: int, scale: float | None
) -> tuple[Tensor, Tensor]:
    """(out, lse): out NCHW contiguous in q's dtype, lse (B*heads, Hq*Wq) fp32, the natural log-sum-exp of
    each query's scores (what the backward needs)."""
    return _kernels().forward(q, keys, values, heads, scale)


@_ack_attention_op.register_fake
def _ack_attention_fake(q, keys, values, heads, scale):
    batch, _channels, height, width = q.shape
    out = q.new_empty(q.shape)
    lse = q.new_empty((batch * heads, height * width), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("ackd_fast::ack_attention_backward", mutates_args=())
def _ack_attention_backward_op(
    grad_out: Tensor,
    q: Tensor,
    keys: list[Tensor],
    values: list[Tensor],
    out: Tensor,
    lse: Tensor,
    heads: int,
    scale: float | None,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(dq, dkeys, dvalues), NCHW contiguous, from the forward's inputs, out and lse."""
    return _kernels().backward(grad_out, q, keys, values, out, lse, heads, scale)


@_ack_attention_backward_op.register_fake
def _ack_attention_backward_fake(grad_out, q, keys, values, out, lse, heads, scale):
    def like(x):
        return x.new_empty(x.shape)

    return like(q), [like(k) for k in keys], [like(v) for v in values]


def _ack_attention_setup_context(ctx, inputs, output):
    q, keys, values, heads, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, *keys, *values, out, lse)
    ctx.sources, ctx.heads, ctx.scale = len(keys), heads, scale


def _ack_attention_backward(ctx, grad_out, _grad_lse):
    q, *saved = ctx.saved_tensors
    n = ctx.sources
    keys, values, (out, lse) = saved[:n], saved[n : 2 * n], saved[2 * n :]
    dq, dkeys, dvalues = torch.ops.ackd_fast.ack_attention_backward(
        grad_out, q, keys, values, out, lse, ctx.heads, ctx.scale
    )
    return dq, dkeys, dvalues, None, None


torch.library.register_autograd(
    "ackd_fast::ack_attention", _ack_attention_backward, setup_context=_ack_attention_setup_context
)
