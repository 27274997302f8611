"""Which backend runs each op: what is built, what each backend can run, and `backends()`, which reports it.

`auto` takes the fastest backend that can run the inputs at hand; a backend named by the caller that cannot run them
raises, naming the reason, instead of falling back. What decides is everything a backend needs: the device, the dtype
the op computes in (autocast's where autocast is on, see `compute_dtype`), and for the Triton attention the head dim
and the number of sources.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ackd_fast.checks import MAX_HEAD_DIM, MAX_SOURCES

try:  # importing _C runs its TORCH_LIBRARY registrations
    from ackd_fast import _C  # noqa: F401

    EXTENSION_ERROR: str | None = None
except ImportError as exc:
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"

EXTENSION_LOADED = EXTENSION_ERROR is None
TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None

# The backends each module-level op can run on, fastest first; "auto" takes the first that can run. ACK-A's
# "reference" (the materialising composition, the tests' oracle) runs only when asked for: "sdpa" runs everywhere.
BACKENDS: dict[str, tuple[str, ...]] = {
    "ack_attention": ("triton", "sdpa", "reference"),
    "ack_fusion": ("extension", "reference"),
}

# What the C++ kernels of each device take. They accumulate fp16/bf16 in fp32; on CPU, fp16/bf16 maps are converted
# to fp32 on entry and back on exit (csrc/cpu), on CUDA the kernels read them as they are.
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
EXTENSION_DTYPES = {"cpu": _FLOATS, "cuda": _FLOATS}
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# (backend, device type) pairs that "auto" passes over although they can run: the Triton interpreter on CPU
# is for testing the kernels, far too slow for users.
AUTO_SKIPS = {("triton", "cpu")}
# The Triton kernels' tl.dot needs the tensor-core mma of sm_80 (Ampere) and later; older GPUs emulate bf16 and
# would run them on the FMA units, slower than PyTorch's fused attention.
TRITON_MIN_CAPABILITY = (8, 0)
_CUDA_CAPABILITIES: dict[int, tuple[int, int] | None] = {}  # by device index, asked once (compiled code reads it)


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """The compute capability of a CUDA device (its index, else device 0 when none is given: the modules pass
    their input's device, which has one), or None where there is no such device."""
    index = device.index if device.index is not None else 0
    if index not in _CUDA_CAPABILITIES:
        try:
            _CUDA_CAPABILITIES[index] = torch.cuda.get_device_capability(index)
        except (RuntimeError, AssertionError, ValueError):  # no driver, no device, a CPU-only build
            _CUDA_CAPABILITIES[index] = None
    return _CUDA_CAPABILITIES[index]


def triton_capability_reason(capability: tuple[int, int]) -> str | None:
    """Why the Triton kernels decline a GPU of this compute capability, or None when they take it."""
    if tuple(capability) < TRITON_MIN_CAPABILITY:
        major, minor = TRITON_MIN_CAPABILITY
        return (f"the Triton kernels need tensor-core mma (sm_{major}{minor} or later), the GPU is "
                f"sm_{capability[0]}{capability[1]}")  # fmt: skip
    return None


def _extension_cuda_version() -> int | None:
    if not EXTENSION_LOADED:
        return None
    version = torch.ops.ackd_fast.cuda_version()
    return None if version < 0 else version


# Asked once, at import: the modules consult these on every forward, and torch.compile cannot trace the op that
# answers (it returns a plain int) nor, before torch 2.14, torch.amp.is_autocast_available.
EXTENSION_CUDA_VERSION = _extension_cuda_version()
AUTOCAST_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda", "xpu", "mps", "hpu") if torch.amp.is_autocast_available(d))


def extension_cuda_version() -> int | None:
    """CUDA runtime version `ackd_fast._C` was compiled with (e.g. 13000), or None for a CPU-only build."""
    return EXTENSION_CUDA_VERSION


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the ops fed from `x` compute in: autocast's dtype where autocast is on for x's device and would
    cast x (autocast leaves fp64 alone), else x's own. Modules pick their backends for this dtype."""
    device_type = x.device.type
    if (
        x.is_floating_point()
        and x.dtype != torch.float64
        and device_type in AUTOCAST_DEVICE_TYPES
        and torch.is_autocast_enabled(device_type)
    ):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def _unavailable(
    backend: str,
    device_type: str,
    dtype: torch.dtype | None = None,
    head_dim: int | None = None,
    sources: int | None = None,
    capability: tuple[int, int] | None = None,
) -> str | None:
    """Why `backend` cannot run on `device_type` (for inputs of `dtype`, heads of `head_dim` channels and `sources`
    source maps, on a CUDA device of compute `capability`, each when given), or None when it can."""
    if backend in ("reference", "sdpa"):
        return None
    if sources is not None and not 1 <= sources <= MAX_SOURCES:
        return f"it takes 1 to {MAX_SOURCES} sources, got {sources}"
    if backend == "triton":
        if not TRITON_IMPORTABLE:
            return "triton is not installed"
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "set TRITON_INTERPRET=1 before importing ackd_fast to run Triton kernels on CPU"
        if device_type not in ("cpu", "cuda"):
            return "the Triton kernels run on cuda (and on cpu under the Triton interpreter)"
        if dtype is not None and dtype not in TRITON_DTYPES:
            return f"the Triton kernels compute in {_names(TRITON_DTYPES)}, got {_names([dtype])}"
        if head_dim is not None and head_dim > MAX_HEAD_DIM:
            return f"the Triton kernels take a head dim of at most {MAX_HEAD_DIM}, got {head_dim}"
        if device_type == "cuda" and capability is not None:
            return triton_capability_reason(capability)
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
            return f"its {device_type} kernels take {_names(supported)}, got {_names([dtype])}"
        return None
    return f"unknown backend {backend!r}"


def check_backend(op: str, backend: str) -> str:
    """Validates a constructor's `backend` argument for `op`."""
    choices = ("auto", *BACKENDS[op])
    if backend not in choices:
        raise ValueError(f"backend for {op} must be one of {choices}, got {backend!r}")
    return backend


def measured_attention_backend(
    device: torch.device, dtype: torch.dtype | None, head_dim: int | None, shape: tuple[int, int, int] | None,
    training: bool,
) -> str | None:
    """"triton" or "sdpa" where the committed GPU measurements (kernels/tuned/sm<arch>.json "backends") cover this
    call's class (dtype, forward or training, head-dim class, size class of (query tokens, key tokens, batch x
    heads)), else None."""
    if device.type != "cuda" or dtype is None or head_dim is None or shape is None:
        return None
    capability = cuda_capability(device)
    if capability is None:
        return None
    arch = 90 if tuple(capability) >= (9, 0) else 80
    return _measured_winner(arch, str(dtype).removeprefix("torch."), training, head_dim, *shape)


@torch.compiler.assume_constant_result  # a lookup in committed files: torch.compile takes its answer as a constant
def _measured_winner(arch: int, dtype: str, training: bool, head_dim: int, q_tokens: int, kv_tokens: int,
                     batch_heads: int) -> str | None:  # fmt: skip
    from ackd_fast.kernels import tuning  # no Triton import: the committed files only

    return tuning.backend_winner(arch, dtype, training, head_dim, tuning.tune_bucket(q_tokens, kv_tokens, batch_heads))


def resolve_backend(
    op: str,
    backend: str,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    *,
    head_dim: int | None = None,
    sources: int | None = None,
    shape: tuple[int, int, int] | None = None,
    training: bool = False,
) -> str:
    """The backend that runs `op` on `device` for inputs that compute in `dtype`, with heads of `head_dim` channels
    and `sources` source maps (each when given): the named one (or a RuntimeError saying why it cannot run), or for
    "auto" the fastest that can. For ACK-A on a GPU, "auto" follows the committed measurements where they cover the
    call (`measured_attention_backend`, given `shape` = (query tokens, key tokens, batch x heads) and whether it
    trains), so the module is not slower than SDPA where that was measured; elsewhere Triton before SDPA."""
    device = torch.device(device)
    device_type = device.type
    capability = cuda_capability(device) if device_type == "cuda" else None
    if backend != "auto":
        reason = _unavailable(backend, device_type, dtype, head_dim, sources, capability)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} for {op} cannot run on {device_type}: {reason}")
        return backend
    measured = measured_attention_backend(device, dtype, head_dim, shape, training) if op == "ack_attention" else None
    for candidate in BACKENDS[op]:
        if (candidate, device_type) in AUTO_SKIPS:
            continue
        if candidate == "triton" and measured == "sdpa":  # measured slower than SDPA for this class
            continue
        if _unavailable(candidate, device_type, dtype, head_dim, sources, capability) is None:
            return candidate
    raise RuntimeError(f"no backend for {op} can run on {device_type}")  # unreachable: reference always runs


def backends() -> dict:
    """What is built and present, what each backend takes, and which backend each op runs per device under
    backend="auto" for float32 inputs (`resolve_backend` answers for other dtypes, head dims, source counts and, for
    ACK-A on a GPU, shape classes with committed measurements: triton.tuned says which exist)."""
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
            "dtypes": {dev: _names(dtypes) for dev, dtypes in EXTENSION_DTYPES.items()},
            "max_sources": MAX_SOURCES,
        },
        "triton": {
            "importable": triton_version is not None,
            "version": triton_version,
            "interpret": os.environ.get("TRITON_INTERPRET") == "1",
            "dtypes": _names(TRITON_DTYPES),
            "max_head_dim": MAX_HEAD_DIM,
            "max_sources": MAX_SOURCES,
            # the committed tuning per arch (kernels/tuned/sm<arch>.json): measured tile winners, which the
            # autotuner runs alone, and measured backend rules, which ack_attention's "auto" follows per shape class
            "tuned": _tuned_summary(),
        },
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "ops": {
            op: {dev: resolve_backend(op, "auto", dev, torch.float32) for dev in ("cpu", "cuda")} for op in BACKENDS
        },
    }


def _tuned_summary() -> dict:
    from ackd_fast.kernels import tuning

    try:
        return {f"sm{arch}": tuning.load(arch).summary() for arch in (80, 90)}
    except (OSError, ValueError) as exc:  # a malformed file: say so here, the kernels raise when they read it
        return {"error": f"{type(exc).__name__}: {exc}"}
