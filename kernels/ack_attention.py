"""ACK-A in Triton: multi-source cross-attention, forward and backward (FlashAttention-2 scheme).

One query map attends to the tokens of 1 to 4 key/value maps under one softmax. Every map is read where it
lies: a token t of a map of width W sits at row t // W, column t % W, and its address uses that map's own
(batch, channel, row, column) strides, so channels_last and sliced views need no copy. When a map's rows
follow each other in memory (contiguous NCHW, channels_last, row-sliced views) the kernels take the
cheaper `t * token_stride` path (the *_FLAT flags), which also lets Triton vectorise the loads.

The sources reach a kernel as MAX_SOURCES slots (pointers, strides, token counts, widths); the launchers fill
the slots past the real sources with copies of source 0 holding 0 tokens. The kernels see the key blocks of all
sources as one sequence, source 0's blocks first (a block never spans two sources), and find a block's source
and pick its slot at run time (`_source_of_block`, `_pick`). So one compiled kernel serves 1 to 4 sources (no
recompilation per source count; the ahead-of-time check, kernels/aot.py, covers every count with one
compilation), and the forward and dQ loops run once over all blocks, one software pipeline for all sources.

Passes, one @triton.jit function each:
  _forward_kernel  grid (query blocks, B*heads): online softmax over the key blocks of all sources, fp32
                   accumulators, writes O (NCHW contiguous) and the log-sum-exp (B*heads, Nq) in base 2.
  _delta_kernel    Delta = rowsum(O * dO), the backward's pre-pass.
  _dkdv_kernel     grid (key blocks of all sources, B*heads), one launch for all sources: dK, dV of a block's
                   keys, looping over all query blocks (no atomics).
  _dq_kernel       grid (query blocks, B*heads): dQ, looping over the key blocks of all sources.
Softmax runs in the log2 domain throughout: scores are scaled by scale*log2(e), exponentials are exp2, and the
forward stores the log-sum-exp in base 2, which the backward subtracts as it is (a natural log converted there
and back would round twice, an error that grows with the logits). Head dims that are not powers of two are
padded to BLOCK_D with masked loads and stores.

`forward_launches` and `backward_launches` turn checked inputs (ackd_fast.checks does the checking at the op
boundary) into launches: strides read once, outputs allocated, grids computed. `forward` and `backward` run
them; the ahead-of-time check compiles what they would launch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ackd_fast.checks import MAX_SOURCES
from ackd_fast.kernels import configs

INTERPRET = configs.INTERPRET
LOG2E = 1.4426950408889634


# ---------------------------------------------------------------------------------------------- helpers


@triton.jit
def _pick(j, slots):
    """slots[j] for a run-time source index j: `slots` is a tuple of one scalar or pointer per source slot."""
    picked = slots[0]
    for i in tl.static_range(1, len(slots)):
        picked = tl.where(j == i, slots[i], picked)
    return picked


@triton.jit
def _pick_strides(j, strides):
    """Source j's (batch, channel, row, column) strides from `strides`, which holds one tuple per dimension
    with one stride per source slot."""
    return _pick(j, strides[0]), _pick(j, strides[1]), _pick(j, strides[2]), _pick(j, strides[3])


@triton.jit
def _tokens(t, width, stride_h, stride_w, FLAT: tl.constexpr):
    """Memory offsets of tokens `t` of a map of `width` columns (FLAT: rows follow each other, stride_w is the
    token stride)."""
    if FLAT:  # noqa: SIM108 (a constexpr branch: only one side is compiled)
        offset = t * stride_w
    else:
        offset = (t // width) * stride_h + (t % width) * stride_w
    return offset


@triton.jit
def _channels(X, strides, b, h, head_dim, offs_d):
    """Addresses of head h's channels (offs_d) of sample b in a map with (batch, channel, row, column) strides."""
    return X + b * strides[0] + (h * head_dim + offs_d) * strides[1]


@triton.jit
def _load_tile(chan, t, width, strides, mask_t, mask_d, FLAT: tl.constexpr, TRANS: tl.constexpr):
    """Tokens t of the channels at `chan`: a (tokens, d) tile, or (d, tokens) when TRANS; masked lanes read 0."""
    tok = _tokens(t, width, strides[2], strides[3], FLAT)
    if TRANS:
        tile = tl.load(chan[:, None] + tok[None, :], mask=mask_d[:, None] & mask_t[None, :], other=0.0)
    else:
        tile = tl.load(chan[None, :] + tok[:, None], mask=mask_t[:, None] & mask_d[None, :], other=0.0)
    return tile


@triton.jit
def _dense_channels(X, b, h, heads, head_dim, n_tokens, offs_d):
    """Addresses of head h's channels of sample b in an NCHW-contiguous (B, heads*d, tokens) output."""
    return X + b * (heads * head_dim * n_tokens) + (h * head_dim + offs_d) * n_tokens


@triton.jit
def _source_of_block(block, kv_tokens, BLOCK_N: tl.constexpr):
    """(j, first): the source of key block `block`, and the index of its first block, where the sources' blocks
    of BLOCK_N keys follow each other, source 0's first (the unused slots hold 0 tokens, hence no blocks)."""
    j = 0
    first = 0
    blocks_before = 0
    for i in tl.static_range(len(kv_tokens) - 1):
        blocks_before += tl.cdiv(kv_tokens[i], BLOCK_N)
        j = tl.where(block >= blocks_before, i + 1, j)
        first = tl.where(block >= blocks_before, blocks_before, first)
    return j, first


@triton.jit
def _block_count(kv_tokens, BLOCK_N: tl.constexpr):
    """The number of key blocks of all sources."""
    n = 0
    for i in tl.static_range(len(kv_tokens)):
        n += tl.cdiv(kv_tokens[i], BLOCK_N)
    return n


@triton.jit
def _load_key_block(
    block, K, V, k_strides, v_strides, kv_tokens, kv_widths, b, h, head_dim, offs_d, mask_d,
    KV_FLAT: tl.constexpr, K_TRANS: tl.constexpr, V_TRANS: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Key block `block` of all sources' blocks: its K and V tiles ((d, keys) when *_TRANS, else (keys, d)) and the
    mask of its real keys."""
    j, first = _source_of_block(block, kv_tokens, BLOCK_N)
    k_strides_j = _pick_strides(j, k_strides)
    v_strides_j = _pick_strides(j, v_strides)
    width = _pick(j, kv_widths)
    offs_n = (block - first) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < _pick(j, kv_tokens)
    k_chan = _channels(_pick(j, K), k_strides_j, b, h, head_dim, offs_d)
    v_chan = _channels(_pick(j, V), v_strides_j, b, h, head_dim, offs_d)
    k = _load_tile(k_chan, offs_n, width, k_strides_j, mask_n, mask_d, KV_FLAT, K_TRANS)
    v = _load_tile(v_chan, offs_n, width, v_strides_j, mask_n, mask_d, KV_FLAT, V_TRANS)
    return k, v, mask_n


# ---------------------------------------------------------------------------------------------- kernels
# Source slots: K, V (and DK, DV) hold MAX_SOURCES maps, kv_tokens and kv_widths one int per slot, k_strides and
# v_strides one tuple per dimension (batch, channel, row, column) of one stride per slot; unused slots hold 0
# tokens. `heads` is not specialised on (heads=1 would otherwise compile another kernel).


@triton.autotune(
    configs=configs.autotune_configs("forward"),
    key=["tune_bucket", "BLOCK_D", "PRECISION", "Q_FLAT", "KV_FLAT"],
    prune_configs_by={"early_config_prune": configs.prune("forward", "Q")},
)
@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _forward_kernel(
    Out, LSE, Q, K, V,
    q_strides, k_strides, v_strides,  # q: (batch, channel, row, column)
    q_tokens, q_width, kv_tokens, kv_widths,
    heads, head_dim, qk_scale, tune_bucket,
    Q_FLAT: tl.constexpr, KV_FLAT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)  # batch offsets can pass 2**31 elements
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_tokens
    mask_d = offs_d < head_dim
    q_chan = _channels(Q, q_strides, b, h, head_dim, offs_d)
    q = _load_tile(q_chan, offs_m, q_width, q_strides, mask_m, mask_d, Q_FLAT, False)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # One loop over the key blocks of all sources.
    for block in range(_block_count(kv_tokens, BLOCK_N)):
        kt, v, mask_n = _load_key_block(
            block, K, V, k_strides, v_strides, kv_tokens, kv_widths, b, h, head_dim, offs_d, mask_d,
            KV_FLAT, True, False, BLOCK_N,
        )  # fmt: skip
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # log2 domain: qk_scale = scale * log2(e)
        s = tl.where(mask_n[None, :], s, float("-inf"))
        # Every block holds at least one real key, so m_new is finite and alpha is exp2(-inf) = 0 on the first.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(LSE + bh.to(tl.int64) * q_tokens + offs_m, m_i + tl.log2(l_i), mask=mask_m)
    out_chan = _dense_channels(Out, b, h, heads, head_dim, q_tokens, offs_d)
    tl.store(out_chan[None, :] + offs_m[:, None], acc.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


@triton.autotune(
    configs=configs.autotune_configs("preprocess"),
    key=["tune_bucket", "BLOCK_D", "DO_FLAT"],
    prune_configs_by={"early_config_prune": configs.prune("preprocess", "DO")},
)
@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _delta_kernel(
    Delta, Out, DO, do_strides, q_tokens, q_width, heads, head_dim, tune_bucket,
    DO_FLAT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_tokens
    mask = mask_m[:, None] & (offs_d < head_dim)[None, :]
    o_chan = _dense_channels(Out, b, h, heads, head_dim, q_tokens, offs_d)
    o = tl.load(o_chan[None, :] + offs_m[:, None], mask=mask, other=0.0)
    do_chan = _channels(DO, do_strides, b, h, head_dim, offs_d)
    do = _load_tile(do_chan, offs_m, q_width, do_strides, mask_m, offs_d < head_dim, DO_FLAT, False)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * q_tokens + offs_m, delta, mask=mask_m)


@triton.autotune(
    configs=configs.autotune_configs("dkdv"),
    key=["tune_bucket", "BLOCK_D", "PRECISION", "Q_FLAT", "DO_FLAT", "KV_FLAT"],
    prune_configs_by={"early_config_prune": configs.prune("dkdv", "Q")},
)
@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _dkdv_kernel(
    DK, DV, Q, K, V, DO, LSE, Delta,  # DK, DV: the sources' gradients, NCHW contiguous
    q_strides, k_strides, v_strides, do_strides,
    q_tokens, q_width, kv_tokens, kv_widths, heads, head_dim, sm_scale, qk_scale, tune_bucket,
    Q_FLAT: tl.constexpr, KV_FLAT: tl.constexpr, DO_FLAT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)  # a key block of all sources' blocks (see _source_of_block)
    bh = tl.program_id(1)
    j, first_block = _source_of_block(pid, kv_tokens, BLOCK_N)
    n_tokens = _pick(j, kv_tokens)
    width = _pick(j, kv_widths)
    k_strides_j = _pick_strides(j, k_strides)
    v_strides_j = _pick_strides(j, v_strides)

    b = (bh // heads).to(tl.int64)
    h = bh % heads
    offs_n = (pid - first_block) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < n_tokens
    mask_d = offs_d < head_dim
    mask_nd = mask_n[:, None] & mask_d[None, :]
    k_chan = _channels(_pick(j, K), k_strides_j, b, h, head_dim, offs_d)
    v_chan = _channels(_pick(j, V), v_strides_j, b, h, head_dim, offs_d)
    k = _load_tile(k_chan, offs_n, width, k_strides_j, mask_n, mask_d, KV_FLAT, False)
    v = _load_tile(v_chan, offs_n, width, v_strides_j, mask_n, mask_d, KV_FLAT, False)

    q_chan = _channels(Q, q_strides, b, h, head_dim, offs_d)
    do_chan = _channels(DO, do_strides, b, h, head_dim, offs_d)
    row = bh.to(tl.int64) * q_tokens
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, q_tokens, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < q_tokens
        qt = _load_tile(q_chan, offs_m, q_width, q_strides, mask_m, mask_d, Q_FLAT, True)
        # Padding queries get lse2 = +inf, hence probability 0, and contribute nothing.
        lse2 = tl.load(LSE + row + offs_m, mask=mask_m, other=float("inf"))
        pt = tl.exp2(tl.dot(k, qt, input_precision=PRECISION) * qk_scale - lse2[None, :])
        do = _load_tile(do_chan, offs_m, q_width, do_strides, mask_m, mask_d, DO_FLAT, False)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        delta = tl.load(Delta + row + offs_m, mask=mask_m, other=0.0)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)

    grad_offsets = _dense_channels(0, b, h, heads, head_dim, n_tokens, offs_d)[None, :] + offs_n[:, None]
    DK_j = _pick(j, DK)
    DV_j = _pick(j, DV)
    tl.store(DK_j + grad_offsets, (dk * sm_scale).to(DK_j.dtype.element_ty), mask=mask_nd)
    tl.store(DV_j + grad_offsets, dv.to(DV_j.dtype.element_ty), mask=mask_nd)


@triton.autotune(
    configs=configs.autotune_configs("dq"),
    key=["tune_bucket", "BLOCK_D", "PRECISION", "Q_FLAT", "DO_FLAT", "KV_FLAT"],
    prune_configs_by={"early_config_prune": configs.prune("dq", "Q")},
)
@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _dq_kernel(
    DQ, Q, K, V, DO, LSE, Delta,  # DQ: NCHW contiguous
    q_strides, k_strides, v_strides, do_strides,
    q_tokens, q_width, kv_tokens, kv_widths, heads, head_dim, sm_scale, qk_scale, tune_bucket,
    Q_FLAT: tl.constexpr, KV_FLAT: tl.constexpr, DO_FLAT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_tokens
    mask_d = offs_d < head_dim
    mask_md = mask_m[:, None] & mask_d[None, :]
    q_chan = _channels(Q, q_strides, b, h, head_dim, offs_d)
    q = _load_tile(q_chan, offs_m, q_width, q_strides, mask_m, mask_d, Q_FLAT, False)
    do_chan = _channels(DO, do_strides, b, h, head_dim, offs_d)
    do = _load_tile(do_chan, offs_m, q_width, do_strides, mask_m, mask_d, DO_FLAT, False)
    row = bh.to(tl.int64) * q_tokens
    lse2 = tl.load(LSE + row + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(Delta + row + offs_m, mask=mask_m, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for block in range(_block_count(kv_tokens, BLOCK_N)):
        kt, vt, mask_n = _load_key_block(
            block, K, V, k_strides, v_strides, kv_tokens, kv_widths, b, h, head_dim, offs_d, mask_d,
            KV_FLAT, True, True, BLOCK_N,
        )  # fmt: skip
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        # Padding keys load as 0 and would get weight exp2(-lse2) > 0: zero them.
        p = tl.where(mask_n[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)

    dq_chan = _dense_channels(DQ, b, h, heads, head_dim, q_tokens, offs_d)
    tl.store(dq_chan[None, :] + offs_m[:, None], (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask_md)


# The kernels by the names configs.KERNELS gives them.
KERNELS = {"forward": _forward_kernel, "preprocess": _delta_kernel, "dkdv": _dkdv_kernel, "dq": _dq_kernel}


# --------------------------------------------------------------------------------------------- launchers


class Launch(NamedTuple):
    """One kernel launch: the kernel's name in KERNELS, its grid as a function of the config's meta-parameters,
    and its arguments."""

    kernel: str
    grid: Callable[[dict], tuple[int, int]]
    args: dict[str, Any]


def _map_strides(x: Tensor) -> tuple[tuple[int, int, int, int], bool]:
    """(batch, channel, row, column) strides of a (B, C, H, W) map, and whether its rows follow each other in
    memory; then the column stride returned is the token stride."""
    sb, sc, sh, sw = x.stride()
    height, width = x.shape[2], x.shape[3]
    if width == 1:
        return (sb, sc, sh, sh), True
    return (sb, sc, sh, sw), height == 1 or sh == width * sw


def fp32_matmul_precision() -> str:
    """"tf32" or "ieee": what torch's fp32 CUDA matmuls use, read from the fp32_precision API (cuda.matmul's
    setting, "none" inheriting torch.backends.fp32_precision, whose "none" is full fp32). The legacy setters
    (set_float32_matmul_precision, allow_tf32) update it too; the legacy getter raises once anything has used the
    new setters, so it is never called."""
    precision = torch.backends.cuda.matmul.fp32_precision
    if precision == "none":
        precision = torch.backends.fp32_precision
    return "tf32" if precision == "tf32" else "ieee"


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: fp32 follows torch's fp32 matmul precision (`fp32_matmul_precision`); the
    interpreter computes in full fp32 anyway."""
    if dtype == torch.float32 and not INTERPRET and fp32_matmul_precision() == "tf32":
        return "tf32"
    return "ieee"


# Launch limits the kernels rely on: batch x heads runs on grid dimension 1 (at most 65,535 blocks), and within one
# sample the kernels index in int32 (only the batch term is int64).
MAX_GRID_Y = 65_535
MAX_SAMPLE_SPAN = 2**31 - 1


def _check_limits(q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], heads: int) -> None:
    """ValueError naming the argument when a launch would pass the grid's limit or index past int32 in a sample."""
    batch = q.shape[0]
    if batch * heads > MAX_GRID_Y:
        raise ValueError(
            f"q: batch x heads = {batch} x {heads} = {batch * heads} exceeds the kernels' grid limit of {MAX_GRID_Y}; "
            "split the batch"
        )
    maps = [("q", q), *((f"keys[{j}]", k) for j, k in enumerate(keys))]
    maps += [(f"values[{j}]", v) for j, v in enumerate(values)]
    for name, x in maps:
        span = sum((size - 1) * abs(stride) for size, stride in zip(x.shape[1:], x.stride()[1:], strict=True))
        dense = x.shape[1] * x.shape[2] * x.shape[3]  # the outputs and gradients are NCHW contiguous
        if max(span, dense) > MAX_SAMPLE_SPAN:
            raise ValueError(
                f"{name}: one sample of shape {tuple(x.shape[1:])} with strides {x.stride()[1:]} spans "
                f"{max(span, dense)} elements, more than the kernels' int32 indexing takes ({MAX_SAMPLE_SPAN}); "
                "pass a contiguous map of fewer channels or tokens per sample"
            )


def _tune_bucket(q_tokens: int, kv_tokens: int, batch_heads: int) -> int:
    """The autotune key's size class: the next powers of two of the query tokens, all key tokens and batch x heads
    in one int, so a new image size retunes only when it changes class."""

    def log2_ceil(n: int) -> int:
        return max(0, n - 1).bit_length()

    return (log2_ceil(q_tokens) * 64 + log2_ceil(kv_tokens)) * 64 + log2_ceil(batch_heads)


def _check_device(q: Tensor) -> None:
    if q.device.type == "cpu" and not INTERPRET:
        raise RuntimeError(
            "the Triton ACK-A kernels got CPU tensors but run on CPU only under the Triton interpreter: "
            "set TRITON_INTERPRET=1 before importing ackd_fast to run Triton kernels on CPU"
        )


def _check_buffer(name: str, buf: Tensor | None, shape: Sequence[int], like: Tensor, dtype=None) -> Tensor:
    """A preallocated output (tests pass NaN-filled ones) or a fresh contiguous one."""
    dtype = like.dtype if dtype is None else dtype
    if buf is None:
        return torch.empty(tuple(shape), dtype=dtype, device=like.device)
    if tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or buf.device != like.device or not buf.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous {dtype} tensor of shape {tuple(shape)} on {like.device}, got "
            f"{buf.dtype} shape {tuple(buf.shape)} on {buf.device} (contiguous={buf.is_contiguous()})"
        )
    return buf


def _run(q: Tensor, launches: Sequence[Launch]) -> None:
    # Triton launches on the current CUDA device: make it the inputs' one.
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        for launch in launches:
            KERNELS[launch.kernel][launch.grid](**launch.args)


def _slots(per_source: Sequence, fill=None) -> tuple:
    """One value per source slot: the sources' values, then `fill` (default: source 0's value) in the slots past
    them. Copies of source 0 keep the unused slots' specialisation (alignment, unit strides) the same as the
    real ones', so the number of sources does not change the compiled kernel."""
    pad = per_source[0] if fill is None else fill
    return (*per_source, *[pad] * (MAX_SOURCES - len(per_source)))


def _source_args(keys: Sequence[Tensor], values: Sequence[Tensor]) -> tuple[dict[str, Any], tuple[int, ...]]:
    """The kernels' source-slot arguments (K, V, k_strides, v_strides, kv_tokens, kv_widths, KV_FLAT) and the
    sources' token counts."""
    k_strides, v_strides, flat = [], [], True
    for k, v in zip(keys, values, strict=True):
        ks, k_flat = _map_strides(k)
        vs, v_flat = _map_strides(v)
        k_strides.append(ks)
        v_strides.append(vs)
        flat = flat and k_flat and v_flat
    tokens = tuple(k.shape[2] * k.shape[3] for k in keys)
    args = {
        "K": _slots(keys),
        "V": _slots(values),
        # One tuple per dimension, one stride per slot: what `_pick_strides` reads.
        "k_strides": tuple(zip(*_slots(k_strides), strict=True)),
        "v_strides": tuple(zip(*_slots(v_strides), strict=True)),
        "kv_tokens": _slots(tokens, fill=0),
        "kv_widths": _slots([k.shape[3] for k in keys]),
        "KV_FLAT": flat,
    }
    return args, tokens


def forward_launches(
    q: Tensor,
    keys: Sequence[Tensor],
    values: Sequence[Tensor],
    heads: int,
    scale: float | None = None,
    out: Tensor | None = None,
    lse: Tensor | None = None,
) -> tuple[tuple[Tensor, Tensor], list[Launch]]:
    """The outputs (out, lse), allocated unless given, and the launch that computes them (see `forward`)."""
    batch, channels, q_height, q_width = q.shape
    head_dim = channels // heads
    q_tokens = q_height * q_width
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    _check_limits(q, keys, values, heads)
    out = _check_buffer("out", out, q.shape, q)
    lse = _check_buffer("lse", lse, (batch * heads, q_tokens), q, torch.float32)
    q_strides, q_flat = _map_strides(q)
    sources, kv_tokens = _source_args(keys, values)

    def grid(meta):
        return (triton.cdiv(q_tokens, meta["BLOCK_M"]), batch * heads)

    args = {
        "Out": out, "LSE": lse, "Q": q, **sources, "q_strides": q_strides, "q_tokens": q_tokens, "q_width": q_width,
        "heads": heads, "head_dim": head_dim, "qk_scale": scale * LOG2E,
        "tune_bucket": _tune_bucket(q_tokens, sum(kv_tokens), batch * heads),
        "Q_FLAT": q_flat, "PRECISION": _precision(q.dtype), "BLOCK_D": configs.block_d(head_dim),
    }  # fmt: skip
    return (out, lse), [Launch("forward", grid, args)]


def forward(
    q: Tensor,
    keys: Sequence[Tensor],
    values: Sequence[Tensor],
    heads: int,
    scale: float | None = None,
    out: Tensor | None = None,
    lse: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """O = softmax(Q K^T * scale) V over the keys of all sources, and the base-2 log-sum-exp (B*heads, Nq) fp32
    of the scores scaled by scale*log2(e) (what `backward` takes).

    Inputs as `ackd_fast.ops.ack_attention` checks them. O is NCHW contiguous in q's dtype.
    """
    _check_device(q)
    (out, lse), launches = forward_launches(q, keys, values, heads, scale, out, lse)
    _run(q, launches)
    return out, lse


def backward_launches(
    grad_out: Tensor,
    q: Tensor,
    keys: Sequence[Tensor],
    values: Sequence[Tensor],
    out: Tensor,
    lse: Tensor,
    heads: int,
    scale: float | None = None,
    dq: Tensor | None = None,
    dkeys: Sequence[Tensor] | None = None,
    dvalues: Sequence[Tensor] | None = None,
) -> tuple[tuple[Tensor, list[Tensor], list[Tensor]], list[Launch]]:
    """The gradients (dq, dkeys, dvalues), allocated unless given, and the launches that compute them in order:
    Delta, then dK and dV of every source (one launch), then dQ (see `backward`)."""
    batch, channels, q_height, q_width = q.shape
    head_dim = channels // heads
    q_tokens = q_height * q_width
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    _check_limits(q, keys, values, heads)
    _check_buffer("out", out, q.shape, q)
    _check_buffer("lse", lse, (batch * heads, q_tokens), q, torch.float32)
    if grad_out.shape != q.shape or grad_out.dtype != q.dtype or grad_out.device != q.device:
        raise ValueError(
            f"grad_out must match the output: {q.dtype} shape {tuple(q.shape)} on {q.device}, got "
            f"{grad_out.dtype} shape {tuple(grad_out.shape)} on {grad_out.device}"
        )
    dq = _check_buffer("dq", dq, q.shape, q)
    dkeys = [_check_buffer(f"dkeys[{j}]", None if dkeys is None else dkeys[j], k.shape, k) for j, k in enumerate(keys)]
    dvalues = [
        _check_buffer(f"dvalues[{j}]", None if dvalues is None else dvalues[j], v.shape, v)
        for j, v in enumerate(values)
    ]
    q_strides, q_flat = _map_strides(q)
    do_strides, do_flat = _map_strides(grad_out)
    sources, kv_tokens = _source_args(keys, values)
    delta = torch.empty_like(lse)
    bucket = _tune_bucket(q_tokens, sum(kv_tokens), batch * heads)
    common = {
        "Q": q, "DO": grad_out, "LSE": lse, "Delta": delta, **sources,
        "q_strides": q_strides, "do_strides": do_strides, "q_tokens": q_tokens, "q_width": q_width,
        "heads": heads, "head_dim": head_dim, "sm_scale": scale, "qk_scale": scale * LOG2E, "tune_bucket": bucket,
        "Q_FLAT": q_flat, "DO_FLAT": do_flat, "PRECISION": _precision(q.dtype), "BLOCK_D": configs.block_d(head_dim),
    }  # fmt: skip
    delta_args = {
        "Delta": delta, "Out": out, "DO": grad_out, "do_strides": do_strides, "q_tokens": q_tokens,
        "q_width": q_width, "heads": heads, "head_dim": head_dim, "tune_bucket": bucket, "DO_FLAT": do_flat,
        "BLOCK_D": common["BLOCK_D"],
    }  # fmt: skip
    dkdv_args = {**common, "DK": _slots(dkeys), "DV": _slots(dvalues)}
    dq_args = {**common, "DQ": dq}

    def q_grid(meta):
        return (triton.cdiv(q_tokens, meta["BLOCK_M"]), batch * heads)

    def kv_grid(meta):
        return (sum(triton.cdiv(n, meta["BLOCK_N"]) for n in kv_tokens), batch * heads)

    launches = [
        Launch("preprocess", q_grid, delta_args),
        Launch("dkdv", kv_grid, dkdv_args),
        Launch("dq", q_grid, dq_args),
    ]
    return (dq, dkeys, dvalues), launches


def backward(
    grad_out: Tensor,
    q: Tensor,
    keys: Sequence[Tensor],
    values: Sequence[Tensor],
    out: Tensor,
    lse: Tensor,
    heads: int,
    scale: float | None = None,
    dq: Tensor | None = None,
    dkeys: Sequence[Tensor] | None = None,
    dvalues: Sequence[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Gradients of q and of every key and value map (NCHW contiguous) from grad_out (any strides), given the
    forward's out and base-2 lse."""
    _check_device(q)
    grads, launches = backward_launches(grad_out, q, keys, values, out, lse, heads, scale, dq, dkeys, dvalues)
    _run(q, launches)
    return grads
