"""The custom ops and their dispatch: which backend runs each op on each device.

Ops of the C++ extension reach Python only through the dispatcher (`torch.ops.ackd_fast.*`); this file gives
them their fake kernels (for torch.compile and opcheck) and their autograd. `backends()` reports what is
built and what each op runs; a backend that is forced but cannot run raises instead of falling back.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from torch import Tensor

try:  # importing _C runs its TORCH_LIBRARY registrations
    from ackd_fast import _C  # noqa: F401

    EXTENSION_ERROR: str | None = None
except ImportError as exc:
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"

EXTENSION_LOADED = EXTENSION_ERROR is None

# The backends each module-level op can run on, fastest first; "auto" takes the first that can run on the
# input's device. The fast backends join these lists with the ACK-A (Triton) and ACK-F (C++) issues.
BACKENDS: dict[str, tuple[str, ...]] = {
    "ack_attention": ("reference",),
    "ack_fusion": ("reference",),
}


def extension_cuda_version() -> int | None:
    """CUDA runtime version `ackd_fast._C` was compiled with (e.g. 13000), or None for a CPU-only build."""
    if not EXTENSION_LOADED:
        return None
    version = torch.ops.ackd_fast.cuda_version()
    return None if version < 0 else version


def _unavailable(backend: str, device_type: str) -> str | None:
    """Why `backend` cannot run on `device_type`, or None when it can."""
    if backend == "reference":
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


def resolve_backend(op: str, backend: str, device: torch.device | str) -> str:
    """The backend that runs `op` on `device`: the forced one (or an error saying why it cannot run), or for
    "auto" the fastest that can."""
    device_type = torch.device(device).type
    if backend != "auto":
        reason = _unavailable(backend, device_type)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} for {op} cannot run on {device_type}: {reason}")
        return backend
    for candidate in BACKENDS[op]:
        if _unavailable(candidate, device_type) is None:
            return candidate
    raise RuntimeError(f"no backend for {op} can run on {device_type}")  # unreachable: reference always runs


def backends() -> dict:
    """What is built and present, and which backend each op runs per device under backend="auto"."""
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
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
        "triton": {"importable": triton_version is not None, "version": triton_version},
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
