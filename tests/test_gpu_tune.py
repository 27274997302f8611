"""The committed tuning files (kernels/tuning.py, kernels/tuned/) and what reads them: the autotuner runs a
measured winner alone, ACKAttention(backend="auto") follows the measured backend rules, a file never holds an
unmeasured time, and benchmarks/gpu_tune.py's plan (its dry run is in .ci/run; here its pieces)."""

import json
from pathlib import Path

import pytest
import torch

from ackd_fast import ops
from ackd_fast.kernels import configs, tuning
from ackd_fast.ops import dispatch


def _file(**lists):
    return {"format": tuning.FORMAT, "arch": 90, "candidates": [], "winners": [], "backends": [], **lists}


WINNER = {"kernel": "forward", "dot_class": "16bit", "block_d_class": "small", "bucket": 7, "shape": "paper",
          "tile": [128, 128, 4, 3], "ms": 0.41, "measured": True, "device": "NVIDIA H100"}  # fmt: skip
RULE = {"dtype": "bfloat16", "mode": "forward", "block_d_class": "small", "bucket": tuning.tune_bucket(4096, 12288, 4),
        "shape": "student", "winner": "sdpa", "triton_ms": 0.3, "sdpa_ms": 0.25, "measured": True,
        "device": "NVIDIA H100"}  # fmt: skip


def test_the_committed_files_parse_and_hold_no_unmeasured_time():
    for arch in configs.ARCHS:
        tuned = tuning.load(arch)
        if tuned.path is None:
            continue
        data = json.loads(Path(tuned.path).read_text())
        for entry in (*data["winners"], *data["backends"]):
            assert entry["measured"] is True and entry["device"], entry
        # the candidates are the search space's tiles that compiled cleanly: a subset, never invented tiles
        for c in data["candidates"]:
            space = set(configs.SEARCH_SPACE[c["kernel"], c["dot_class"]])
            assert {configs.Tile(*t) for t in c["tiles"]} <= space, c


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        ({"winners": [{**WINNER, "measured": False}]}, "measured"),
        ({"winners": [{k: v for k, v in WINNER.items() if k != "ms"}]}, "measured time 'ms'"),
        ({"backends": [{**RULE, "device": None}]}, "measured"),
        ({"backends": [{**RULE, "winner": "reference"}]}, "winner 'reference'"),
    ],
)
def test_an_unmeasured_entry_is_refused(lists, message):
    with pytest.raises(ValueError, match=message):
        tuning.parse(_file(**lists), 90)


def test_a_measured_winner_is_the_only_candidate_of_its_size_class(monkeypatch):
    tuned = tuning.parse(_file(winners=[WINNER]), 90)
    monkeypatch.setattr(tuning, "load", lambda arch: tuned)
    assert configs.gpu_candidates("forward", 2, 64, "ieee", 90, bucket=7) == (configs.Tile(128, 128, 4, 3),)
    assert configs.gpu_candidates("forward", 2, 64, "ieee", 90, bucket=8) == configs._TILES["forward", "16bit", "small"]
    assert configs.Tile(128, 128, 4, 3) in configs.shipped_tiles("forward", 2, 64, "ieee", 90)


def test_auto_follows_the_measured_backend_rule(monkeypatch):
    tuned = tuning.parse(_file(backends=[RULE]), 90)
    monkeypatch.setattr(tuning, "load", lambda arch: tuned)
    monkeypatch.setattr(dispatch, "cuda_capability", lambda device: (9, 0))
    monkeypatch.setattr(dispatch, "TRITON_IMPORTABLE", True)
    student = {"head_dim": 64, "sources": 3, "shape": (4096, 12288, 4)}
    assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.bfloat16, **student) == "sdpa"
    # training is another class (no rule: Triton, as without measurements), and so is another size
    assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.bfloat16, **student, training=True) == "triton"
    paper = {**student, "shape": (4096, 12288, 16)}
    assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.bfloat16, **paper) == "triton"
    # a named backend is never overruled
    assert ops.resolve_backend("ack_attention", "triton", "cuda", torch.bfloat16, **student) == "triton"
    assert ops.backends()["triton"]["tuned"]["sm90"]["backend_rules"] == 1


def test_gpu_tune_phases_and_records(tmp_path):
    """The plan's budget shares, and the record file a cut-off run leaves: one JSON object per line, flushed."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import gpu_tune

    assert list(gpu_tune.PHASES)[:3] == ["env", "compile", "correct"]
    run = gpu_tune.Run(tmp_path, budget_s=450, dry=True)
    assert abs(sum(run.shares.values()) - 450) < 1e-6
    run.begin("env")
    run.record(event="x", value=1)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()  # readable before the run ends
    assert [json.loads(line)["event"] for line in lines] == ["phase", "x"]
