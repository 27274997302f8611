"""Ahead-of-time compilation of the ACK-A kernels for sm_80 and sm_90, with no GPU: every config the autotuner
may pick, for every dtype (fp16, bf16, fp32 as tf32 and as full fp32), padded head dim (16, 32, 64, 128),
layout (contiguous, channels_last) and number of sources (1-4); nothing spills registers, shared memory fits,
fp16/bf16/tf32 use the tensor cores (mma on sm_80, wgmma on sm_90 where the tile allows).

The compilation runs in a subprocess without TRITON_INTERPRET (this session may have set it for the other
tests, and interpreted kernels cannot be compiled). The table of compiled kernels and the summary (cases,
distinct kernels, time) are printed into the test report.
"""

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

from ackd_fast.kernels import aot, configs


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "ackd_fast.kernels.aot", "--json"], env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    reports = [
        aot.Report(
            **{k: v for k, v in r.items() if k not in ("shared_limit", "tile", "covers")},
            tile=configs.Tile(*r["tile"]),
            covers=tuple(tuple(case) for case in r["covers"]),
        )
        for r in rows
    ]
    return reports, result.stderr.strip().splitlines()[-1]


def test_every_case_compiles_for_sm80_and_sm90(reports, capsys):
    reports, summary = reports
    with capsys.disabled():
        print("\n" + aot.table(reports) + "\n" + summary)
    compiled = {(r.kernel, r.block_d, r.tile, r.arch, *case) for r in reports for case in r.covers}
    for kernel, (dtype, (torch_dtype, _, precision)), block_d, arch, layout, sources in itertools.product(
        configs.KERNELS, aot.DTYPES.items(), configs.BLOCK_D_SIZES, aot.ARCHS, aot.LAYOUTS, range(1, 5)
    ):
        size = torch.empty((), dtype=torch_dtype).element_size()
        for tile in configs.gpu_candidates(kernel, size, block_d, precision):
            case = (kernel, block_d, tile, arch, dtype, layout, sources)
            assert case in compiled, f"not compiled: {case}"


def test_the_number_of_sources_does_not_change_the_kernel(reports):
    """The kernels take 4 source slots: one compilation serves 1 to 4 sources."""
    for r in reports[0]:
        for dtype, layout, _ in r.covers:
            assert sorted(n for d, lay, n in r.covers if (d, lay) == (dtype, layout)) == [1, 2, 3, 4], r


def test_no_spills_and_shared_memory_within_limit(reports):
    for r in reports[0]:
        assert r.spill_bytes == 0, f"{r}: spills {r.spill_bytes} bytes"
        assert r.shared <= r.shared_limit, f"{r}: shared memory {r.shared} > {r.shared_limit}"


def test_tensor_cores_where_the_dtype_allows(reports):
    for r in reports[0]:
        if r.kernel == "preprocess":  # a row-sum, no matmul
            continue
        if r.dtype in ("fp16", "bf16"):
            assert (r.mma, r.wgmma) == ((True, False) if r.arch == 80 else (False, True)), r
        elif r.dtype == "tf32":  # tensor cores too (wgmma needs 64-row tiles)
            assert r.mma or r.wgmma, r
        else:  # full fp32 ("highest" matmul precision): the FMA units
            assert not (r.mma or r.wgmma), r


@pytest.mark.parametrize("kernel", configs.KERNELS)
def test_prune_keeps_the_candidates_of_each_launch(kernel, monkeypatch):
    """On a GPU the autotuner tries exactly the configs the AOT check compiled for the launch's dot class and
    BLOCK_D (the interpreter has one config, so the GPU lists are checked here)."""
    monkeypatch.setattr(configs, "INTERPRET", False)
    every_config = configs.autotune_configs(kernel)
    tensor_arg = "DO" if kernel == "preprocess" else "Q"
    for dtype, precision in ((torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "tf32"),
                             (torch.float32, "ieee")):  # fmt: skip
        for block_d in configs.BLOCK_D_SIZES:
            args = {tensor_arg: torch.empty(1, dtype=dtype), "BLOCK_D": block_d}
            if kernel != "preprocess":
                args["PRECISION"] = precision
            kept = configs.prune(kernel, tensor_arg)(every_config, args)
            want = configs.gpu_candidates(kernel, dtype.itemsize, block_d, precision)
            assert sorted(configs._tile(c) for c in kept) == sorted(want), (dtype, precision, block_d)
