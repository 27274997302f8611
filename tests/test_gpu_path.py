"""The GPU path's decisions, checked on any machine (issue 23): backend choice under torch.compile for a CUDA device,
the Triton launch limits, the capability rules of amp="auto" and backend="auto", the suite's time budget."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from ackd_fast.ops import dispatch

ROOT = Path(__file__).resolve().parents[1]


def test_backend_choice_for_cuda_compiles_without_graph_breaks(monkeypatch):
    """The modules ask for their backend on every forward; for a CUDA device that asked the extension for its CUDA
    version through an op returning an int, which dynamo cannot trace (fullgraph raised, --compile split the
    refiners)."""
    monkeypatch.setitem(dispatch._CUDA_CAPABILITIES, 0, (9, 0))  # an H100, asked before compiling

    def choose(x):
        fusion = dispatch.resolve_backend("ack_fusion", "auto", torch.device("cuda:0"), dispatch.compute_dtype(x))
        attention = dispatch.resolve_backend(
            "ack_attention", "auto", torch.device("cuda:0"), dispatch.compute_dtype(x), head_dim=32, sources=2
        )
        return x + 1 if (fusion, attention) == ("extension", "triton") else x - 1

    torch._dynamo.reset()
    x = torch.zeros(3)
    want = choose(x)
    got = torch.compile(choose, fullgraph=True, backend="eager")(x)
    assert torch.equal(got, want)


@pytest.mark.parametrize(("capability", "declined"), [((7, 5), True), ((7, 0), True), ((8, 0), False), ((9, 0), False)])
def test_triton_and_bf16_need_ampere(capability, declined):
    from ackd_fast.train import auto_amp

    reason = dispatch.triton_capability_reason(capability)
    assert (reason is not None) == declined
    if declined:
        assert "sm_80" in reason and f"sm_{capability[0]}{capability[1]}" in reason
    assert auto_amp("cuda", capability) == ("none" if declined else "bf16")
    assert dispatch._unavailable("triton", "cuda", torch.float16, 32, 2, capability) == reason
    assert auto_amp("cpu", None) == "none"


def test_triton_launch_limits_are_checked_before_launch():
    from ackd_fast.kernels import ack_attention as kernels

    q = torch.empty(2, 8, 3, 3, device="meta")
    keys = [torch.empty(2, 8, 4, 4, device="meta")]
    kernels._check_limits(q, keys, keys, heads=2)
    with pytest.raises(ValueError, match=r"q: batch x heads = 40000 x 2 .* grid limit of 65535"):
        kernels._check_limits(torch.empty(40000, 8, 3, 3, device="meta"), keys * 1, keys, heads=2)
    # a view whose per-sample strides span past int32 (a slice of a huge map) is refused, naming it
    huge = torch.empty(1, 2, 2, 2, device="meta").as_strided((1, 2, 2, 2), (2**32, 2**31, 2, 1))
    with pytest.raises(ValueError, match=r"keys\[0\]: one sample .* int32"):
        kernels._check_limits(q[:1], [huge], [huge], heads=1)
    with pytest.raises(ValueError, match=r"values\[0\]"):
        kernels._check_limits(q[:1], [keys[0][:1]], [huge], heads=1)


def test_tune_bucket_changes_only_with_the_size_class():
    from ackd_fast.kernels.ack_attention import _tune_bucket

    assert _tune_bucket(4096, 12288, 16) == _tune_bucket(4000, 9000, 9)
    assert _tune_bucket(4096, 12288, 16) != _tune_bucket(4097, 12288, 16)
    assert _tune_bucket(64, 64, 4) != _tune_bucket(64, 64, 8)


def test_gpu_suite_dry_run_caps_fit_the_budget():
    """The suite's phase caps sum to at most its budget (so no phase is skipped for want of time on a cold
    machine), in the order of value, and --quick fits 4 minutes."""
    out = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--plan"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout  # fmt: skip
    quick = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--plan", "--quick"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=True).stdout  # fmt: skip
    for plan, budget in ((out, 570), (quick, 240)):
        phases = [line.split() for line in plan.splitlines() if line.startswith("phase ")]
        caps = [int(p[2]) for p in phases]
        assert sum(caps) <= budget - 30, plan  # 30 s kept for the report
        names = [p[1] for p in phases]
        assert names[:3] == ["build", "backends", "tile_tests"], names
    assert "bench_ack_attention" in out and out.index("bench_ack_attention") < out.index("bench_train_step")
    small = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--plan"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, check=True, env={**os.environ, "ACKD_SUITE_BUDGET_S": "300"}).stdout  # fmt: skip
    assert sum(int(line.split()[2]) for line in small.splitlines() if line.startswith("phase ")) <= 270


def test_nccl_binds_the_ranks_gpu_before_the_process_group(monkeypatch):
    """torchrun on GPUs: set_device first, then init_process_group with device_id and the short rendezvous timeout,
    then the collectives' timeout, long enough for rank 0's evaluation (the others wait in a collective meanwhile)."""
    from ackd_fast import train as train_lib
    from ackd_fast.assembly import Config

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(train_lib.dist, "init_process_group", lambda *a, **k: calls.append(("init", a, k)))
    monkeypatch.setattr(train_lib.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(train_lib.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(train_lib.dist, "set_timeout", lambda t: calls.append(("set_timeout", t)))
    launch = train_lib.Launch(rank=1, world=2, local_world=2, address="localhost:29500")
    rt = train_lib.setup_runtime(Config(device="cuda", tf32=False), launch)
    timedelta = __import__("datetime").timedelta
    assert calls[0] == ("set_device", "cuda:1")
    assert calls[1][0] == "init" and calls[1][1] == ("nccl",)
    assert calls[1][2]["device_id"] == torch.device("cuda:1")
    assert calls[1][2]["timeout"] == timedelta(seconds=train_lib.RENDEZVOUS_TIMEOUT_S)
    assert calls[2] == ("set_timeout", train_lib.COLLECTIVE_TIMEOUT)
    assert timedelta(hours=1) <= train_lib.COLLECTIVE_TIMEOUT
    assert rt.rank == 1 and rt.world == 2 and rt.device == torch.device("cuda:1")
