"""ackd-fast study end to end at the tiny preset: the report's statistics, and a half-finished study resumed."""

import json
import math
import statistics
from dataclasses import replace

import pytest

from ackd_fast import study
from ackd_fast.study import StudyConfig, paired, run_study


def test_paired_difference_and_its_interval():
    a, b = {0: 10.0, 1: 11.0, 2: 12.5, 3: 9.0}, {0: 9.5, 1: 11.2, 2: 12.0, 3: 8.0, 7: 3.0}
    d = paired(a, b)
    diffs = [0.5, -0.2, 0.5, 1.0]
    assert d["n"] == 4 and d["mean"] == pytest.approx(statistics.fmean(diffs))
    # t(0.975, 3) = 3.182
    half = 3.1824463 * statistics.stdev(diffs) / math.sqrt(4)
    assert d["ci95"] == pytest.approx([d["mean"] - half, d["mean"] + half], rel=1e-6)
    assert paired({0: 1.0}, {0: 2.0}) is None  # one seed: no interval


def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    calls = []
    real_run = study._run

    def counting_run(cfg, splits):
        calls.append(cfg.out_dir)
        return real_run(cfg, splits)

    monkeypatch.setattr(study, "_run", counting_run)
    out = tmp_path / "study"
    sc = StudyConfig(out_dir=str(out), preset="tiny", arms="ackd,plain,ackd-chained", main_seeds=1)
    first = run_study(sc, ["--preset", "tiny"])
    assert set(first["arms"]) == {"ackd", "plain", "ackd-chained"}
    assert len(calls) == 1 + 3  # the teacher, then each arm's seed 0
    # half-finished: a second seed for the main arms, one of whose runs was cut after its first checkpoint
    cut = out / "plain" / "seed1"
    from ackd_fast.train import train

    def cut_run(cfg, splits):
        calls.append(cfg.out_dir)
        if cfg.out_dir == str(cut) and not (cut / "ckpt.pt").exists():
            train(replace(cfg, stop_at=1))
            raise KeyboardInterrupt("stopped")
        return real_run(cfg, splits)

    monkeypatch.setattr(study, "_run", cut_run)
    with pytest.raises(KeyboardInterrupt):
        run_study(replace(sc, main_seeds=2), [])
    assert (out / "ackd" / "seed1" / "score.json").is_file() and not (cut / "score.json").exists()
    calls.clear()
    result = run_study(replace(sc, main_seeds=2), [])
    # finished runs are skipped (their score.json stays), the cut one resumes from its checkpoint
    finished = [c for c in calls if (tmp_path / c / "score.json").exists()]
    assert str(cut) in calls
    assert json.loads((cut / "score.json").read_text())["step"] == study.PRESETS["tiny"].student_steps
    assert finished
    for arm in ("ackd", "plain"):
        assert result["arms"][arm]["seeds"] == [0, 1]
    assert result["arms"]["ackd-chained"]["seeds"] == [0]
    vs = result["vs_plain"]
    assert vs["ackd"]["val"]["n"] == 2 and vs["ackd-chained"]["val"] is None
    report = (out / "results.md").read_text()
    assert "| ackd | 2 |" in report and "verdict:" in report and "command:" in report
    assert (out / "study.png").stat().st_size > 1000
    diag = result["arms"]["ackd"]["diagnostics_seed0"]
    assert "tap1/share0" in diag["last"]["diag"]


def test_bad_study_config():
    with pytest.raises(ValueError, match="preset"):
        run_study(StudyConfig(preset="huge"))
    with pytest.raises(ValueError, match="arms"):
        run_study(StudyConfig(preset="tiny", arms="ackd,magic"))
