"""ackd_fast: fused kernels and drop-in modules for Accumulation Knowledge Distillation (ACKD)."""

from ackd_fast.deploy import deploy
from ackd_fast.modules import ACKAttention, ACKFusion, ACKRefiner
from ackd_fast.ops import backends
from ackd_fast.peers import load_generator

__version__ = "0.1.0"
__all__ = ["ACKAttention", "ACKFusion", "ACKRefiner", "backends", "deploy", "load_generator"]
