"""ACK-A in Triton: multi-source cross-attention, forward and backward (FlashAttention-2 scheme).

One query map attends to the tokens of 1 to 4 key/value maps under one softmax. Every map is read where it
lies: a token t of a map of width W sits at row t // W, column t % W, and its address uses that map's own
(batch, channel, row, column) strides, so channels_last and sliced views need no copy. When a map's rows
follow each other in memory (contiguous NCHW, channels_last, row-sliced views) the kernels take the
cheaper `t * token_stride` path (the *_FLAT flags), which also lets Triton vectorise the loads.

The sources reach a kernel as tuples with one entry per source (pointers, strides, token counts, widths): the
number of sources is a compile-time constant (one compiled kernel per count, 1 to 4), so the forward and dQ
kernels run one loop per source (`tl.static_range`) whose pointers and strides are loop-invariant, where a single
loop over all blocks would re-select them per block and hold every source's values in registers. The dK/dV
kernel's grid covers the key blocks of all sources (source 0's first, a block never spans two sources); each
program finds its block's source once (`_source_of_block`, `_pick`).

Full blocks skip masks: the heuristics set EVEN_M (query blocks full), EVEN_N (every key block of every source
full) and EVEN_D (the head dim is its padded width) per launch, and the forward folds the softmax scale into one
FMA (FOLD_SCALE, any scale > 0). Outputs and gradients are written in their input's memory format
(kernels/layout.py): channels_last in, channels_last out.

Passes, one @triton.jit function each:
  _forward_jit     grid (query blocks, B*heads): online softmax over the key blocks of all sources, fp32
                   accumulators, writes O and the log-sum-exp (B*heads, Nq) in base 2. Two variants under their own
                   autotuners: "forward" reads through pointers, "forward_tma" (Hopper, 16-bit, maps TMA can read)
                   through tensor descriptors, warp-specialised for one source; taken where `tma_forward` says
                   (measured faster, or ACKD_TMA_FORWARD=1).
  _delta_kernel    Delta = rowsum(O * dO), the backward's pre-pass.
  _dkdv_kernel     grid (key blocks of all sources, B*heads), one launch for all sources: dK, dV of a block's
                   keys, looping over all query blocks (no atomics).
  _dq_kernel       grid (query blocks, B*heads): dQ, looping over the key blocks of all sources.
  fused backward   _dkdv_jit with FUSE_DQ adds each key block's share of dQ to an fp32 sum with atomics (5 matrix
                   products where dkdv + dq do 7), then _dq_convert_kernel scales it into dQ; taken where
                   `fused_backward` says (measured faster, or ACKD_FUSED_BACKWARD=1), never in deterministic mode.
Softmax runs in the log2 domain throughout: scores are scaled by scale*log2(e), exponentials are exp2, and the
forward stores the log-sum-exp in base 2, which the backward subtracts as it is (a natural log converted there
and back would round twice, an error that grows with the logits). Head dims that are not powers of two are
padded to BLOCK_D with masked loads and stores.

`forward_launches` and `backward_launches` turn checked inputs (ackd_fast.checks does the checking at the op
boundary) into launches: strides read once, outputs allocated, grids computed. `forward` and `backward` run
them, and keep a plan per launch key so that a repeated call skips this work and Triton's argument binder (the
launch cache below); the ahead-of-time check compiles what they would launch.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ackd_fast.kernels import configs, layout, tuning

INTERPRET = configs.INTERPRET
LOG2E = 1.4426950408889634


# ---------------------------------------------------------------------------------------------- helpers


@triton.jit
def _pick(j, per_source):
    """per_source[j] for a run-time source index j: `per_source` holds one scalar or pointer per source."""
    picked = per_source[0]
    for i in tl.static_range(1, len(per_source)):
        picked = tl.where(j == i, per_source[i], picked)
    return picked


@triton.jit
def _pick_strides(j, strides):
    """Source j's (batch, channel, row, column) strides: `strides` holds one such tuple per source."""
    s_b, s_c, s_h, s_w = strides[0][0], strides[0][1], strides[0][2], strides[0][3]
    for i in tl.static_range(1, len(strides)):
        s_b = tl.where(j == i, strides[i][0], s_b)
        s_c = tl.where(j == i, strides[i][1], s_c)
        s_h = tl.where(j == i, strides[i][2], s_h)
        s_w = tl.where(j == i, strides[i][3], s_w)
    return s_b, s_c, s_h, s_w


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
    """Addresses of head h's channels (offs_d) of sample b in a map whose strides start (batch, channel, ...)."""
    return X + b * strides[0] + (h * head_dim + offs_d) * strides[1]


@triton.jit
def _load_tile(
    chan, t, width, strides, mask_t, mask_d,
    FLAT: tl.constexpr, TRANS: tl.constexpr, EVEN_T: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """Tokens t of the channels at `chan`: a (tokens, d) tile, or (d, tokens) when TRANS; masked lanes read 0.
    EVEN_T / EVEN_D: every token / channel lane is real, so the load needs no mask."""
    tok = _tokens(t, width, strides[2], strides[3], FLAT)
    if TRANS:
        ptrs = chan[:, None] + tok[None, :]
        mask = mask_d[:, None] & mask_t[None, :]
    else:
        ptrs = chan[None, :] + tok[:, None]
        mask = mask_t[:, None] & mask_d[None, :]
    if EVEN_T and EVEN_D:  # noqa: SIM108 (a constexpr branch)
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=mask, other=0.0)
    return tile


@triton.jit
def _store_tile(
    X, strides, b, h, head_dim, offs_t, offs_d, tile, mask_t, mask_d, EVEN_T: tl.constexpr, EVEN_D: tl.constexpr
):
    """Stores a (tokens, d) tile into a dense map with (batch, channel, token) strides (its own memory format)."""
    ptrs = _channels(X, strides, b, h, head_dim, offs_d)[None, :] + offs_t[:, None] * strides[2]
    value = tile.to(X.dtype.element_ty)
    if EVEN_T and EVEN_D:
        tl.store(ptrs, value)
    else:
        tl.store(ptrs, value, mask=mask_t[:, None] & mask_d[None, :])


@triton.jit
def _source_of_block(block, kv_tokens, BLOCK_N: tl.constexpr):
    """(j, first): the source of key block `block`, and the index of its first block, where the sources' blocks
    of BLOCK_N keys follow each other, source 0's first."""
    j = 0
    first = 0
    blocks_before = 0
    for i in tl.static_range(len(kv_tokens) - 1):
        blocks_before += tl.cdiv(kv_tokens[i], BLOCK_N)
        j = tl.where(block >= blocks_before, i + 1, j)
        first = tl.where(block >= blocks_before, blocks_before, first)
    return j, first


@triton.jit
def _softmax_step(
    q, kt, v, m_i, l_i, acc, mask_n, qk_scale,
    PRECISION: tl.constexpr, EVEN_N: tl.constexpr, FOLD_SCALE: tl.constexpr,
):  # fmt: skip
    """One key block of the online softmax in the log2 domain (qk_scale = scale * log2(e)): the running row max
    m_i, row sum l_i and output accumulator acc after the keys of (kt, v)."""
    s = tl.dot(q, kt, input_precision=PRECISION)
    if FOLD_SCALE:  # qk_scale > 0: max(s) * scale == max(s * scale), and s * scale - m is one FMA
        if not EVEN_N:
            s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
    else:  # a scale <= 0 (legal, rare): scale first, so the mask's -inf stays -inf
        s = s * qk_scale
        if not EVEN_N:
            s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    # Every block holds at least one real key, so m_new is finite and alpha is exp2(-inf) = 0 on the first.
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _write_forward(
    Out, LSE, out_strides, b, h, bh, head_dim, q_tokens, offs_m, offs_d, mask_m, mask_d, acc, m_i, l_i,
    EVEN_M: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """A query block's output acc / l and its base-2 log-sum-exp m + log2(l)."""
    lse_ptrs = LSE + bh.to(tl.int64) * q_tokens + offs_m
    if EVEN_M:
        tl.store(lse_ptrs, m_i + tl.log2(l_i))
    else:
        tl.store(lse_ptrs, m_i + tl.log2(l_i), mask=mask_m)
    _store_tile(Out, out_strides, b, h, head_dim, offs_m, offs_d, acc / l_i[:, None], mask_m, mask_d, EVEN_M, EVEN_D)


# ---------------------------------------------------------------------------------------------- kernels
# Sources: K, V (and DK, DV) hold one map per source, kv_tokens and kv_widths one int per source, k_strides and
# v_strides one (batch, channel, row, column) tuple per source; the number of sources is the tuples' length, a
# compile-time constant, so the forward and dQ kernels run one loop per source whose pointers and strides are
# loop-invariant. Outputs and gradients are dense maps in their input's memory format, addressed by (batch,
# channel, token) strides. `heads` is not specialised on (heads=1 would otherwise compile another kernel).
# The EVEN_* flags (heuristics below) let full blocks skip masks: EVEN_M every query block is full, EVEN_N every
# key block of every source, EVEN_D the head dim is its padded width BLOCK_D.


def _even_m(args):
    return args["q_tokens"] % args["BLOCK_M"] == 0


def _even_n(args):
    return all(n % args["BLOCK_N"] == 0 for n in args["kv_tokens"])


def _even_d(args):
    return args["head_dim"] == args["BLOCK_D"]


def _fold_scale(args):
    return args["qk_scale"] > 0


HEURISTICS = {
    "forward": {"EVEN_M": _even_m, "EVEN_N": _even_n, "EVEN_D": _even_d, "FOLD_SCALE": _fold_scale},
    "preprocess": {"EVEN_M": _even_m, "EVEN_D": _even_d},
    "dkdv": {"EVEN_M": _even_m, "EVEN_N": _even_n, "EVEN_D": _even_d},
    "dq": {"EVEN_M": _even_m, "EVEN_N": _even_n, "EVEN_D": _even_d},
}


@triton.jit
def _tma_descriptor(X, strides, b, h, head_dim, tokens, TOKEN_MAJOR: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_D: tl.constexpr):  # fmt: skip
    """A tensor descriptor (TMA on sm_90) of head h of sample b of a flat map: (tokens, d) blocks when the channels
    have unit stride (TOKEN_MAJOR: channels_last), else (d, tokens) blocks (NCHW: the tokens have unit stride).
    Blocks past the map's tokens or head dim read 0."""
    base = X + b * strides[0] + h * head_dim * strides[1]
    if TOKEN_MAJOR:
        desc = tl.make_tensor_descriptor(base, shape=[tokens, head_dim], strides=[strides[3], 1],
                                         block_shape=[BLOCK_T, BLOCK_D])  # fmt: skip
    else:
        desc = tl.make_tensor_descriptor(base, shape=[head_dim, tokens], strides=[strides[1], 1],
                                         block_shape=[BLOCK_D, BLOCK_T])  # fmt: skip
    return desc


@triton.jit
def _tma_load(desc, start, TOKEN_MAJOR: tl.constexpr, TRANS: tl.constexpr):
    """Tokens start .. start + BLOCK_T - 1 as a (tokens, d) tile, or (d, tokens) when TRANS."""
    if TOKEN_MAJOR:
        tile = desc.load([start, 0])
        if TRANS:
            tile = tl.trans(tile)
    else:
        tile = desc.load([0, start])
        if not TRANS:
            tile = tl.trans(tile)
    return tile


def _warp_specialize(args):
    """Warp specialisation (a producer warp issuing the TMA loads, FlashAttention-3's structure) for the TMA
    forward with one source of 16-bit inputs: its tiles run 4 warps, the only count at which Triton keeps it, and
    Triton (3.8) fails to compile a kernel with more than one warp-specialised loop (one per source), so several
    sources take the TMA loads and Triton's software pipelining alone."""
    return args["TMA"] and args["Q"].element_size() == 2 and len(args["K"]) == 1 and not INTERPRET


HEURISTICS["forward"]["WARP_SPECIALIZE"] = _warp_specialize
HEURISTICS["forward_tma"] = HEURISTICS["forward"]


@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _forward_jit(
    Out, LSE, Q, K, V,
    out_strides, q_strides, k_strides, v_strides,  # out: (batch, channel, token); q: (batch, channel, row, column)
    q_tokens, q_width, kv_tokens, kv_widths,
    heads, head_dim, qk_scale, tune_bucket,
    Q_FLAT: tl.constexpr, KV_FLAT: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr, Q_TOKEN_MAJOR: tl.constexpr, KV_TOKEN_MAJOR: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, FOLD_SCALE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The forward of one query block. TMA: every map read through tensor descriptors (`tma_layout`: flat maps,
    16-byte aligned strides; Q_TOKEN_MAJOR / KV_TOKEN_MAJOR say each one's orientation), else through pointers."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)  # batch offsets can pass 2**31 elements
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_tokens
    mask_d = offs_d < head_dim
    if TMA:
        q_desc = _tma_descriptor(Q, q_strides, b, h, head_dim, q_tokens, Q_TOKEN_MAJOR, BLOCK_M, BLOCK_D)
        q = _tma_load(q_desc, pid_m * BLOCK_M, Q_TOKEN_MAJOR, False)
    else:
        q_chan = _channels(Q, q_strides, b, h, head_dim, offs_d)
        q = _load_tile(q_chan, offs_m, q_width, q_strides, mask_m, mask_d, Q_FLAT, False, EVEN_M, EVEN_D)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j in tl.static_range(len(K)):  # one loop per source: its pointers and strides stay put
        if TMA:
            k_desc = _tma_descriptor(K[j], k_strides[j], b, h, head_dim, kv_tokens[j], KV_TOKEN_MAJOR, BLOCK_N,
                                     BLOCK_D)  # fmt: skip
            v_desc = _tma_descriptor(V[j], v_strides[j], b, h, head_dim, kv_tokens[j], KV_TOKEN_MAJOR, BLOCK_N,
                                     BLOCK_D)  # fmt: skip
        else:
            k_chan = _channels(K[j], k_strides[j], b, h, head_dim, offs_d)
            v_chan = _channels(V[j], v_strides[j], b, h, head_dim, offs_d)
        for start in tl.range(0, kv_tokens[j], BLOCK_N, warp_specialize=WARP_SPECIALIZE):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < kv_tokens[j]  # TMA: past the keys the descriptor reads 0, the mask gives them -inf
            if TMA:
                kt = _tma_load(k_desc, start, KV_TOKEN_MAJOR, True)
                v = _tma_load(v_desc, start, KV_TOKEN_MAJOR, False)
            else:
                kt = _load_tile(k_chan, offs_n, kv_widths[j], k_strides[j], mask_n, mask_d, KV_FLAT, True, EVEN_N,
                                EVEN_D)  # fmt: skip
                v = _load_tile(v_chan, offs_n, kv_widths[j], v_strides[j], mask_n, mask_d, KV_FLAT, False, EVEN_N,
                               EVEN_D)  # fmt: skip
            m_i, l_i, acc = _softmax_step(q, kt, v, m_i, l_i, acc, mask_n, qk_scale, PRECISION, EVEN_N, FOLD_SCALE)

    _write_forward(Out, LSE, out_strides, b, h, bh, head_dim, q_tokens, offs_m, offs_d, mask_m, mask_d, acc, m_i, l_i,
                   EVEN_M, EVEN_D)  # fmt: skip


def _forward_autotuned(kernel: str):
    """_forward_jit under its own autotuner per variant (through pointers "forward", through descriptors
    "forward_tma": other tiles)."""
    return triton.autotune(
        configs=configs.autotune_configs(kernel),
        key=["tune_bucket", "BLOCK_D", "PRECISION", "Q_FLAT", "KV_FLAT", "TMA", "Q_TOKEN_MAJOR", "KV_TOKEN_MAJOR"],
        prune_configs_by={"early_config_prune": configs.prune(kernel, "Q")},
    )(triton.heuristics(HEURISTICS["forward"])(_forward_jit))


_forward_kernel = _forward_autotuned("forward")
_forward_tma_kernel = _forward_autotuned("forward_tma")


@triton.autotune(
    configs=configs.autotune_configs("preprocess"),
    key=["tune_bucket", "BLOCK_D", "DO_FLAT"],
    prune_configs_by={"early_config_prune": configs.prune("preprocess", "DO")},
)
@triton.heuristics(HEURISTICS["preprocess"])
@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _delta_kernel(
    Delta, Out, DO, out_strides, do_strides, q_tokens, q_width, heads, head_dim, tune_bucket,
    DO_FLAT: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_tokens
    mask_d = offs_d < head_dim
    # Out is dense: its token stride is out_strides[2], which _load_tile reads as a flat map's column stride.
    o_chan = _channels(Out, out_strides, b, h, head_dim, offs_d)
    o = _load_tile(o_chan, offs_m, q_width, (0, 0, 0, out_strides[2]), mask_m, mask_d, True, False, EVEN_M, EVEN_D)
    do_chan = _channels(DO, do_strides, b, h, head_dim, offs_d)
    do = _load_tile(do_chan, offs_m, q_width, do_strides, mask_m, mask_d, DO_FLAT, False, EVEN_M, EVEN_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if EVEN_M:
        tl.store(Delta + bh.to(tl.int64) * q_tokens + offs_m, delta)
    else:
        tl.store(Delta + bh.to(tl.int64) * q_tokens + offs_m, delta, mask=mask_m)


@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _dkdv_jit(
    DK, DV, Q, K, V, DO, LSE, Delta, DQ_ACC,  # DK, DV: the sources' gradients, dense, (batch, channel, token) strides
    dk_strides, dv_strides, q_strides, k_strides, v_strides, do_strides,
    q_tokens, q_width, kv_tokens, kv_widths, heads, head_dim, sm_scale, qk_scale, tune_bucket,
    Q_FLAT: tl.constexpr, KV_FLAT: tl.constexpr, DO_FLAT: tl.constexpr, PRECISION: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, FUSE_DQ: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dK, dV of one key block; with FUSE_DQ also this block's share of dQ = dS K, added in fp32 to DQ_ACC
    ((B*heads, q_tokens, head_dim), zeroed) with atomics: 5 matrix products per block pair where the separate dQ
    kernel recomputes S and dP (7). The atomics' order varies, so the sum's rounding does too: the two-kernel
    path stays the deterministic one."""
    pid = tl.program_id(0)  # a key block of all sources' blocks (see _source_of_block); its source is picked once
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
    k_chan = _channels(_pick(j, K), k_strides_j, b, h, head_dim, offs_d)
    v_chan = _channels(_pick(j, V), v_strides_j, b, h, head_dim, offs_d)
    k = _load_tile(k_chan, offs_n, width, k_strides_j, mask_n, mask_d, KV_FLAT, False, EVEN_N, EVEN_D)
    v = _load_tile(v_chan, offs_n, width, v_strides_j, mask_n, mask_d, KV_FLAT, False, EVEN_N, EVEN_D)

    q_chan = _channels(Q, q_strides, b, h, head_dim, offs_d)
    do_chan = _channels(DO, do_strides, b, h, head_dim, offs_d)
    row = bh.to(tl.int64) * q_tokens
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, q_tokens, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < q_tokens
        qt = _load_tile(q_chan, offs_m, q_width, q_strides, mask_m, mask_d, Q_FLAT, True, EVEN_M, EVEN_D)
        # Padding queries get lse2 = +inf, hence probability 0, and contribute nothing.
        if EVEN_M:
            lse2 = tl.load(LSE + row + offs_m)
            delta = tl.load(Delta + row + offs_m)
        else:
            lse2 = tl.load(LSE + row + offs_m, mask=mask_m, other=float("inf"))
            delta = tl.load(Delta + row + offs_m, mask=mask_m, other=0.0)
        pt = tl.exp2(tl.dot(k, qt, input_precision=PRECISION) * qk_scale - lse2[None, :])
        do = _load_tile(do_chan, offs_m, q_width, do_strides, mask_m, mask_d, DO_FLAT, False, EVEN_M, EVEN_D)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
        if FUSE_DQ:  # padding keys load as 0 in k: their rows of dS add nothing
            dq_part = tl.dot(tl.trans(dst.to(k.dtype)), k, input_precision=PRECISION)
            dq_ptrs = DQ_ACC + (row + offs_m)[:, None] * head_dim + offs_d[None, :]
            tl.atomic_add(dq_ptrs, dq_part, mask=mask_m[:, None] & mask_d[None, :], sem="relaxed")

    dk_strides_j = (_pick(j, dk_strides[0]), _pick(j, dk_strides[1]), _pick(j, dk_strides[2]))
    dv_strides_j = (_pick(j, dv_strides[0]), _pick(j, dv_strides[1]), _pick(j, dv_strides[2]))
    dk = dk * sm_scale
    _store_tile(_pick(j, DK), dk_strides_j, b, h, head_dim, offs_n, offs_d, dk, mask_n, mask_d, EVEN_N, EVEN_D)
    _store_tile(_pick(j, DV), dv_strides_j, b, h, head_dim, offs_n, offs_d, dv, mask_n, mask_d, EVEN_N, EVEN_D)


@triton.autotune(
    configs=configs.autotune_configs("dq"),
    key=["tune_bucket", "BLOCK_D", "PRECISION", "Q_FLAT", "DO_FLAT", "KV_FLAT"],
    prune_configs_by={"early_config_prune": configs.prune("dq", "Q")},
)
@triton.heuristics(HEURISTICS["dq"])
@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _dq_kernel(
    DQ, Q, K, V, DO, LSE, Delta,  # DQ: dense, (batch, channel, token) strides
    dq_strides, q_strides, k_strides, v_strides, do_strides,
    q_tokens, q_width, kv_tokens, kv_widths, heads, head_dim, sm_scale, qk_scale, tune_bucket,
    Q_FLAT: tl.constexpr, KV_FLAT: tl.constexpr, DO_FLAT: tl.constexpr, PRECISION: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_tokens
    mask_d = offs_d < head_dim
    q_chan = _channels(Q, q_strides, b, h, head_dim, offs_d)
    q = _load_tile(q_chan, offs_m, q_width, q_strides, mask_m, mask_d, Q_FLAT, False, EVEN_M, EVEN_D)
    do_chan = _channels(DO, do_strides, b, h, head_dim, offs_d)
    do = _load_tile(do_chan, offs_m, q_width, do_strides, mask_m, mask_d, DO_FLAT, False, EVEN_M, EVEN_D)
    row = bh.to(tl.int64) * q_tokens
    if EVEN_M:
        lse2 = tl.load(LSE + row + offs_m)
        delta = tl.load(Delta + row + offs_m)
    else:
        lse2 = tl.load(LSE + row + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(Delta + row + offs_m, mask=mask_m, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j in tl.static_range(len(K)):  # one loop per source, as in the forward
        k_chan = _channels(K[j], k_strides[j], b, h, head_dim, offs_d)
        v_chan = _channels(V[j], v_strides[j], b, h, head_dim, offs_d)
        for start in range(0, kv_tokens[j], BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < kv_tokens[j]
            kt = _load_tile(k_chan, offs_n, kv_widths[j], k_strides[j], mask_n, mask_d, KV_FLAT, True, EVEN_N, EVEN_D)
            vt = _load_tile(v_chan, offs_n, kv_widths[j], v_strides[j], mask_n, mask_d, KV_FLAT, True, EVEN_N, EVEN_D)
            p = tl.exp2(tl.dot(q, kt, input_precision=PRECISION) * qk_scale - lse2[:, None])
            if not EVEN_N:  # padding keys load as 0 and would get weight exp2(-lse2) > 0: zero them
                p = tl.where(mask_n[None, :], p, 0.0)
            dp = tl.dot(do, vt, input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)

    _store_tile(DQ, dq_strides, b, h, head_dim, offs_m, offs_d, dq * sm_scale, mask_m, mask_d, EVEN_M, EVEN_D)


def _dkdv_autotuned(kernel: str):
    """_dkdv_jit under its own autotuner per variant (two-kernel "dkdv", fused "dkdv_fused": other registers)."""
    return triton.autotune(
        configs=configs.autotune_configs(kernel),
        key=["tune_bucket", "BLOCK_D", "PRECISION", "Q_FLAT", "DO_FLAT", "KV_FLAT", "FUSE_DQ"],
        prune_configs_by={"early_config_prune": configs.prune(kernel, "Q")},
        # timing configs launches the kernel many times: the fused one's atomics would add up in DQ_ACC, which
        # the autotuner zeroes before each timed run and before the launch that counts
        reset_to_zero=["DQ_ACC"] if kernel == "dkdv_fused" else None,
    )(triton.heuristics(HEURISTICS["dkdv"])(_dkdv_jit))


_dkdv_kernel = _dkdv_autotuned("dkdv")
_dkdv_fused_kernel = _dkdv_autotuned("dkdv_fused")


@triton.autotune(
    configs=configs.autotune_configs("dq_convert"),
    key=["tune_bucket", "BLOCK_D"],
    prune_configs_by={"early_config_prune": configs.prune("dq_convert", "DQ")},
)
@triton.heuristics(HEURISTICS["preprocess"])
@triton.jit(do_not_specialize=["heads", "tune_bucket"])
def _dq_convert_kernel(
    DQ, DQ_ACC, dq_strides, q_tokens, heads, head_dim, sm_scale, tune_bucket,
    EVEN_M: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """dQ = sm_scale * the fused backward's fp32 sum, in q's layout and dtype."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_tokens
    mask_d = offs_d < head_dim
    ptrs = DQ_ACC + (bh.to(tl.int64) * q_tokens + offs_m)[:, None] * head_dim + offs_d[None, :]
    if EVEN_M and EVEN_D:  # noqa: SIM108 (a constexpr branch)
        acc = tl.load(ptrs)
    else:
        acc = tl.load(ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    _store_tile(DQ, dq_strides, b, h, head_dim, offs_m, offs_d, acc * sm_scale, mask_m, mask_d, EVEN_M, EVEN_D)


# The kernels by the names configs.KERNELS gives them.
KERNELS = {
    "forward": _forward_kernel, "forward_tma": _forward_tma_kernel, "preprocess": _delta_kernel, "dkdv": _dkdv_kernel,
    "dq": _dq_kernel, "dkdv_fused": _dkdv_fused_kernel, "dq_convert": _dq_convert_kernel,
}  # fmt: skip
HEURISTICS["dkdv_fused"] = HEURISTICS["dkdv"]
HEURISTICS["dq_convert"] = HEURISTICS["preprocess"]


def fused_backward(q_tokens: int, kv_tokens: int, batch_heads: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether the backward runs fused (dK, dV and dQ in one kernel, dQ by fp32 atomics): never under
    torch.use_deterministic_algorithms (the atomics' order varies); otherwise where ACKD_FUSED_BACKWARD=1, or where
    the committed measurements (kernels/tuned, "backward" rules) found it faster for this size class on this GPU.
    Unmeasured, the two-kernel path runs."""
    if torch.are_deterministic_algorithms_enabled():
        return False
    if FUSED_BACKWARD is not None:
        return FUSED_BACKWARD
    return _measured_winner("backward", q_tokens, kv_tokens, batch_heads, head_dim, dtype) == "fused"


def _measured_winner(rules: str, q_tokens: int, kv_tokens: int, batch_heads: int, head_dim: int,
                     dtype: torch.dtype) -> str | None:  # fmt: skip
    """The winner the committed measurements of this GPU name for this size class in the tuned file's `rules`
    ("backward", "forward_kernel"), or None (no GPU, no rule)."""
    if not torch.cuda.is_available():
        return None
    arch = configs.arch_of(torch.cuda.get_device_capability())
    key = (str(dtype).removeprefix("torch."), tuning.head_dim_class(head_dim),
           tuning.tune_bucket(q_tokens, kv_tokens, batch_heads))  # fmt: skip
    return getattr(tuning.load(arch), rules).get(key)


# ACKD_FUSED_BACKWARD: "1" fused, "0" two-kernel, unset: as measured (fused_backward)
FUSED_BACKWARD = {"1": True, "0": False}.get(os.environ.get("ACKD_FUSED_BACKWARD", ""))


# --------------------------------------------------------------------------------------------- launchers


class Launch(NamedTuple):
    """One kernel launch: the kernel's name in KERNELS, its grid as a function of the config's meta-parameters,
    and its arguments."""

    kernel: str
    grid: Callable[[dict], tuple[int, int]]
    args: dict[str, Any]


_map_strides = layout.map_strides
_like = layout.output_like


def _dense_strides(x: Tensor) -> tuple[int, int, int]:
    """(batch, channel, token) strides of a map the kernels write (see `layout.output_like`)."""
    (sb, sc, _, sw), flat = _map_strides(x)
    assert flat  # output_like and _check_buffer only hand out maps whose rows follow each other
    return sb, sc, sw


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
    """tl.dot's input precision: fp32 follows torch's fp32 matmul precision (`fp32_matmul_precision`) on the
    tensor cores, "tf32" where torch allows TF32 and "tf32x3" (three TF32 passes, fp32-accurate) where it asks
    for full fp32; 16-bit inputs and the interpreter (which computes in full fp32 anyway) take "ieee"."""
    if dtype != torch.float32 or INTERPRET:
        return "ieee"
    return "tf32" if fp32_matmul_precision() == "tf32" else "tf32x3"


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
        dense = x.shape[1] * x.shape[2] * x.shape[3]  # the outputs and gradients are dense maps
        if max(span, dense) > MAX_SAMPLE_SPAN:
            raise ValueError(
                f"{name}: one sample of shape {tuple(x.shape[1:])} with strides {x.stride()[1:]} spans "
                f"{max(span, dense)} elements, more than the kernels' int32 indexing takes ({MAX_SAMPLE_SPAN}); "
                "pass a contiguous map of fewer channels or tokens per sample"
            )


_tune_bucket = tuning.tune_bucket


def _check_device(q: Tensor) -> None:
    if q.device.type == "cpu" and not INTERPRET:
        raise RuntimeError(
            "the Triton ACK-A kernels got CPU tensors but run on CPU only under the Triton interpreter: "
            "set TRITON_INTERPRET=1 before importing ackd_fast to run Triton kernels on CPU"
        )


def _is_dense(x: Tensor) -> bool:
    """Whether x's elements fill a block of memory exactly once (any order of the dims)."""
    expected = 1
    for size, stride in sorted(((n, st) for n, st in zip(x.shape, x.stride(), strict=True) if n != 1),
                               key=lambda dim: dim[1]):  # fmt: skip
        if stride != expected:
            return False
        expected *= size
    return True


def _check_buffer(name: str, buf: Tensor | None, like: Tensor, shape=None, dtype=None) -> Tensor:
    """A preallocated output (tests pass NaN-filled ones): any dense map whose rows follow each other (`_like`'s
    layouts: NCHW or channels_last), or a contiguous tensor when `shape` is given (the log-sum-exp); else a fresh
    one."""
    dtype = like.dtype if dtype is None else dtype
    if buf is None:
        return _like(like) if shape is None else torch.empty(tuple(shape), dtype=dtype, device=like.device)
    want_shape = tuple(like.shape) if shape is None else tuple(shape)
    if shape is None:
        dense = buf.dim() == 4 and _is_dense(buf) and _map_strides(buf)[1]
        expected = "dense (B, C, H, W) map whose rows follow each other (NCHW or channels_last)"
    else:
        dense, expected = buf.is_contiguous(), "contiguous tensor"
    if tuple(buf.shape) != want_shape or buf.dtype != dtype or buf.device != like.device or not dense:
        raise ValueError(
            f"{name} must be a {expected} of {dtype}, shape {want_shape} on {like.device}, got {buf.dtype} shape "
            f"{tuple(buf.shape)} on {buf.device} with strides {buf.stride()}"
        )
    return buf


def _source_args(keys: Sequence[Tensor], values: Sequence[Tensor]) -> tuple[dict[str, Any], tuple[int, ...]]:
    """The kernels' per-source arguments (K, V, k_strides, v_strides, kv_tokens, kv_widths, KV_FLAT) and the
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
        "K": tuple(keys),
        "V": tuple(values),
        "k_strides": tuple(k_strides),
        "v_strides": tuple(v_strides),
        "kv_tokens": tokens,
        "kv_widths": tuple(k.shape[3] for k in keys),
        "KV_FLAT": flat,
    }
    return args, tokens


def tma_layout(x: Tensor, head_dim: int) -> bool | None:
    """How tensor descriptors can read map x: True with (tokens, d) blocks (channels of unit stride: channels_last),
    False with (d, tokens) blocks (tokens of unit stride: NCHW), None when they cannot (rows that do not follow each
    other, strides or the first element off 16 bytes, as TMA requires)."""
    (sb, sc, _, sw), flat = _map_strides(x)
    per_16_bytes = 16 // x.element_size()
    if not flat or x.data_ptr() % 16 != 0 or sb % per_16_bytes != 0:
        return None
    if sc == 1 and sw % per_16_bytes == 0 and head_dim % per_16_bytes == 0:
        return True
    if sw == 1 and sc % per_16_bytes == 0:
        return False
    return None


def _tma_flags(q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], heads: int) -> dict[str, bool] | None:
    """The TMA kernel's layout flags when it can run these inputs: 16-bit maps, q readable through descriptors and
    every key and value map in one orientation, on Hopper (or in the interpreter), with tiles for the class."""
    head_dim = q.shape[1] // heads
    if q.element_size() != 2:
        return None
    if not INTERPRET:  # a GPU from Hopper on, or the meta device (the ahead-of-time check compiles for sm_90)
        if q.device.type not in ("cuda", "meta"):
            return None
        if q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (9, 0):
            return None
        if not configs.gpu_candidates("forward_tma", 2, configs.block_d(head_dim), "ieee", 90):
            return None
    q_major = tma_layout(q, head_dim)
    kv_major = {tma_layout(x, head_dim) for x in (*keys, *values)}
    if q_major is None or len(kv_major) != 1 or None in kv_major:
        return None
    return {"Q_TOKEN_MAJOR": q_major, "KV_TOKEN_MAJOR": kv_major.pop()}


def tma_forward(q_tokens: int, kv_tokens: int, batch_heads: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether a forward the TMA kernel can run takes it: where ACKD_TMA_FORWARD=1, or where the committed
    measurements (kernels/tuned, "forward_kernel" rules) found it faster for this size class on this GPU. Unmeasured,
    the pointer kernel runs."""
    if TMA_FORWARD is not None:
        return TMA_FORWARD
    return _measured_winner("forward_kernel", q_tokens, kv_tokens, batch_heads, head_dim, dtype) == "tma"


# ACKD_TMA_FORWARD: "1" the TMA forward wherever it can run, "0" never, unset: as measured (tma_forward)
TMA_FORWARD = {"1": True, "0": False}.get(os.environ.get("ACKD_TMA_FORWARD", ""))


def _tma_allocator(size: int, alignment: int, stream) -> Tensor:
    """Global memory for the descriptors the TMA kernel builds on the device (Triton asks for it per launch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def forward_launches(
    q: Tensor,
    keys: Sequence[Tensor],
    values: Sequence[Tensor],
    heads: int,
    scale: float | None = None,
    out: Tensor | None = None,
    lse: Tensor | None = None,
    tma: bool | None = None,
) -> tuple[tuple[Tensor, Tensor], list[Launch]]:
    """The outputs (out, lse), allocated unless given, and the launch that computes them (see `forward`): through
    tensor descriptors (the "forward_tma" variant of `_forward_jit`) where `tma` (default: `tma_forward`) and the
    inputs allow it, else through pointers."""
    batch, channels, q_height, q_width = q.shape
    head_dim = channels // heads
    q_tokens = q_height * q_width
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    _check_limits(q, keys, values, heads)
    out = _check_buffer("out", out, q)
    lse = _check_buffer("lse", lse, q, (batch * heads, q_tokens), torch.float32)
    q_strides, q_flat = _map_strides(q)
    sources, kv_tokens = _source_args(keys, values)

    def grid(meta):
        return (triton.cdiv(q_tokens, meta["BLOCK_M"]), batch * heads)

    args = {
        "Out": out, "LSE": lse, "Q": q, **sources, "out_strides": _dense_strides(out), "q_strides": q_strides,
        "q_tokens": q_tokens, "q_width": q_width, "heads": heads, "head_dim": head_dim, "qk_scale": scale * LOG2E,
        "tune_bucket": _tune_bucket(q_tokens, sum(kv_tokens), batch * heads),
        "Q_FLAT": q_flat, "PRECISION": _precision(q.dtype), "BLOCK_D": configs.block_d(head_dim),
    }  # fmt: skip
    flags = _tma_flags(q, keys, values, heads)
    if tma is None and flags is not None:
        tma = tma_forward(q_tokens, sum(kv_tokens), batch * heads, head_dim, q.dtype)
    if tma and flags is not None:
        if q.device.type == "cuda":
            triton.set_allocator(_tma_allocator)
        return (out, lse), [Launch("forward_tma", grid, {**args, "TMA": True, **flags})]
    pointers = {"TMA": False, "Q_TOKEN_MAJOR": False, "KV_TOKEN_MAJOR": False}
    return (out, lse), [Launch("forward", grid, {**args, **pointers})]


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
    fused: bool | None = None,
) -> tuple[tuple[Tensor, list[Tensor], list[Tensor]], list[Launch]]:
    """The gradients (dq, dkeys, dvalues), allocated unless given, and the launches that compute them in order:
    Delta, then dK and dV of every source (one launch), then dQ (see `backward`); `fused` (default:
    `fused_backward`): Delta, then dK, dV and dQ's fp32 sum in one launch, then dQ converted."""
    batch, channels, q_height, q_width = q.shape
    head_dim = channels // heads
    q_tokens = q_height * q_width
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    _check_limits(q, keys, values, heads)
    _check_buffer("out", out, q)
    _check_buffer("lse", lse, q, (batch * heads, q_tokens), torch.float32)
    if grad_out.shape != q.shape or grad_out.dtype != q.dtype or grad_out.device != q.device:
        raise ValueError(
            f"grad_out must match the output: {q.dtype} shape {tuple(q.shape)} on {q.device}, got "
            f"{grad_out.dtype} shape {tuple(grad_out.shape)} on {grad_out.device}"
        )
    dq = _check_buffer("dq", dq, q)
    dkeys = [_check_buffer(f"dkeys[{j}]", None if dkeys is None else dkeys[j], k) for j, k in enumerate(keys)]
    dvalues = [_check_buffer(f"dvalues[{j}]", None if dvalues is None else dvalues[j], v) for j, v in enumerate(values)]
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
        "Delta": delta, "Out": out, "DO": grad_out, "out_strides": _dense_strides(out), "do_strides": do_strides,
        "q_tokens": q_tokens, "q_width": q_width, "heads": heads, "head_dim": head_dim, "tune_bucket": bucket,
        "DO_FLAT": do_flat, "BLOCK_D": common["BLOCK_D"],
    }  # fmt: skip
    if fused is None:
        fused = fused_backward(q_tokens, sum(kv_tokens), batch * heads, head_dim, q.dtype)
    # the fused kernel's fp32 dQ sum (zeroed: the atomics add into it); the two-kernel path passes Delta in its
    # place, unread
    dq_acc = torch.zeros((batch * heads, q_tokens, head_dim), dtype=torch.float32, device=q.device) if fused else delta
    dkdv_args = {
        **common, "DK": tuple(dkeys), "DV": tuple(dvalues), "DQ_ACC": dq_acc, "FUSE_DQ": fused,
        # one tuple per dimension (batch, channel, token), one stride per source: what `_pick` reads
        "dk_strides": tuple(zip(*(_dense_strides(g) for g in dkeys), strict=True)),
        "dv_strides": tuple(zip(*(_dense_strides(g) for g in dvalues), strict=True)),
    }  # fmt: skip
    dq_args = {**common, "DQ": dq, "dq_strides": _dense_strides(dq)}

    def q_grid(meta):
        return (triton.cdiv(q_tokens, meta["BLOCK_M"]), batch * heads)

    def kv_grid(meta):
        return (sum(triton.cdiv(n, meta["BLOCK_N"]) for n in kv_tokens), batch * heads)

    if fused:
        convert_args = {
            "DQ": dq, "DQ_ACC": dq_acc, "dq_strides": _dense_strides(dq), "q_tokens": q_tokens, "heads": heads,
            "head_dim": head_dim, "sm_scale": scale, "tune_bucket": bucket, "BLOCK_D": common["BLOCK_D"],
        }  # fmt: skip
        last = [Launch("dkdv_fused", kv_grid, dkdv_args), Launch("dq_convert", q_grid, convert_args)]
    else:
        last = [Launch("dkdv", kv_grid, dkdv_args), Launch("dq", q_grid, dq_args)]
    return (dq, dkeys, dvalues), [Launch("preprocess", q_grid, delta_args), *last]


# ------------------------------------------------------------------------------------------- launch cache
# A call's launches depend on its inputs only through the launch key (`_launch_key`: shapes, strides, dtypes,
# devices, 16-byte alignment of every map, heads, scale, tl.dot precision). The first call of a key runs the
# launchers above (checks, strides, autotuner, Triton's binder) and keeps a `_Plan` per launch: the grid, the
# arguments that depend only on the key, the autotuner's config and, on a GPU, the compiled kernel. Later calls
# of the key allocate the outputs in the same layouts and launch the compiled kernels with positional
# arguments, skipping the checks (they passed for this key), the stride maps, the autotuner and the binder.
# Calls with preallocated outputs (the tests' NaN-filled buffers) take the full path every time.


class _Spec(NamedTuple):
    """Shape, strides and dtype of a tensor argument: the plan keeps these, never the first call's tensors."""

    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype

    def new(self, device: torch.device) -> Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=device)


class _Plan(NamedTuple):
    kernel: str
    grid: tuple[int, int]
    # every argument of the kernel in its order, meta-parameters and heuristics' flags included; tensors as _Spec,
    # which each call replaces with its own tensors
    args: dict[str, Any]
    compiled: Any  # triton CompiledKernel; None under the interpreter (which launches through the JIT)


def _spec(value):
    if isinstance(value, Tensor):
        return _Spec(value.shape, value.stride(), value.dtype)
    if isinstance(value, tuple) and value and isinstance(value[0], Tensor):
        return tuple(_spec(v) for v in value)
    return value


_FORWARD_PLANS: dict[tuple, tuple[_Plan, ...]] = {}
_BACKWARD_PLANS: dict[tuple, tuple[_Plan, ...]] = {}
MAX_PLANS = 256  # per direction; a new key past it clears the cache (shapes seen in training are few)
LAUNCH_CACHE = os.environ.get("ACKD_LAUNCH_CACHE", "1") != "0"  # 0: every call takes the full launch path


def _map_key(x: Tensor) -> tuple:
    return x.shape, x.stride(), x.dtype, x.data_ptr() % 16 == 0


def _launch_key(q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], heads: int, scale, *more: Tensor) -> tuple:
    """Everything a call's launches depend on besides the tensors' addresses (Triton specialises on 16-byte
    alignment, hence that bit per map)."""
    return (
        q.device, heads, scale, _precision(q.dtype), _map_key(q), *(_map_key(k) for k in keys), len(keys),
        *(_map_key(v) for v in values), *(_map_key(x) for x in more),
    )  # fmt: skip


def _jit(kernel: str):
    """The autotuner of `kernel`, its heuristics and its JITFunction."""
    tuner = KERNELS[kernel]
    heuristics = tuner.fn
    return tuner, heuristics, heuristics.fn


def _plan(launch: Launch, compiled) -> _Plan:
    """The plan of a launch that just ran through the autotuner (which holds the config it picked)."""
    tuner, heuristics, fn = _jit(launch.kernel)
    args = {**launch.args, **tuner.best_config.kwargs}
    args.update({name: rule(args) for name, rule in heuristics.values.items()})
    plan_args = {name: _spec(args[name]) for name in fn.arg_names}
    return _Plan(launch.kernel, launch.grid(args), plan_args, None if INTERPRET else compiled)


def _run(q: Tensor, launches: Sequence[Launch]) -> list:
    """Runs the launches through the autotuner; returns what each returned (the compiled kernel on a GPU)."""
    # Triton launches on the current CUDA device: make it the inputs' one.
    with _on_device(q):
        return [KERNELS[launch.kernel][launch.grid](**launch.args) for launch in launches]


def _on_device(q: Tensor):
    if q.device.type == "cuda" and torch.cuda.current_device() != q.device.index:
        return torch.cuda.device(q.device)
    return contextlib.nullcontext()


def _launch_plan(plan: _Plan, tensors: dict[str, Any]) -> None:
    args = {**plan.args, **tensors}
    if plan.compiled is None:  # the interpreter: through the kernel's JIT, at the plan's config
        _jit(plan.kernel)[2][plan.grid](**args)
    else:
        plan.compiled[plan.grid](*args.values())


def _remember(cache: dict, key: tuple, plans: list[_Plan]) -> None:
    if len(cache) >= MAX_PLANS:
        cache.clear()
    cache[key] = tuple(plans)


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

    Inputs as `ackd_fast.ops.ack_attention` checks them. O is a dense map in q's memory format (`_like`), in q's
    dtype; given `out` and `lse` buffers are written instead.
    """
    _check_device(q)
    cached = LAUNCH_CACHE and out is None and lse is None
    if cached:
        key = _launch_key(q, keys, values, heads, scale)
        plans = _FORWARD_PLANS.get(key)
        if plans is not None:
            (plan,) = plans
            out, lse = plan.args["Out"].new(q.device), plan.args["LSE"].new(q.device)
            with _on_device(q):
                _launch_plan(plan, {"Out": out, "LSE": lse, "Q": q, "K": tuple(keys), "V": tuple(values)})
            return out, lse
    (out, lse), launches = forward_launches(q, keys, values, heads, scale, out, lse)
    compiled = _run(q, launches)
    if cached:
        _remember(_FORWARD_PLANS, key, [_plan(launch, c) for launch, c in zip(launches, compiled, strict=True)])
    return out, lse


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
    """Gradients of q and of every key and value map (each a dense map in its input's memory format) from
    grad_out (any strides), given the forward's out and base-2 lse."""
    _check_device(q)
    cached = LAUNCH_CACHE and dq is None and dkeys is None and dvalues is None
    if cached:
        key = _launch_key(q, keys, values, heads, scale, grad_out, out, lse)
        key += (torch.are_deterministic_algorithms_enabled(), FUSED_BACKWARD)
        plans = _BACKWARD_PLANS.get(key)
        if plans is not None:
            delta_plan, dkdv_plan, dq_plan = plans
            delta, dq = delta_plan.args["Delta"].new(q.device), dq_plan.args["DQ"].new(q.device)
            dkeys = [spec.new(q.device) for spec in dkdv_plan.args["DK"]]
            dvalues = [spec.new(q.device) for spec in dkdv_plan.args["DV"]]
            common = {"Q": q, "K": tuple(keys), "V": tuple(values), "DO": grad_out, "LSE": lse, "Delta": delta}
            fused = dkdv_plan.kernel == "dkdv_fused"
            dq_acc = dkdv_plan.args["DQ_ACC"].new(q.device).zero_() if fused else delta
            with _on_device(q):
                _launch_plan(delta_plan, {"Delta": delta, "Out": out, "DO": grad_out})
                _launch_plan(dkdv_plan, {**common, "DK": tuple(dkeys), "DV": tuple(dvalues), "DQ_ACC": dq_acc})
                if fused:
                    _launch_plan(dq_plan, {"DQ": dq, "DQ_ACC": dq_acc})
                else:
                    _launch_plan(dq_plan, {**common, "DQ": dq})
            return dq, dkeys, dvalues
    grads, launches = backward_launches(grad_out, q, keys, values, out, lse, heads, scale, dq, dkeys, dvalues)
    compiled = _run(q, launches)
    if cached:
        _remember(_BACKWARD_PLANS, key, [_plan(launch, c) for launch, c in zip(launches, compiled, strict=True)])
    return grads
