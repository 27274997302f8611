"""Ahead-of-time compilation of the ACK-A kernels for a GPU that is not here (sm_80, sm_90).

`compile_kernel` builds one kernel for one autotune config the way a launch on contiguous NCHW maps of the
paper's shapes specialises it (16-byte aligned pointers, strides and token counts divisible by 16, unit token
stride), with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`, and reports what decides
whether it runs well: shared memory, tensor-core instructions in the PTX and ptxas' register spills (ptxas is
re-run with -v on the PTX, since Triton reads spills only when it loads a cubin onto a device).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ackd_fast.kernels import ack_attention, configs

# Dynamic shared memory a block may use (bytes): sm_80 (A100) 163 KB, sm_90 (H100) 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TRITON_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_D16 = [["tt.divisibility", 16]]


@dataclass(frozen=True)
class Report:
    kernel: str
    dtype: str
    arch: int
    block_d: int
    tile: configs.Tile
    shared: int
    mma: bool  # mma.sync (Ampere-style tensor cores)
    wgmma: bool  # wgmma (Hopper warpgroup tensor cores)
    registers: int
    spill_bytes: int

    @property
    def shared_limit(self) -> int:
        return SHARED_LIMIT[self.arch]


def _jit_fn(kernel: str) -> triton.JITFunction:
    fn = {
        "forward": ack_attention._forward_kernel,
        "preprocess": ack_attention._delta_kernel,
        "dkdv": ack_attention._dkdv_kernel,
        "dq": ack_attention._dq_kernel,
    }[kernel]
    while not isinstance(fn, triton.JITFunction):  # unwrap the autotuner
        fn = fn.fn
    return fn


def _specialise(fn: triton.JITFunction, dtype: torch.dtype, num_sources: int, args: dict):
    """signature, constexprs and attrs for ASTSource from `args`: name -> value, where a value is "ptr", "i32",
    "fp32", a constexpr (anything else), or a tuple of those; 1 becomes a constexpr and "i32" is marked
    divisible by 16 (as the JIT does for such arguments), except names ending in "width"."""
    ptr = f"*{TRITON_TYPE[dtype]}"
    signature, constexprs, attrs = {}, {}, {}

    def visit(path, name, value):
        if isinstance(value, tuple):
            return tuple(visit((*path, i), name, v) for i, v in enumerate(value))
        if value == "ptr" or value == "ptr32":
            attrs[path] = _D16
            return "*fp32" if value == "ptr32" else ptr
        if value == "i32":
            if not name.endswith("width"):
                attrs[path] = _D16
            return "i32"
        if value == "fp32":
            return "fp32"
        constexprs[path] = value
        return "constexpr"

    for i, name in enumerate(fn.arg_names):
        signature[name] = visit((i,), name, args[name])
    return signature, constexprs, attrs


def _arguments(kernel: str, dtype: torch.dtype, block_d: int, tile: configs.Tile, num_sources: int) -> dict:
    strides = ("i32", "i32", "i32", 1)  # contiguous NCHW: unit token stride
    per_source = {
        "K": ("ptr",) * num_sources,
        "V": ("ptr",) * num_sources,
        "k_strides": (strides,) * num_sources,
        "v_strides": (strides,) * num_sources,
        "kv_tokens": ("i32",) * num_sources,
        "kv_widths": ("i32",) * num_sources,
    }
    common = {
        "q_strides": strides, "do_strides": strides, "q_tokens": "i32", "q_width": "i32", "heads": "i32",
        "head_dim": "i32", "qk_scale": "fp32", "sm_scale": "fp32",
        "Q_FLAT": True, "KV_FLAT": True, "DO_FLAT": True, "NUM_SOURCES": num_sources,
        "PRECISION": "tf32" if dtype == torch.float32 else "ieee", "BLOCK_D": block_d, "BLOCK_M": tile.block_m,
        "BLOCK_N": tile.block_n,
    }  # fmt: skip
    if kernel == "forward":
        return {**common, **per_source, "Out": "ptr", "LSE": "ptr32", "Q": "ptr"}
    if kernel == "preprocess":
        return {**common, "Delta": "ptr32", "Out": "ptr", "DO": "ptr"}
    if kernel == "dq":
        return {**common, **per_source, "DQ": "ptr", "Q": "ptr", "DO": "ptr", "LSE": "ptr32", "Delta": "ptr32"}
    one_source = {
        "K": "ptr", "V": "ptr", "k_strides": strides, "v_strides": strides, "kv_tokens": "i32", "kv_width": "i32",
    }  # fmt: skip
    return {
        **common, **one_source,
        "DK": "ptr", "DV": "ptr", "Q": "ptr", "DO": "ptr", "LSE": "ptr32", "Delta": "ptr32",
    }  # fmt: skip


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes stored + loaded) from ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [
            get_ptxas(arch).path,
            "-v",
            f"--gpu-name={sm_arch_from_capability(arch)}",
            str(src),
            "-o",
            str(src) + ".o",
        ]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    registers = max(int(n) for n in re.findall(r"Used (\d+) registers", log))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return registers, spills


def compile_kernel(
    kernel: str, dtype: torch.dtype, arch: int, block_d: int, tile: configs.Tile, num_sources: int = 3
) -> Report:
    fn = _jit_fn(kernel)
    args = _arguments(kernel, dtype, block_d, tile, num_sources)
    signature, constexprs, attrs = _specialise(fn, dtype, num_sources, args)
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    registers, spills = _ptxas_usage(ptx, arch)
    return Report(
        kernel=kernel,
        dtype=TRITON_TYPE[dtype],
        arch=arch,
        block_d=block_d,
        tile=tile,
        shared=compiled.metadata.shared,
        mma=re.search(r"\bmma\.sync", ptx) is not None,
        wgmma=re.search(r"\bwgmma\.mma_async", ptx) is not None,
        registers=registers,
        spill_bytes=spills,
    )


ARCHS = (80, 90)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The widest tiles of each config class (configs.gpu_candidates): BLOCK_D 64 covers head dims 33-64, 128 covers 65-128;
# narrower head dims use the same tiles with less data.
AOT_BLOCK_D = (64, 128)


def compile_all() -> list[Report]:
    """Every config of every kernel that a launch of fp16, bf16 or fp32 may pick, for sm_80 and sm_90."""
    reports = []
    for kernel in configs.KERNELS:
        for dtype in DTYPES:
            for block_d in AOT_BLOCK_D:
                for tile in configs.gpu_candidates(kernel, torch.empty((), dtype=dtype).element_size(), block_d):
                    for arch in ARCHS:
                        reports.append(compile_kernel(kernel, dtype, arch, block_d, tile))
    return reports


def table(reports: list[Report]) -> str:
    head = f"{'kernel':<10} {'dtype':<5} {'D':>3} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} | " + " | ".join(
        f"sm_{a}: {'smem KB':>7} {'TC':<5} {'regs':>4} {'spill':>5}" for a in ARCHS
    )
    lines = [head, "-" * len(head)]
    by_key: dict[tuple, dict[int, Report]] = {}
    for r in reports:
        by_key.setdefault((r.kernel, r.dtype, r.block_d, r.tile), {})[r.arch] = r
    for (kernel, dtype, block_d, tile), per_arch in by_key.items():
        cells = []
        for a in ARCHS:
            r = per_arch[a]
            tc = "wgmma" if r.wgmma else "mma" if r.mma else "-"
            cells.append(f"sm_{a}: {r.shared / 1024:7.1f} {tc:<5} {r.registers:>4} {r.spill_bytes:>5}")
        lines.append(
            f"{kernel:<10} {dtype:<5} {block_d:>3} {tile.block_m:>4} {tile.block_n:>4} {tile.num_warps:>5} "
            f"{tile.num_stages:>6} | " + " | ".join(cells)
        )
    return "\n".join(lines)


def main() -> None:
    """`python -m ackd_fast.kernels.aot [--json]`: compile everything, print the table (or JSON lines)."""
    import dataclasses
    import json
    import sys

    if configs.INTERPRET:
        sys.exit("unset TRITON_INTERPRET: ahead-of-time compilation needs the real Triton compiler")
    reports = compile_all()
    if "--json" in sys.argv[1:]:
        for r in reports:
            print(json.dumps({**dataclasses.asdict(r), "tile": list(r.tile), "shared_limit": r.shared_limit}))
    else:
        print(table(reports))


if __name__ == "__main__":
    main()
