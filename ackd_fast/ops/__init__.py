"""The custom ops and their dispatch, one module per family:

- `dispatch`: what is built, which backend runs each op (`backends()`, `resolve_backend`, `compute_dtype`);
- `attention`: ACK-A's `ack_attention` (Triton) and `sdpa_attention` (PyTorch's fused attention, elsewhere);
- `fusion`: ACK-F's `ack_accumulate` and `instance_norm_act_residual` (C++/CUDA, ackd_fast._C);
- `inference`: `ackd_fast.deploy`'s forward-only CPU ops `mobile_block` and `narrow_conv2d` (ackd_fast._C).

Every op is also reachable as `torch.ops.ackd_fast.<name>`. Under torch.autocast each op follows a rule registered
at the dispatcher (Autocast keys), so a module's ops see what the plain PyTorch composition sees; each family's
module documents its rule. Backward ops are ops of their own, with fake kernels, so opcheck and torch.compile see
ordinary ops.
"""

from ackd_fast.ops.attention import ack_attention, sdpa_attention
from ackd_fast.ops.dispatch import (
    BACKENDS,
    EXTENSION_ERROR,
    EXTENSION_LOADED,
    TRITON_IMPORTABLE,
    backends,
    check_backend,
    compute_dtype,
    extension_cuda_version,
    resolve_backend,
)
from ackd_fast.ops.fusion import _output_format, ack_accumulate, instance_norm_act_residual  # noqa: F401
from ackd_fast.ops.inference import kernels_available

__all__ = [
    "BACKENDS",
    "EXTENSION_ERROR",
    "EXTENSION_LOADED",
    "TRITON_IMPORTABLE",
    "ack_accumulate",
    "ack_attention",
    "backends",
    "check_backend",
    "compute_dtype",
    "extension_cuda_version",
    "instance_norm_act_residual",
    "kernels_available",
    "resolve_backend",
    "sdpa_attention",
]
