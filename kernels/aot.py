"""Ahead-of-time compilation of the ACK-A kernels for GPUs that are not here (sm_80, sm_90).

What compiles is what a launch would run. `ack_attention.forward_launches` and `backward_launches` build the
launches from example maps on the meta device, the kernels' heuristics add their flags (EVEN_M, ...), and
Triton's own binder specialises the arguments for the target exactly as a launch does (dtypes, 16-byte alignment
of pointers and ints, unit strides as constants). The examples span what a launch can pass: fp16, bf16 and fp32
(as tf32 and as full fp32, which runs as tf32x3: `_precision` follows torch's fp32 matmul precision), head dims
16, 32, 64, 128 (every padded BLOCK_D), 1 to 4 sources, contiguous and channels_last maps; each with every
autotune config `configs.gpu_candidates` lets through, for sm_80 and sm_90. Cases that specialise to the same
kernel compile once; the number of sources and the layout each change the kernel (a loop per source; the unit
stride moves from the token to the channel dimension). The example maps have token counts divisible by 128 and
head dims equal to their padded width, as at the paper's sizes: the full-block kernels (EVEN_*), which are the
ones timed; odd sizes specialise to masked kernels, which are not compiled here.

Each compilation reports what decides whether it runs well: shared memory, tensor-core instructions in the
PTX, registers, spills and stack from the -v log of the ptxas run that built the cubin (a stage hook keeps that
log in the kernel's metadata, which Triton caches with it), resident blocks per SM, whether a requested warp
specialisation survived (TTIR asks, TTGIR has it), the MMA waits that serialise, and static SASS counts.
`problems` says what disqualifies a kernel from shipping; the compilations run in a process pool.
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
from ackd_fast.kernels import ack_attention, configs, sass

# Dynamic shared memory a block may use (bytes): sm_80 (A100) 163 KB, sm_90 (H100) 227 KB; per SM 164 / 228 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
# SASS opcodes counted per kernel (static): tensor-core MMA (HGMMA on sm_90, HMMA), fp32 FMA, exp2, selects, and
# local-memory loads/stores (spills or stack arrays).
SASS_OPS = ("HGMMA", "HMMA", "FFMA", "MUFU.EX2", "FSEL", "LDL", "STL")
ARCHS = configs.ARCHS
# name: (dtype, torch.backends.cuda.matmul.fp32_precision, the tl.dot precision the launchers pick under it).
DTYPES = {
    "fp16": (torch.float16, "ieee", "ieee"),
    "bf16": (torch.bfloat16, "ieee", "ieee"),
    "tf32": (torch.float32, "tf32", "tf32"),
    "fp32": (torch.float32, "ieee", "tf32x3"),
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
    stack_bytes: int = 0  # ptxas's stack frame: local memory other than spills (an array indexed at run time)
    asks_warp_specialize: bool = False  # a loop asks for it (tl.range(..., warp_specialize=True): TTIR attribute)
    warp_specialized: bool = False  # the TTGIR holds ttg.warp_specialize (Triton drops the request silently)
    mma_waits_all: int = 0  # warp_group_dot_wait {pendings = 0}: each one serialises MMA and the softmax (A2)
    sass: tuple[tuple[str, int], ...] = ()  # static counts of the instructions in SASS_OPS (cuobjdump -sass)

    @property
    def shared_limit(self) -> int:
        return SHARED_LIMIT[self.arch]

    @property
    def ctas_per_sm(self) -> int:
        """Resident blocks per multiprocessor by registers and shared memory (64 K registers, allocated per warp
        in units of 256; the shared-memory limit per SM) on sm_80 and sm_90."""
        threads = 32 * self.tile.num_warps
        per_warp = -(-self.registers * 32 // 256) * 256
        by_registers = 65536 // (per_warp * self.tile.num_warps) if self.registers else 32
        by_shared = SHARED_PER_SM[self.arch] // max(self.shared + 1024, 1)  # + the 1 KB the runtime reserves
        return max(0, min(by_registers, by_shared, 2048 // threads, 32))

    @property
    def tensor_cores(self) -> str:
        return "wgmma" if self.wgmma else "mma" if self.mma else "-"


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
        (out, lse), launches = ack_attention.forward_launches(q, keys, values, HEADS, tma=False)
        launches += ack_attention.forward_launches(q, keys, values, HEADS, tma=True)[1]  # where TMA can run
        backward = [  # both backward paths: two kernels, and the fused one (dkdv_fused, dq_convert)
            launch
            for fused in (False, True)
            for launch in ack_attention.backward_launches(
                feature_map(QUERY_HW), q, keys, values, out, lse, HEADS, fused=fused
            )[1]
        ]
    (launch,) = {launch.kernel: launch for launch in (*launches, *backward) if launch.kernel == kernel}.values()
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
    kwargs = {**_example_args(case.kernel, case.dtype, case.head_dim, case.layout, case.sources), **meta}
    # the flags the kernel's heuristics derive from the arguments and the config (EVEN_M, ...), as at a launch
    kwargs.update({name: rule(kwargs) for name, rule in ack_attention.HEURISTICS[case.kernel].items()})
    kwargs.update(num_warps=case.tile.num_warps, num_stages=case.tile.num_stages)
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
    ttgir = compiled.asm["ttgir"]
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
        stack_bytes=max((int(n) for n in re.findall(r"(\d+) bytes stack frame", log)), default=0),
        asks_warp_specialize="tt.warp_specialize" in compiled.asm["ttir"],
        warp_specialized="ttg.warp_specialize" in ttgir,
        mma_waits_all=len(re.findall(r"warp_group_dot_wait[^\n]*pendings = 0", ttgir)),
        sass=_sass_counts(compiled.asm["cubin"]),
    )


def _sass_counts(cubin: bytes) -> tuple[tuple[str, int], ...]:
    """Static counts of SASS_OPS in the cubin; () when cuobjdump cannot run."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            ops = sass.opcodes(sass.dump(f.name))
        except (OSError, subprocess.CalledProcessError):
            return ()
    return tuple((op, sass.count(ops, op)) for op in SASS_OPS)


def cases(
    archs: tuple[int, ...] = ARCHS,
    source_counts: tuple[int, ...] = SOURCE_COUNTS,
    head_dims: tuple[int, ...] = HEAD_DIMS,
    dtypes: tuple[str, ...] = tuple(DTYPES),
) -> list[Case]:
    """Every launch of the examples with every config the autotuner may pick for it, for every arch (or the
    subset named)."""
    out = []
    for kernel in configs.KERNELS:
        for dtype in dtypes:
            torch_dtype, _, precision = DTYPES[dtype]
            element_size = torch.empty((), dtype=torch_dtype).element_size()
            for head_dim in head_dims:
                for arch in archs:
                    block_d = configs.block_d(head_dim)
                    for tile in configs.shipped_tiles(kernel, element_size, block_d, precision, arch):
                        for layout in LAYOUTS:
                            out.extend(Case(kernel, dtype, head_dim, layout, n, tile, arch) for n in source_counts)
    return out


def distinct(all_cases: list[Case]) -> dict[Case, tuple[tuple[str, str, int], ...]]:
    """One case per distinct compiled kernel, with the (dtype, layout, sources) cases it stands for."""
    groups: dict[tuple, list[Case]] = {}
    for case in all_cases:
        groups.setdefault(_compiled_kernel_key(case), []).append(case)
    return {group[0]: tuple(dict.fromkeys((c.dtype, c.layout, c.sources) for c in group)) for group in groups.values()}


def _compile_one(item: tuple[Case, tuple[tuple[str, str, int], ...]]) -> Report:
    return compile_case(*item)


def compile_all(workers: int | None = None, **subset) -> tuple[list[Report], int]:
    """(a report per distinct compiled kernel, the number of cases they cover): every config of every kernel
    that a launch of the examples may pick, for sm_80 and sm_90 (`subset`: `cases`' filters)."""
    all_cases = cases(**subset)
    return compile_cases(list(distinct(all_cases).items()), workers), len(all_cases)


def compile_cases(todo: list[tuple[Case, tuple]], workers: int | None = None) -> list[Report]:
    """A report per (case, covers) item, compiled in a process pool (longest first)."""
    todo = sorted(todo, key=lambda item: -_cost(item[0]))
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return [_compile_one(item) for item in todo]
    # spawn: a fresh interpreter per worker (forking a process that has started threads is unsafe).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_one, todo))


def _cost(case: Case) -> int:
    """A rough compile-time order: the bigger the tile and the more passes, the longer."""
    return case.tile.block_m * max(case.tile.block_n, 1) * case.head_dim * case.tile.num_stages


def problems(report: Report) -> list[str]:
    """What disqualifies a compiled kernel from shipping: spills or a stack frame (local memory), shared memory
    over the limit, a matmul kernel without tensor-core instructions (fp32 on the FMA units), or a warp
    specialisation it asked for and lost."""
    found = []
    if report.spill_bytes or report.stack_bytes:
        found.append(f"local memory: {report.spill_bytes} bytes of spills, {report.stack_bytes} bytes of stack")
    if report.shared > report.shared_limit:
        found.append(f"shared memory {report.shared} > {report.shared_limit}")
    if report.kernel not in ("preprocess", "dq_convert") and not (report.mma or report.wgmma):
        found.append("tl.dot compiled to FMA instructions, no tensor-core MMA")
    if report.asks_warp_specialize and not report.warp_specialized:
        found.append("asks for warp specialisation, which the compiler dropped")
    return found


def table(reports: list[Report]) -> str:
    """One row per compiled kernel; `covers` says which layouts and source counts it serves. CTA: resident blocks
    per SM by registers and shared memory; WS: warp specialisation asked/got; wait0: MMA waits on all pending
    (serialising); the SASS columns are static instruction counts (MMA = HGMMA + HMMA)."""
    head = (
        f"{'kernel':<10} {'dtype':<5} {'D':>3} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'covers':<16} "
        f"{'arch':>5} {'smem KB':>7} {'TC':<5} {'regs':>4} {'spill':>5} {'stack':>5} {'CTA':>3} {'WS':>3} "
        f"{'wait0':>5} {'MMA':>4} {'FFMA':>5} {'EX2':>4} {'FSEL':>4}  problems"
    )
    lines = [head, "-" * len(head)]
    kernels, dtypes = list(configs.KERNELS), list(DTYPES)
    order = sorted(reports, key=lambda r: (kernels.index(r.kernel), dtypes.index(r.dtype), r.block_d, r.tile,
                                           r.covers, r.arch))  # fmt: skip
    for r in order:
        counts = dict(r.sass)
        ws = ("y" if r.asks_warp_specialize else "n") + ("y" if r.warp_specialized else "n")

        def count(op, counts=counts):
            return str(counts[op]) if op in counts else "?"

        mma = str(counts["HGMMA"] + counts["HMMA"]) if counts else "?"
        lines.append(
            f"{r.kernel:<10} {r.dtype:<5} {r.block_d:>3} {r.tile.block_m:>4} {r.tile.block_n:>4} "
            f"{r.tile.num_warps:>5} {r.tile.num_stages:>6} {_describe(r):<16} {'sm_' + str(r.arch):>5} "
            f"{r.shared / 1024:7.1f} {r.tensor_cores:<5} {r.registers:>4} {r.spill_bytes:>5} {r.stack_bytes:>5} "
            f"{r.ctas_per_sm:>3} {ws:>3} {r.mma_waits_all:>5} {mma:>4} {count('FFMA'):>5} {count('MUFU.EX2'):>4} "
            f"{count('FSEL'):>4}  {'; '.join(problems(r))}"
        )
    return "\n".join(lines)


def _describe(report: Report) -> str:
    """'contig 1-4' style: each layout with its source counts, and the other dtypes the kernel serves."""
    parts = []
    for layout in dict.fromkeys(layout for _, layout, _ in report.covers):
        counts = sorted({n for _, lay, n in report.covers if lay == layout})
        span = f"{counts[0]}-{counts[-1]}" if counts == list(range(counts[0], counts[-1] + 1)) else str(counts)
        span = str(counts[0]) if len(counts) == 1 else span
        parts.append(f"{'cl' if layout == 'channels_last' else 'contig'} {span}")
    others = [d for d in dict.fromkeys(d for d, _, _ in report.covers) if d != report.dtype]
    return ", ".join(parts) + (f" +{'+'.join(others)}" if others else "")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main() -> None:
    """`python -m ackd_fast.kernels.aot [--json] [--workers N] [--archs 90] [--sources 3] [--head-dims 64]
    [--dtypes bf16,fp32]`: compile every distinct kernel (or the subset named), print the table (or JSON lines)
    and a summary; exit 1 when a kernel has `problems`."""
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
    parser.add_argument("--archs", type=_ints, default=ARCHS, help="e.g. 90 or 80,90 (default: both)")
    parser.add_argument("--sources", type=_ints, default=SOURCE_COUNTS, help="source counts (default: 1,2,3,4)")
    parser.add_argument("--head-dims", type=_ints, default=HEAD_DIMS, help="default: 16,32,64,128")
    parser.add_argument("--dtypes", type=lambda t: tuple(t.split(",")), default=tuple(DTYPES), help=",".join(DTYPES))
    args = parser.parse_args()
    start = time.perf_counter()
    subset = {"archs": args.archs, "source_counts": args.sources, "head_dims": args.head_dims, "dtypes": args.dtypes}
    reports, n_cases = compile_all(args.workers, **subset)
    bad = [r for r in reports if problems(r)]
    summary = (
        f"{n_cases} cases (kernel x dtype x head dim x config x layout x sources x arch) compiled as "
        f"{len(reports)} distinct kernels in {time.perf_counter() - start:.0f} s; "
        f"spills in {sum(r.spill_bytes > 0 for r in reports)}; problems in {len(bad)}"
    )
    if args.json:
        for r in reports:
            row = {**dataclasses.asdict(r), "tile": list(r.tile), "shared_limit": r.shared_limit}
            print(json.dumps({**row, "ctas_per_sm": r.ctas_per_sm, "problems": problems(r)}))
    else:
        print(table(reports))
    print(summary, file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
