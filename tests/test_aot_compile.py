"""Ahead-of-time compilation of every autotune config of the ACK-A kernels for sm_80 and sm_90, with no GPU:
fp16/bf16 use the tensor cores (mma on sm_80, wgmma on sm_90), nothing spills registers, shared memory fits.

The compilation runs in a subprocess without TRITON_INTERPRET (this session may have set it for the other
tests, and interpreted kernels cannot be compiled). The table of configs is printed into the test report.
"""

import json
import os
import subprocess
import sys

import pytest

from ackd_fast.kernels import aot, configs


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "ackd_fast.kernels.aot", "--json"], env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [
        aot.Report(**{**{k: v for k, v in r.items() if k != "shared_limit"}, "tile": configs.Tile(*r["tile"])})
        for r in rows
    ]


def test_every_config_compiles_for_sm80_and_sm90(reports, capsys):
    with capsys.disabled():
        print("\n" + aot.table(reports))
    compiled = {(r.kernel, r.dtype, r.block_d, r.tile, r.arch) for r in reports}
    for kernel in configs.KERNELS:
        for dtype, size in (("fp16", 2), ("bf16", 2), ("fp32", 4)):
            for block_d in aot.AOT_BLOCK_D:
                for tile in configs.gpu_candidates(kernel, size, block_d):
                    for arch in aot.ARCHS:
                        assert (kernel, dtype, block_d, tile, arch) in compiled


def test_no_spills_and_shared_memory_within_limit(reports):
    for r in reports:
        assert r.spill_bytes == 0, f"{r}: spills {r.spill_bytes} bytes"
        assert r.shared <= r.shared_limit, f"{r}: shared memory {r.shared} > {r.shared_limit}"


def test_half_precision_uses_tensor_cores(reports):
    for r in reports:
        if r.kernel == "preprocess":  # a row-sum, no matmul
            continue
        if r.dtype in ("fp16", "bf16"):
            assert (r.mma, r.wgmma) == ((True, False) if r.arch == 80 else (False, True)), r
        else:  # fp32 compiled as tf32: tensor cores too (wgmma needs 64-row tiles)
            assert r.mma or r.wgmma, r
