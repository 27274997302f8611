"""Ahead-of-time compilation of the ACK-A kernels for GPUs that are not here (sm_80, sm_90).

What compiles is what a launch would run. `ack_attention.forward_launches` and `backward_launches` build the
launches from example maps on the meta device, and Triton's own binder specialises their arguments for the
target exactly as a launch does (dtypes, 16-byte alignment of pointers and ints, unit strides as constants).
The examples span what a launch can pass: fp16, bf16 and fp32 (as tf32 and as full fp32: `_precision`
follows torch's fp32 matmul precision), head dims 16, 32, 64, 128 (every padded BLOCK_D), 1 to 4 sources,
contiguous and channels_last maps; each with every autotune config `configs.gpu_candidates` lets through,
for sm_80 and sm_90. Cases that specialise to the same kernel compile once: the number of sources never
changes it (the kernels take MAX_SOURCES slots), the layout does (its unit stride moves from the token to the
channel dimension). The example maps have token counts and widths divisible by 16, as at the paper's sizes;
odd sizes specialise to kernels with fewer aligned accesses, which are not compiled here.

Each compilation reports what decides whether it runs well: shared memory, tensor-core instructions in the
PTX, and registers and spills from the -v log of the ptxas run that built the cubin (a stage hook keeps that
log in the kernel's metadata, which Triton caches with it). The compilations run in a process pool.
"""

from __future__ import annotations

import contextlib
import functools
import io
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from ackd_fast.checks import MAX_SOURCES
from ackd_fast.kernels import ack_attention, configs

# Dynamic shared memory a block may use (bytes): sm_80 (A100) 163 KB, sm_90 (H100) 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = (80, 90)
# name: (dtype, torch.backends.cuda.matmul.fp32_precision, the tl.dot precision the launchers pick under it).
DTYPES = {
    "fp16": (torch.float16, "ieee", "ieee"),
    "bf16": (torch.bfloat16, "ieee", "ieee"),
    "tf32": (torch.float32, "tf32", "tf32"),
    "fp32": (torch.float32, "ieee", "ieee"),
}
HEAD_DIMS = configs.BLOCK_D_SIZES  # one head dim per padded width: each pads to itself
LAYOUTS = ("contiguous", "channels_last")
SOURCE_COUNTS = tuple(range(1, MAX_SOURCES + 1))
HEADS = 2
QUERY_HW = (32, 32)
SOURCES_HW = ((32, 32), (16, 16), (64, 64), (48, 16))  # token counts and widths divisible by 16


@dataclass(frozen=True)
class Report:
    kernel: str
    dtype: str  # a DTYPES key
    arch: int
    block_d: int
    tile: configs.Tile
    covers: tuple[tuple[str, str, int], ...]  # the (dtype, layout, number of sources) cases it serves
    shared: int
    mma: bool  # mma.sync (Ampere-style tensor cores)
    wgmma: bool  # wgmma (Hopper warpgroup tensor cores)
    registers: int
    spill_bytes: int

    @property
    def shared_limit(self) -> int:
        return SHARED_LIMIT[self.arch]


@dataclass(frozen=True)
class Case:
    """One kernel launch of the examples: what it launches, with which config, for which target."""

    kernel: str
    dtype: str
    head_dim: int
    layout: str
    sources: int
    tile: configs.Tile
    arch: int


def _jit_fn(kernel: str) -> triton.JITFunction:
    fn = ack_attention.KERNELS[kernel]
    while not isinstance(fn, triton.JITFunction):  # unwrap the autotuner
        fn = fn.fn
    return fn


@contextlib.contextmanager
def _matmul_precision(dtype: str):
    """torch's fp32 matmul precision set as the DTYPES entry says (the launchers read it), with the new API."""
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = DTYPES[dtype][1]
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved


@functools.cache
def _example_args(kernel: str, dtype: str, head_dim: int, layout: str, sources: int) -> dict:
    """The arguments the launchers give `kernel` for example maps (on the meta device) of this case."""
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def feature_map(hw):
        x = torch.empty(1, HEADS * head_dim, *hw, dtype=DTYPES[dtype][0], device="meta")
        return x.to(memory_format=memory_format)

    q = feature_map(QUERY_HW)
    keys = [feature_map(hw) for hw in SOURCES_HW[:sources]]
    values = [feature_map(hw) for hw in SOURCES_HW[:sources]]
    with _matmul_precision(dtype):
        (out, lse), launches = ack_attention.forward_launches(q, keys, values, HEADS)
        _, backward = ack_attention.backward_launches(feature_map(QUERY_HW), q, keys, values, out, lse, HEADS)
    (launch,) = (launch for launch in (*launches, *backward) if launch.kernel == kernel)
    if launch.args.get("PRECISION", DTYPES[dtype][2]) != DTYPES[dtype][2]:
        raise RuntimeError(
            f"the launchers picked tl.dot precision {launch.args['PRECISION']} for {dtype}: update DTYPES"
        )
    return launch.args


@functools.cache
def _backend(arch: int):
    return make_backend(GPUTarget("cuda", arch, 32))


@functools.cache
def _binder(kernel: str, arch: int):
    fn = _jit_fn(kernel)
    return create_function_from_signature(fn.signature, fn.params, _backend(arch))


def _specialise(case: Case):
    """(options, signature, constexprs, attrs) of `case` as Triton's launcher computes them (runtime/jit.py:
    the binder, then JITFunction._pack_args)."""
    fn = _jit_fn(case.kernel)
    backend = _backend(case.arch)
    meta = {"BLOCK_M": case.tile.block_m} if case.tile.block_n == 0 else {
        "BLOCK_M": case.tile.block_m, "BLOCK_N": case.tile.block_n,
    }  # fmt: skip
    kwargs = {
        **_example_args(case.kernel, case.dtype, case.head_dim, case.layout, case.sources),
        **meta,
        "num_warps": case.tile.num_warps,
        "num_stages": case.tile.num_stages,
    }
    binder = _binder(case.kernel, case.arch)
    bound_args, specialization, options = binder(**kwargs)
    return fn._pack_args(backend, kwargs, bound_args, specialization, options)


def _compiled_kernel_key(case: Case) -> tuple:
    """Equal for cases that compile to the same kernel."""
    options, signature, constexprs, attrs = _specialise(case)
    return (
        case.kernel, case.arch, options.num_warps, options.num_stages,
        repr(signature), repr(sorted(constexprs.items())), repr(sorted(attrs.items())),
    )  # fmt: skip


def _keep_ptxas_log(*args):
    """A Triton stage hook: called with no arguments it names itself for the cache key; otherwise it wraps the
    cubin stage so that the log of its `ptxas -v` run is kept in the kernel's metadata (and cache)."""
    if not args:
        return "ackd_fast.aot.ptxas_log", "1"
    _backend, stages, _options, _language, _capability = args
    make_cubin = stages["cubin"]

    def make_cubin_keeping_log(src, metadata):
        log = io.StringIO()
        saved = knobs.nvidia.dump_ptxas_log
        knobs.nvidia.dump_ptxas_log = True  # Triton prints the log of its ptxas run
        try:
            with contextlib.redirect_stdout(log):
                cubin = make_cubin(src, metadata)
        finally:
            knobs.nvidia.dump_ptxas_log = saved
        metadata["ptxas_log"] = log.getvalue()
        return cubin

    stages["cubin"] = make_cubin_keeping_log


def compile_case(case: Case, covers: tuple[tuple[str, str, int], ...] = ()) -> Report:
    """Compiles the kernel of `case` for its arch and reports on it."""
    options, signature, constexprs, attrs = _specialise(case)
    src = ASTSource(fn=_jit_fn(case.kernel), signature=signature, constexprs=constexprs, attrs=attrs)
    saved_hook = knobs.runtime.add_stages_inspection_hook
    knobs.runtime.add_stages_inspection_hook = _keep_ptxas_log
    try:
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", case.arch, 32),
            options={"num_warps": options.num_warps, "num_stages": options.num_stages},
        )
    finally:
        knobs.runtime.add_stages_inspection_hook = saved_hook
    ptx, log = compiled.asm["ptx"], compiled.metadata.ptxas_log
    return Report(
        kernel=case.kernel,
        dtype=case.dtype,
        arch=case.arch,
        block_d=configs.block_d(case.head_dim),
        tile=case.tile,
        covers=covers or ((case.dtype, case.layout, case.sources),),
        shared=compiled.metadata.shared,
        mma=re.search(r"\bmma\.sync", ptx) is not None,
        wgmma=re.search(r"\bwgmma\.mma_async", ptx) is not None,
        registers=max(int(n) for n in re.findall(r"Used (\d+) registers", log)),
        spill_bytes=sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)),
    )


def cases() -> list[Case]:
    """Every launch of the examples with every config the autotuner may pick for it, for every arch."""
    out = []
    for kernel in configs.KERNELS:
        for dtype, (torch_dtype, _, precision) in DTYPES.items():
            element_size = torch.empty((), dtype=torch_dtype).element_size()
            for head_dim in HEAD_DIMS:
                for tile in configs.gpu_candidates(kernel, element_size, configs.block_d(head_dim), precision):
                    for layout in LAYOUTS:
                        for sources in SOURCE_COUNTS:
                            out.extend(Case(kernel, dtype, head_dim, layout, sources, tile, a) for a in ARCHS)
    return out


def distinct(all_cases: list[Case]) -> dict[Case, tuple[tuple[str, str, int], ...]]:
    """One case per distinct compiled kernel, with the (dtype, layout, sources) cases it stands for."""
    groups: dict[tuple, list[Case]] = {}
    for case in all_cases:
        groups.setdefault(_compiled_kernel_key(case), []).append(case)
    return {group[0]: tuple(dict.fromkeys((c.dtype, c.layout, c.sources) for c in group)) for group in groups.values()}


def _compile_one(item: tuple[Case, tuple[tuple[str, str, int], ...]]) -> Report:
    return compile_case(*item)


def compile_all(workers: int | None = None) -> tuple[list[Report], int]:
    """(a report per distinct compiled kernel, the number of cases they cover): every config of every kernel
    that a launch of the examples may pick, for sm_80 and sm_90."""
    all_cases = cases()
    todo = sorted(distinct(all_cases).items(), key=lambda item: -_cost(item[0]))  # longest first
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return [_compile_one(item) for item in todo], len(all_cases)
    # spawn: a fresh interpreter per worker (forking a process that has started threads is unsafe).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_one, todo)), len(all_cases)


def _cost(case: Case) -> int:
    """A rough compile-time order: the bigger the tile and the more passes, the longer."""
    return case.tile.block_m * max(case.tile.block_n, 1) * case.head_dim * case.tile.num_stages


def table(reports: list[Report]) -> str:
    """One row per compiled kernel and arch pair; `covers` says which layouts and source counts it serves."""
    head = f"{'kernel':<10} {'dtype':<5} {'D':>3} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'covers':<18} | " + (
        " | ".join(f"sm_{a}: {'smem KB':>7} {'TC':<5} {'regs':>4} {'spill':>5}" for a in ARCHS)
    )
    lines = [head, "-" * len(head)]
    by_key: dict[tuple, dict[int, Report]] = {}
    for r in reports:
        by_key.setdefault((r.kernel, r.dtype, r.block_d, r.tile, r.covers), {})[r.arch] = r
    kernels, dtypes = list(configs.KERNELS), list(DTYPES)
    for (kernel, dtype, block_d, tile, _), per_arch in sorted(
        by_key.items(), key=lambda kv: (kernels.index(kv[0][0]), dtypes.index(kv[0][1]), kv[0][2], kv[0][4])
    ):
        cells = []
        for a in ARCHS:
            r = per_arch.get(a)
            if r is None:  # the other arch's kernel serves other cases: it has its own row
                cells.append(f"sm_{a}: {'':<24}")
                continue
            tc = "wgmma" if r.wgmma else "mma" if r.mma else "-"
            cells.append(f"sm_{a}: {r.shared / 1024:7.1f} {tc:<5} {r.registers:>4} {r.spill_bytes:>5}")
        lines.append(
            f"{kernel:<10} {dtype:<5} {block_d:>3} {tile.block_m:>4} {tile.block_n:>4} {tile.num_warps:>5} "
            f"{tile.num_stages:>6} {_describe(next(iter(per_arch.values()))):<18} | " + " | ".join(cells)
        )
    return "\n".join(lines)


def _describe(report: Report) -> str:
    """'contig 1-4' style: each layout with its source counts, and the other dtypes the kernel serves."""
    parts = []
    for layout in dict.fromkeys(layout for _, layout, _ in report.covers):
        counts = sorted({n for _, lay, n in report.covers if lay == layout})
        span = f"{counts[0]}-{counts[-1]}" if counts == list(range(counts[0], counts[-1] + 1)) else str(counts)
        parts.append(f"{'cl' if layout == 'channels_last' else 'contig'} {span}")
    others = [d for d in dict.fromkeys(d for d, _, _ in report.covers) if d != report.dtype]
    return ", ".join(parts) + (f" +{'+'.join(others)}" if others else "")


def main() -> None:
    """`python -m ackd_fast.kernels.aot [--json] [--workers N]`: compile every distinct kernel, print the table
    (or JSON lines) and a summary."""
    import argparse
    import dataclasses
    import json
    import sys
    import time

    if configs.INTERPRET:
        sys.exit("unset TRITON_INTERPRET: ahead-of-time compilation needs the real Triton compiler")
    parser = argparse.ArgumentParser(prog="python -m ackd_fast.kernels.aot")
    parser.add_argument("--json", action="store_true", help="one JSON object per compiled kernel")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: one per CPU)")
    args = parser.parse_args()
    start = time.perf_counter()
    reports, n_cases = compile_all(args.workers)
    summary = (
        f"{n_cases} cases (kernel x dtype x head dim x config x layout x sources x arch) compiled as "
        f"{len(reports)} distinct kernels in {time.perf_counter() - start:.0f} s; "
        f"spills in {sum(r.spill_bytes > 0 for r in reports)}"
    )
    if args.json:
        for r in reports:
            print(json.dumps({**dataclasses.asdict(r), "tile": list(r.tile), "shared_limit": r.shared_limit}))
    else:
        print(table(reports))
    print(summary, file=sys.stderr)


if __name__ == "__main__":
    main()
