"""ackd_fast: fused kernels and drop-in modules for Accumulation Knowledge Distillation (ACKD)."""

import logging


class _NoCudaRuntimeNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." notice: inductor imports
    torch.utils.cpp_extension when it compiles (deploy, --compile), which logs it on every machine without a CUDA
    device, although nothing here builds CUDA code then."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaRuntimeNotice())

from ackd_fast.deploy import deploy  # noqa: E402
from ackd_fast.modules import ACKAttention, ACKFusion, ACKRefiner  # noqa: E402
from ackd_fast.ops import backends  # noqa: E402
from ackd_fast.peers import load_generator  # noqa: E402

__version__ = "0.1.0"
# ackd_fast.api's, imported on first use (it loads the training code); its train_teacher and distill are called as
# ackd_fast.api.distill (ackd_fast.distill is the module of the Distiller)
_API = ("Taps", "list_taps")
__all__ = ["ACKAttention", "ACKFusion", "ACKRefiner", "backends", "deploy", "load_generator", *_API]


def __getattr__(name: str):
    if name in _API:
        from ackd_fast import api

        return getattr(api, name)
    raise AttributeError(f"module 'ackd_fast' has no attribute {name!r}")
