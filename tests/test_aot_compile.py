"""Ahead-of-time compilation of the ACK-A kernels for sm_80 and sm_90, with no GPU: every config the autotuner
may pick, for every dtype (fp16, bf16, fp32 as tf32 and as full fp32, which runs as tf32x3), the widest head dim
of each tile class (64 and 128: the narrower ones use the same tiles with smaller tiles in registers), both
layouts (contiguous, channels_last) and 4 sources (the most per-source values the dK/dV kernel picks between; the
forward and dQ kernels run the same loop once per source). A shipped config fails here when it spills registers
or uses a stack frame, passes the shared-memory limit, runs fp32 tl.dot on the FMA units instead of the tensor
cores, or loses the warp specialisation it asks for (`aot.problems`).

The compilation runs in a subprocess without TRITON_INTERPRET (this session may have set it for the other
tests, and interpreted kernels cannot be compiled). It is slow, and kept whole on purpose (it is the check that
the shipped configs compile cleanly for GPUs this machine does not have): about 300 distinct kernels (6 kernels
with the fused backward's two) at both head dims, ~7 minutes on a cold 2-core machine and ~1 minute when
Triton's cache (~/.triton/cache, which keeps the ptxas log with each kernel) is warm, most of it cuobjdump reading
each cubin; half of that at head dim 64 alone (HEAD_DIMS below);
`python -m ackd_fast.kernels.aot` compiles every head dim and source count. The table of compiled kernels and the
summary are printed into the test report.
"""

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

from ackd_fast.kernels import aot, configs

# Head dim 64 (every benchmark shape's) by default: a newcomer's cold `make test` compiles half the kernels (~3.5
# minutes instead of ~7); CI, whose Triton cache is warm, sets ACKD_AOT_HEAD_DIMS=64,128 for both tile classes.
HEAD_DIMS = tuple(int(d) for d in os.environ.get("ACKD_AOT_HEAD_DIMS", "64").split(","))
SOURCES = (4,)


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "ackd_fast.kernels.aot", "--json", "--sources", ",".join(map(str, SOURCES)),
               "--head-dims", ",".join(map(str, HEAD_DIMS))]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    # exit 1: some kernel has problems, which the tests below name
    assert result.returncode in (0, 1), result.stderr[-4000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    derived = ("shared_limit", "tile", "covers", "sass", "ctas_per_sm", "problems")
    reports = [
        aot.Report(
            **{k: v for k, v in r.items() if k not in derived},
            tile=configs.Tile(*r["tile"]),
            covers=tuple(tuple(case) for case in r["covers"]),
            sass=tuple(tuple(op) for op in r["sass"]),
        )
        for r in rows
    ]
    return reports, result.stderr.strip().splitlines()[-1]


def test_every_case_compiles_for_sm80_and_sm90(reports, capsys):
    reports, summary = reports
    with capsys.disabled():
        print("\n" + aot.table(reports) + "\n" + summary)
    compiled = {(r.kernel, r.block_d, r.tile, r.arch, *case) for r in reports for case in r.covers}
    for kernel, (dtype, (torch_dtype, _, precision)), head_dim, arch, layout, sources in itertools.product(
        configs.KERNELS, aot.DTYPES.items(), HEAD_DIMS, aot.ARCHS, aot.LAYOUTS, SOURCES
    ):
        size = torch.empty((), dtype=torch_dtype).element_size()
        block_d = configs.block_d(head_dim)
        for tile in configs.shipped_tiles(kernel, size, block_d, precision, arch):
            case = (kernel, block_d, tile, arch, dtype, layout, sources)
            assert case in compiled, f"not compiled: {case}"


def test_no_spills_and_shared_memory_within_limit(reports):
    for r in reports[0]:
        assert r.spill_bytes == 0 and r.stack_bytes == 0, f"{r}: spills {r.spill_bytes} bytes, stack {r.stack_bytes}"
        assert r.shared <= r.shared_limit, f"{r}: shared memory {r.shared} > {r.shared_limit}"


def test_tensor_cores_where_the_dtype_allows(reports):
    for r in reports[0]:
        if r.kernel in ("preprocess", "dq_convert"):  # a row-sum, a conversion: no matmul
            continue
        if r.dtype in ("fp16", "bf16"):  # sm_90: wgmma (a product with fewer than 64 rows may add mma.sync)
            assert (r.mma and not r.wgmma) if r.arch == 80 else r.wgmma, r
        else:  # tf32, and full fp32 as tf32x3: tensor cores too, never the FMA units (wgmma needs 64-row tiles)
            assert r.mma or r.wgmma, f"{r}: fp32 tl.dot compiled to FMA instructions"


def test_warp_specialisation_survives_where_asked(reports):
    for r in reports[0]:
        assert r.warp_specialized or not r.asks_warp_specialize, f"{r}: warp specialisation was dropped"


def test_no_shipped_kernel_has_problems(reports):
    """The one rule the three tests above spell out, as `aot.problems` applies it (what the CLI exits 1 on)."""
    bad = {f"{r.kernel} {r.dtype} D{r.block_d} {tuple(r.tile)} sm_{r.arch}": aot.problems(r) for r in reports[0]}
    assert not {k: v for k, v in bad.items() if v}


@pytest.mark.parametrize("kernel", configs.KERNELS)
def test_prune_keeps_the_candidates_of_each_launch(kernel, monkeypatch):
    """On a GPU the autotuner tries exactly the configs the AOT check compiled for the launch's dot class and
    BLOCK_D (the interpreter has one config, so the GPU lists are checked here)."""
    monkeypatch.setattr(configs, "INTERPRET", False)
    every_config = configs.autotune_configs(kernel)
    tensor_arg = {"preprocess": "DO", "dq_convert": "DQ"}.get(kernel, "Q")
    for dtype, precision in ((torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "tf32"),
                             (torch.float32, "tf32x3"), (torch.float32, "ieee")):  # fmt: skip
        for block_d in configs.BLOCK_D_SIZES:
            args = {tensor_arg: torch.empty(1, dtype=dtype), "BLOCK_D": block_d}
            if kernel not in ("preprocess", "dq_convert"):
                args["PRECISION"] = precision
            kept = configs.prune(kernel, tensor_arg)(every_config, args)  # a CPU tensor: Hopper's list
            want = configs.gpu_candidates(kernel, dtype.itemsize, block_d, precision, 90)
            assert sorted(configs._tile(c) for c in kept) == sorted(want), (dtype, precision, block_d)

    class Fp16OnAmpere:  # what prune reads of a CUDA tensor on an sm_80 GPU
        device = torch.device("cuda", 0)

        def element_size(self):
            return 2

    monkeypatch.setattr(configs, "_capability", lambda device: (8, 0))
    kept = configs.prune(kernel, tensor_arg)(every_config, {tensor_arg: Fp16OnAmpere(), "BLOCK_D": 64})
    want = configs.gpu_candidates(kernel, 2, 64, "ieee", 80)
    assert sorted(configs._tile(c) for c in kept) == sorted(want), "sm_80"
