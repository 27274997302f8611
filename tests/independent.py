"""Independent fp64 computations of the spec, written along a different code path from ackd_fast.reference
(explicit loops over pixels and windows, einsum, hand-made softmax and statistics), so a shared mistake is
unlikely. Slow: use on small maps only."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def proj(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 convolution as an einsum over channels."""
    y = torch.einsum("oc,bchw->bohw", weight[:, :, 0, 0], x)
    return y if bias is None else y + bias[None, :, None, None]


def attention(q: Tensor, keys, values, heads: int, scale: float | None = None) -> Tensor:
    """Per sample and head: scores against every source's pixels, one softmax over all of them."""
    b, c, _hq, _wq = q.shape
    d = c // heads
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.zeros_like(q)
    for n in range(b):
        for h in range(heads):
            ch = slice(h * d, (h + 1) * d)
            scores = [torch.einsum("cxy,cuv->xyuv", q[n, ch], k[n, ch]).flatten(2) * scale for k in keys]
            s = torch.cat(scores, dim=-1)
            e = torch.exp(s - s.amax(dim=-1, keepdim=True))
            p = e / e.sum(dim=-1, keepdim=True)
            start = 0
            for k, v in zip(keys, values, strict=True):
                count = k.shape[2] * k.shape[3]
                out[n, ch] += torch.einsum("xyt,ct->cxy", p[..., start : start + count], v[n, ch].flatten(1))
                start += count
    return out


def avg_pool_ceil(x: Tensor, s: int) -> Tensor:
    """Average over s x s windows from the top-left; border windows average the pixels they cover."""
    b, c, h, w = x.shape
    oh, ow = -(-h // s), -(-w // s)
    out = x.new_empty(b, c, oh, ow)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * s : (i + 1) * s, j * s : (j + 1) * s].mean(dim=(2, 3))
    return out


def _bilinear_taps(out_size: int, in_size: int):
    """Source indices and weights along one axis for align_corners=False (half-pixel centres, clamped)."""
    taps = []
    for o in range(out_size):
        src = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(math.floor(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        taps.append((i0, i1, 1.0 - frac, frac))
    return taps


def resize(x: Tensor, size, mode: str) -> Tensor:
    b, c, h, w = x.shape
    oh, ow = size
    out = x.new_zeros(b, c, oh, ow)
    if mode == "bilinear":
        rows, cols = _bilinear_taps(oh, h), _bilinear_taps(ow, w)
        for i, (r0, r1, wr0, wr1) in enumerate(rows):
            for j, (c0, c1, wc0, wc1) in enumerate(cols):
                out[:, :, i, j] = wr0 * (wc0 * x[:, :, r0, c0] + wc1 * x[:, :, r0, c1]) + wr1 * (
                    wc0 * x[:, :, r1, c0] + wc1 * x[:, :, r1, c1]
                )
    elif mode == "nearest":
        for i in range(oh):
            for j in range(ow):
                out[:, :, i, j] = x[:, :, min(i * h // oh, h - 1), min(j * w // ow, w - 1)]
    elif mode == "area":  # adaptive average pooling windows
        for i in range(oh):
            r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
            for j in range(ow):
                c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
                out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
    else:
        raise AssertionError(mode)
    return out


def instance_norm(x: Tensor, weight=None, bias=None, residual=None, act="relu", eps=1e-5) -> Tensor:
    mean = x.sum(dim=(2, 3), keepdim=True) / (x.shape[2] * x.shape[3])
    var = ((x - mean) ** 2).sum(dim=(2, 3), keepdim=True) / (x.shape[2] * x.shape[3])
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight[None, :, None, None]
    if bias is not None:
        y = y + bias[None, :, None, None]
    if act == "relu":
        y = torch.where(y > 0, y, torch.zeros_like(y))
    return y if residual is None else y + residual


def conv3x3(x: Tensor, weight: Tensor) -> Tensor:
    """Zero-padded 3x3 convolution as a sum of nine shifted einsums."""
    b, c, h, w = x.shape
    padded = x.new_zeros(b, c, h + 2, w + 2)
    padded[:, :, 1:-1, 1:-1] = x
    out = x.new_zeros(b, weight.shape[0], h, w)
    for di in range(3):
        for dj in range(3):
            out += torch.einsum("oc,bchw->bohw", weight[:, :, di, dj], padded[:, :, di : di + h, dj : dj + w])
    return out


def attention_module(m, deep: Tensor, sources) -> Tensor:
    """ACKAttention's output, from its parameters."""
    pooled = [avg_pool_ceil(a, m.kv_stride) if m.kv_stride > 1 else a for a in sources]
    q = proj(deep, m.to_q.weight, m.to_q.bias)
    keys = [proj(a, c.weight, c.bias) for a, c in zip(pooled, m.to_k, strict=True)]
    values = [proj(a, c.weight, c.bias) for a, c in zip(pooled, m.to_v, strict=True)]
    y = proj(attention(q, keys, values, m.heads), m.to_out.weight, m.to_out.bias)
    return deep + y if m.residual else y


def fusion_module(m, deep: Tensor, sources) -> Tensor:
    """ACKFusion's output, from its parameters, in docs/DESIGN.md's order: resize first, then align."""
    size = tuple(deep.shape[-2:])
    acc = torch.zeros_like(deep)
    for j, (a, align) in enumerate(zip(sources, m.align, strict=True)):
        r = resize(a, size, m.resize) if tuple(a.shape[-2:]) != size else a
        if isinstance(align, torch.nn.Conv2d):
            r = proj(r, align.weight, align.bias)
        acc = acc + m.weights[j] * r
    h = instance_norm(conv3x3(acc, m.conv1.weight), m.norm1_weight, m.norm1_bias, act="relu", eps=m.eps)
    h = conv3x3(h, m.conv2.weight)
    return instance_norm(h, m.norm2_weight, m.norm2_bias, deep if m.residual else None, act="none", eps=m.eps)
