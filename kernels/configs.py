"""Autotune configs of the ACK-A kernels: the one list the launcher tunes over and the AOT check compiles.

A config is (BLOCK_M, BLOCK_N, num_warps, num_stages): BLOCK_M query tokens by BLOCK_N key tokens per step.
Which configs a launch may use depends on how tl.dot computes (16-bit or tf32 inputs on the tensor cores, or
full fp32 on the FMA units) and on the padded head dim BLOCK_D, because the tiles held in shared memory and in
registers grow with both; `candidates` applies that rule, and the ahead-of-time check (kernels/aot.py,
tests/test_aot_compile.py) proves for sm_80 and sm_90 that every config it lets through compiles without
spills and within the shared-memory limit.

Under TRITON_INTERPRET=1 there is a single small config: the autotuner cannot time configs without a GPU.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import triton

from ackd_fast.kernels import tuning

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

KERNELS = ("forward", "forward_tma", "preprocess", "dkdv", "dq", "dkdv_fused", "dq_convert")


class Tile(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Hopper/Ampere choices by (kernel, dot class, BLOCK_D class). Dot classes: "16bit" (fp16/bf16), "tf32" (fp32 on
# the tensor cores, twice the shared memory and registers of 16-bit tiles, hence smaller tiles and shallower
# pipelines), "tf32x3" (full-precision fp32, torch's "highest" matmul precision, as three tf32 tensor-core passes
# with fp32 accuracy: three times tf32's registers for the split operands, hence the smallest tensor-core tiles) and
# "fp32" (tl.dot on the FMA units, ~5 TFLOP/s on an H100: no launch picks it, gpu_tune times it as a baseline).
# BLOCK_D classes: "small" for BLOCK_D <= 64, "large" for 128. Each shipped tile compiles for its arch without
# register spills and with tensor-core instructions (kernels/aot.py, tests/test_aot_compile.py). _TILES are
# Hopper's (sm_90 and later); _SM80_TILES replace the entries that spill on Ampere's mma.sync path (its
# accumulators and split tf32x3 operands live in registers where wgmma reads shared memory).
_TILES: dict[tuple[str, str, str], tuple[Tile, ...]] = {
    ("forward", "16bit", "small"): (Tile(128, 64, 8, 3), Tile(128, 128, 8, 3), Tile(64, 64, 4, 3)),
    ("forward", "16bit", "large"): (Tile(128, 32, 8, 3), Tile(128, 64, 8, 3), Tile(64, 64, 4, 2)),
    ("forward", "tf32", "small"): (Tile(128, 64, 8, 2), Tile(64, 64, 4, 2)),
    ("forward", "tf32", "large"): (Tile(64, 64, 8, 2), Tile(128, 32, 8, 1)),
    ("forward", "tf32x3", "small"): (Tile(64, 32, 4, 2),),
    ("forward", "tf32x3", "large"): (Tile(16, 32, 4, 1),),
    ("forward", "fp32", "small"): (Tile(16, 32, 4, 1),),
    ("forward", "fp32", "large"): (Tile(16, 32, 4, 1),),
    # The forward through tensor descriptors (TMA), 16-bit inputs on Hopper only (gpu_candidates): 4 warps, the one
    # count at which Triton keeps the warp specialisation its key loop asks for.
    ("forward_tma", "16bit", "small"): (Tile(128, 64, 4, 2), Tile(128, 128, 4, 2)),
    ("forward_tma", "16bit", "large"): (Tile(64, 64, 4, 2),),
    ("dkdv", "16bit", "small"): (Tile(32, 128, 8, 2), Tile(64, 64, 8, 2), Tile(32, 64, 8, 2)),
    ("dkdv", "16bit", "large"): (Tile(64, 64, 8, 2), Tile(32, 64, 8, 2), Tile(16, 128, 8, 2)),
    ("dkdv", "tf32", "small"): (Tile(16, 64, 4, 2), Tile(32, 32, 4, 2)),
    ("dkdv", "tf32", "large"): (Tile(32, 64, 8, 2), Tile(16, 64, 8, 1), Tile(32, 32, 8, 2)),
    ("dkdv", "tf32x3", "small"): (Tile(16, 64, 4, 2), Tile(32, 64, 8, 2)),
    ("dkdv", "tf32x3", "large"): (Tile(16, 16, 8, 1),),
    ("dkdv", "fp32", "small"): (Tile(16, 32, 8, 1),),
    ("dkdv", "fp32", "large"): (Tile(16, 32, 8, 1),),
    ("dq", "16bit", "small"): (Tile(128, 64, 8, 2), Tile(64, 32, 4, 2)),
    ("dq", "16bit", "large"): (Tile(128, 32, 8, 2), Tile(64, 64, 8, 2), Tile(64, 32, 4, 2)),
    ("dq", "tf32", "small"): (Tile(64, 32, 4, 2), Tile(32, 32, 4, 2)),
    ("dq", "tf32", "large"): (Tile(32, 32, 4, 2),),
    ("dq", "tf32x3", "small"): (Tile(64, 32, 4, 2),),
    ("dq", "tf32x3", "large"): (Tile(16, 16, 4, 1),),
    ("dq", "fp32", "small"): (Tile(16, 16, 4, 1),),
    ("dq", "fp32", "large"): (Tile(16, 16, 4, 1),),
    # The fused backward (dK, dV and dQ's share in one kernel): dkdv's tiles that hold the extra (BLOCK_M, d) product.
    ("dkdv_fused", "16bit", "small"): (Tile(32, 128, 8, 2), Tile(64, 64, 8, 2), Tile(32, 64, 8, 2)),
    ("dkdv_fused", "16bit", "large"): (Tile(32, 64, 8, 2), Tile(16, 128, 8, 2)),
    ("dkdv_fused", "tf32", "small"): (Tile(16, 64, 4, 2),),
    ("dkdv_fused", "tf32", "large"): (Tile(16, 64, 8, 1),),
    ("dkdv_fused", "tf32x3", "small"): (Tile(16, 64, 8, 2), Tile(16, 32, 8, 2)),
    ("dkdv_fused", "tf32x3", "large"): (Tile(16, 16, 8, 1),),
    ("dkdv_fused", "fp32", "small"): (Tile(16, 32, 8, 1),),
    ("dkdv_fused", "fp32", "large"): (Tile(16, 32, 8, 1),),
    # A row-sum without tl.dot: the dot class only sets the element size.
    ("preprocess", "16bit", "small"): (Tile(128, 0, 4, 1),),
    ("preprocess", "16bit", "large"): (Tile(128, 0, 4, 1),),
    ("preprocess", "tf32", "small"): (Tile(64, 0, 4, 1),),
    ("preprocess", "tf32", "large"): (Tile(64, 0, 4, 1),),
    ("preprocess", "tf32x3", "small"): (Tile(64, 0, 4, 1),),
    ("preprocess", "tf32x3", "large"): (Tile(64, 0, 4, 1),),
    ("preprocess", "fp32", "small"): (Tile(64, 0, 4, 1),),
    ("preprocess", "fp32", "large"): (Tile(64, 0, 4, 1),),
}
# dq_convert (the fused backward's fp32 dQ sum scaled into q's dtype and layout): elementwise, 32 rows of fp32
# at head dim 128 (64 spill into a stack frame when the store is transposed for channels_last).
_TILES.update({("dq_convert", c, d): tiles for (k, c, d), tiles in list(_TILES.items()) if k == "preprocess"})
_TILES.update({("dq_convert", c, "large"): (Tile(32, 0, 4, 1),) for c in ("tf32", "tf32x3", "fp32")})

_SM80_TILES: dict[tuple[str, str, str], tuple[Tile, ...]] = {
    ("forward", "tf32x3", "small"): (Tile(32, 32, 4, 2),),
    ("dkdv", "16bit", "small"): (Tile(32, 128, 8, 2), Tile(32, 64, 8, 2)),
    ("dkdv", "16bit", "large"): (Tile(64, 64, 8, 2), Tile(32, 64, 8, 2)),
    ("dkdv", "tf32x3", "small"): (Tile(16, 32, 4, 2),),
    ("dq", "16bit", "small"): (Tile(64, 32, 4, 2),),
    ("dq", "tf32x3", "small"): (Tile(16, 32, 4, 2),),
    ("dkdv_fused", "16bit", "small"): (Tile(32, 128, 8, 2), Tile(32, 64, 8, 2)),
}
ARCHS = (80, 90)  # the tile lists: Ampere (sm_80, sm_86, sm_89) and Hopper (sm_90 and later)


def _grid(block_m, block_n, warps, stages) -> tuple[Tile, ...]:
    return tuple(Tile(m, n, w, s) for m in block_m for n in block_n for w in warps for s in stages)


# The wide space benchmarks/gpu_tune.py searches for 16-bit inputs at head dims <= 64 (the paper's d = 64), by
# (kernel, dot class). `python -m ackd_fast.kernels.tuning --prune` keeps the tiles that compile cleanly for an
# arch (kernels/tuned/sm<arch>.json "candidates"); only measured winners reach the autotuner.
SEARCH_SPACE: dict[tuple[str, str], tuple[Tile, ...]] = {
    ("forward", "16bit"): _grid((64, 128), (64, 128), (4, 8), (2, 3, 4, 5)),
    ("forward_tma", "16bit"): _grid((64, 128), (64, 128), (4,), (2, 3, 4)),
    ("dkdv", "16bit"): _grid((16, 32, 64), (64, 128), (4, 8), (2, 3, 4)),
    ("dkdv_fused", "16bit"): _grid((16, 32, 64), (64, 128), (4, 8), (2, 3, 4)),
    ("dq", "16bit"): _grid((64, 128), (32, 64), (4, 8), (2, 3, 4)),
}


def arch_of(capability: tuple[int, int]) -> int:
    """The tile list of a GPU of this compute capability: 90 from Hopper on, else 80."""
    return 90 if tuple(capability) >= (9, 0) else 80


# Interpreter: tl.dot needs every dim >= 16; 32 keeps the program count (each one costs milliseconds) low
# while still splitting the odd token counts of the tests into several blocks.
_INTERPRET_TILE = Tile(32, 32, 1, 1)

BLOCK_D_SIZES = (16, 32, 64, 128)


def block_d(head_dim: int) -> int:
    """The head dim padded to the tile width: a power of 2 (masked on load and store), at least 16 for tl.dot."""
    return max(16, triton.next_power_of_2(head_dim))


# tl.dot's input_precision: fp32 inputs take "tf32" or "tf32x3" (fp32-accurate) on a GPU, "ieee" (the FMA units)
# in the interpreter and in gpu_tune's baseline; 16-bit inputs always "ieee" (it is their only mode).
PRECISIONS = ("ieee", "tf32", "tf32x3")


def dot_class(element_size: int, precision: str) -> str:
    """How tl.dot computes for inputs of `element_size` bytes at `precision`: "16bit", "tf32", "tf32x3" or
    "fp32" (the FMA units)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if element_size == 2:
        return "16bit"
    return "fp32" if precision == "ieee" else precision


def candidates(kernel: str, element_size: int, block_d: int, precision: str, arch: int = 90) -> tuple[Tile, ...]:
    """The tiles `kernel` may use for inputs of `element_size` bytes, padded head dim `block_d` and tl.dot
    `precision` on `arch` (the single interpreter tile under TRITON_INTERPRET=1)."""
    return (_INTERPRET_TILE,) if INTERPRET else gpu_candidates(kernel, element_size, block_d, precision, arch)


def block_d_class(block_d: int) -> str:
    if block_d not in BLOCK_D_SIZES:
        raise ValueError(f"block_d must be one of {BLOCK_D_SIZES}, got {block_d}")
    return "small" if block_d <= 64 else "large"


def gpu_candidates(
    kernel: str, element_size: int, block_d: int, precision: str, arch: int = 90, bucket: int | None = None
) -> tuple[Tile, ...]:
    """The tiles a launch on a GPU of tile list `arch` (`arch_of`) may use: the measured winner of its size class
    `bucket` where kernels/tuned/sm<arch>.json has one (the autotuner then times nothing), else the default list."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    key = (kernel, dot_class(element_size, precision), block_d_class(block_d))
    if kernel == "forward_tma" and (arch == 80 or key not in _TILES):
        return ()  # no TMA kernel for this class or arch (`forward_launches` then takes the pointer kernel)
    if bucket is not None:
        winner = tuning.load(arch).winners.get((*key, bucket))
        if winner is not None:
            return (Tile(*winner),)
    return _SM80_TILES.get(key, _TILES[key]) if arch == 80 else _TILES[key]


def shipped_tiles(kernel: str, element_size: int, block_d: int, precision: str, arch: int) -> tuple[Tile, ...]:
    """Every tile a launch on `arch` may run: the default list and the measured winners of every size class
    (what the ahead-of-time check compiles)."""
    key = (kernel, dot_class(element_size, precision), block_d_class(block_d))
    if not gpu_candidates(kernel, element_size, block_d, precision, arch):
        return ()
    winners = [Tile(*t) for (*k, _bucket), t in tuning.load(arch).winners.items() if tuple(k) == key]
    return tuple(dict.fromkeys((*gpu_candidates(kernel, element_size, block_d, precision, arch), *winners)))


def _config(tile: Tile) -> triton.Config:
    meta = {"BLOCK_M": tile.block_m} if tile.block_n == 0 else {"BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n}
    return triton.Config(meta, num_warps=tile.num_warps, num_stages=tile.num_stages)


def autotune_configs(kernel: str) -> list[triton.Config]:
    """Every distinct config of `kernel` over all dtypes and head dims; `prune` narrows it per launch."""
    tiles = dict.fromkeys(t for table in (_TILES, _SM80_TILES) for (k, _, _), ts in table.items() if k == kernel
                          for t in ts)  # fmt: skip
    winners = (Tile(*t) for arch in ARCHS for (k, *_), t in tuning.load(arch).winners.items() if k == kernel)
    tiles.update(dict.fromkeys(winners))
    return [_config(t) for t in ((_INTERPRET_TILE,) if INTERPRET else tiles)]


def _tile(config: triton.Config) -> Tile:
    return Tile(config.kwargs["BLOCK_M"], config.kwargs.get("BLOCK_N", 0), config.num_warps, config.num_stages)


def prune(kernel: str, tensor_arg: str):
    """An `early_config_prune` for triton.autotune: keeps the configs `candidates` allows for this launch
    (`tensor_arg` names an input whose element size decides, with the PRECISION argument where there is one)."""

    def early_config_prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        x = args[tensor_arg]
        arch = arch_of(_capability(x.device)) if x.device.type == "cuda" else 90
        precision = args.get("PRECISION", "ieee")
        if INTERPRET:
            allowed = {_INTERPRET_TILE}
        else:
            allowed = set(gpu_candidates(kernel, x.element_size(), args["BLOCK_D"], precision, arch,
                                         args.get("tune_bucket")))  # fmt: skip
        return [c for c in configs if _tile(c) in allowed]

    return early_config_prune


@functools.cache
def _capability(device) -> tuple[int, int]:
    import torch

    return torch.cuda.get_device_capability(device)
