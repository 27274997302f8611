"""The reference spec: ACK-A and ACK-F in plain PyTorch, exactly as docs/DESIGN.md section 1 writes them.

Every fast path is tested against these functions, run in fp64. They take parameters as plain tensors so a test
can build them from any source (a module, random draws) and `gradcheck` them. The block functions
(`ack_attention_block`, `ack_fusion_block`) are also what the nn.Modules run: their primitive ops
(`attention`, `accumulate`, `norm_act`) can be swapped for a fast backend, and the composition stays in one place.

Shapes: a feature map is (B, C, H, W) in any memory layout; `sources` holds 1 to 4 maps that share the batch,
dtype and device of `deep` but may differ in channels and resolution. Input validation lives at the module and
op boundaries (`ackd_fast.checks`), not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

RESIZE_MODES = ("bilinear", "nearest", "area")
ACTIVATIONS = ("relu", "none")

# A 1x1 convolution's parameters: weight (C_out, C_in, 1, 1) and an optional bias (C_out,).
Projection = tuple[Tensor, Tensor | None]


def conv1x1(x: Tensor, proj: Projection) -> Tensor:
    weight, bias = proj
    return F.conv2d(x, weight, bias)


def pool_tokens(x: Tensor, stride: int) -> Tensor:
    """`pool_s` of docs/DESIGN.md: average pool of kernel and stride `stride`. ceil_mode keeps the border rows and
    columns of odd-sized maps (their partial windows average what they cover), so no source pixel is dropped."""
    if stride == 1:
        return x
    return F.avg_pool2d(x, kernel_size=stride, stride=stride, ceil_mode=True)


# --------------------------------------------------------------------------------------------------- ACK-A


def attention_probs(q: Tensor, keys: Sequence[Tensor], heads: int, scale: float | None = None) -> Tensor:
    """softmax(Q [K_0 .. K_{k-1}]^T * scale) per head: (B, heads, Nq, sum_j N_j), the keys of the sources in order.
    q: (B, heads*d, Hq, Wq); keys[j]: (B, heads*d, H_j, W_j); scale defaults to 1/sqrt(d)."""
    b, c = q.shape[:2]
    d = c // heads
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q_tok = q.reshape(b, heads, d, -1).transpose(-1, -2)  # (B, h, Nq, d)
    k_all = torch.cat([k.reshape(b, heads, d, -1) for k in keys], dim=-1)  # (B, h, d, Nkv)
    return torch.softmax((q_tok @ k_all) * scale, dim=-1)


def ack_attention(
    q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], heads: int, scale: float | None = None
) -> Tensor:
    """Multi-head cross-attention with one softmax across the keys of all sources.

    q: (B, heads*d, Hq, Wq); keys[j], values[j]: (B, heads*d, H_j, W_j). Returns (B, heads*d, Hq, Wq).
    Tokens are the pixels of each map; channel c belongs to head c // d. Computed in the input dtype.
    """
    b, c, hq, wq = q.shape
    d = c // heads
    p = attention_probs(q, keys, heads, scale)
    v_all = torch.cat([v.reshape(b, heads, d, -1) for v in values], dim=-1).transpose(-1, -2)  # (B, h, Nkv, d)
    out = p @ v_all  # (B, h, Nq, d)
    return out.transpose(-1, -2).reshape(b, c, hq, wq)


def ack_attention_block(
    deep: Tensor,
    sources: Sequence[Tensor],
    *,
    q_proj: Projection,
    k_projs: Sequence[Projection],
    v_projs: Sequence[Projection],
    out_proj: Projection,
    heads: int,
    kv_stride: int = 1,
    residual: bool = True,
    attention: Callable[..., Tensor] = ack_attention,
) -> Tensor:
    """ACK-A: Y = X + Wo softmax(Q [K_0..K_k]^T / sqrt(d)) [V_0..V_k] with Q = Wq X, K_j = Wk_j pool_s(A_j),
    V_j = Wv_j pool_s(A_j). `attention` computes the core on the projected maps (default: `ack_attention`)."""
    pooled = [pool_tokens(a, kv_stride) for a in sources]
    q = conv1x1(deep, q_proj)
    keys = [conv1x1(a, p) for a, p in zip(pooled, k_projs, strict=True)]
    values = [conv1x1(a, p) for a, p in zip(pooled, v_projs, strict=True)]
    y = conv1x1(attention(q, keys, values, heads), out_proj)
    return deep + y if residual else y


# --------------------------------------------------------------------------------------------------- ACK-F


def resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize to `size`. bilinear uses align_corners=False; area is adaptive average pooling (plain average
    pooling when shrinking by an integer factor)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if mode in ("nearest", "area"):
        return F.interpolate(x, size=size, mode=mode)
    raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")


def ack_accumulate(sources: Sequence[Tensor], weights: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """acc = sum_j weights[j] * resize(sources[j] -> size). Sources share their channel count."""
    return weighted_sum([resize(a, size, mode) for a in sources], weights)


def instance_norm_act_residual(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    act: str = "relu",
    eps: float = 1e-5,
) -> Tensor:
    """act(instance_norm(x) * weight + bias) + residual: per sample and channel, biased variance."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    y = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    if act == "relu":
        y = torch.relu(y)
    return y if residual is None else y + residual


def ack_fusion_block(
    deep: Tensor,
    sources: Sequence[Tensor],
    *,
    align_projs: Sequence[Projection | None],
    weights: Tensor,
    conv1_weight: Tensor,
    norm1: tuple[Tensor | None, Tensor | None],
    conv2_weight: Tensor,
    norm2: tuple[Tensor | None, Tensor | None],
    residual: bool = True,
    mode: str = "bilinear",
    eps: float = 1e-5,
    accumulate: Callable[..., Tensor] = ack_accumulate,
    norm_act: Callable[..., Tensor] = instance_norm_act_residual,
) -> Tensor:
    """ACK-F: Y = X + ConvBlock(sum_j w_j * align_j(resize(A_j -> H x W))),
    ConvBlock = conv3x3 -> InstanceNorm -> ReLU -> conv3x3 -> InstanceNorm.

    align_j is a 1x1 conv (None where C_j == C). The 1x1 conv and the resize are both linear and every resize
    here has weights summing to 1, so align(resize(A)) == resize(align(A)); aligning first lets `accumulate`
    see sources of equal channel count and runs the conv at the source's resolution. The residual is added
    inside the last `norm_act`, where a fused kernel can do it in the same pass.
    """
    aligned = [a if p is None else conv1x1(a, p) for a, p in zip(sources, align_projs, strict=True)]
    acc = accumulate(aligned, weights, tuple(deep.shape[-2:]), mode)
    h = F.conv2d(acc, conv1_weight, padding=conv1_weight.shape[-1] // 2)
    h = norm_act(h, *norm1, None, "relu", eps)
    h = F.conv2d(h, conv2_weight, padding=conv2_weight.shape[-1] // 2)
    return norm_act(h, *norm2, deep if residual else None, "none", eps)


# --------------------------------------------------------------------------------------------- the others


def weighted_sum(inputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """sum_j weights[j] * inputs[j] over tensors of one shape (the last step of `ack_accumulate`)."""
    return sum(w * x for w, x in zip(weights.unbind(0), inputs, strict=True))
