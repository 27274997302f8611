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
# input's device. The C++ ACK-F backend joins its list with the ACK-F issue.
BACKENDS: dict[str, tuple[str, ...]] = {
    "ack_attention": ("triton", "reference"),
    "ack_fusion": ("reference",),
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
    """What is built and present, and which backend each op runs per device under backend="auto"."""
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
        "ops": {op: {dev: resolve_backend(op, "auto", dev) for dev in ("cpu", "cuda")} for op in BACKENDS},
    }


# ------------------------------------------------------------------------------------------- weighted_sum


def weighted_sum(inputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """sum_j weights[j] * inputs[j] in one pass (C++/CUDA); 1 to 4 inputs of one shape, differentiable.

    The output is channels_last when inputs[0] is (and not also contiguous), else contiguous.
    """
    reason = _unavailable("extension", "cpu")
    if reason is not None:
        raise RuntimeError(f"weighted_sum needs {reason}")
    return torch.ops.ackd_fast.weighted_sum(list(inputs), weights)


def _output_format(x: Tensor) -> torch.memory_format:
    # Same rule as output_format() in csrc/checks.h.
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _weighted_sum_setup_context(ctx, inputs, output):
    tensors, weights = inputs
    ctx.save_for_backward(weights, *tensors)


def _weighted_sum_backward(ctx, grad):
    weights, *tensors = ctx.saved_tensors
    grad_inputs = [grad * w for w in weights.unbind(0)]
    grad_weights = torch.stack([(grad * x).sum() for x in tensors])
    return grad_inputs, grad_weights


if EXTENSION_LOADED:

    @torch.library.register_fake("ackd_fast::weighted_sum")
    def _weighted_sum_fake(inputs, weights):
        first = inputs[0]
        torch._check(len(inputs) == weights.shape[0], lambda: "weighted_sum: one weight per input")
        return torch.empty(first.shape, dtype=first.dtype, device=first.device, memory_format=_output_format(first))

    torch.library.register_autograd(
        "ackd_fast::weighted_sum", _weighted_sum_backward, setup_context=_weighted_sum_setup_context
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
