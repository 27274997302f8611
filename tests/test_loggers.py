"""Opt-in loggers (issue 32, 3): TensorBoard's event files read back, W&B in offline mode, trackio through a stand-in
module (its package pins pillow<13, which this environment's pillow 13 breaks), a missing package in one line, and
the metrics.csv view of log.jsonl."""

import csv
import json
import sys
import types

import numpy as np
import pytest
from tiny_runs import CROP, SIZE, assert_one_line_error
from tiny_runs import records as read_records

COMMON = ["--load-size", SIZE, "--crop-size", CROP, "--workers", 0, "--batch-size", 2, "--no-progress", "--device",
          "cpu"]  # fmt: skip
TINY = [*COMMON, "--ngf", 4, "--ndf", 8]


def _teacher(run_cli, root, out, *flags):
    code, _, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 4,
                            "--log-every", 1, "--sample-every", 2, "--eval-every", 2, "--ckpt-every", 4, *flags])
    assert code == 0, err  # fmt: skip
    return out


def test_tensorboard_gets_losses_scores_samples_and_settings(tmp_path, root, run_cli):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _teacher(run_cli, root, tmp_path / "run", "--logger", "tensorboard")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    records = read_records(run)
    losses = [r for r in records if "lr" in r]
    assert [e.step for e in events.Scalars("train/g_loss")] == [r["step"] for r in losses] == [1, 2, 3, 4]
    assert np.allclose([e.value for e in events.Scalars("train/g_loss")], [r["g_loss"] for r in losses])
    scores = [r for r in records if "eval" in r]
    assert [e.step for e in events.Scalars("eval_test/psnr")] == [2, 4]
    assert np.allclose([e.value for e in events.Scalars("eval_test/psnr")], [r["psnr"] for r in scores])
    assert [e.step for e in events.Images("samples")] == [2, 4]
    assert "settings/text_summary" in tags["tensors"]
    (settings,) = events.Tensors("settings/text_summary")
    assert '"crop_size": 32' in settings.tensor_proto.string_val[0].decode()


def test_metrics_csv_is_log_jsonl_as_a_table(tmp_path, root, run_cli):
    run = _teacher(run_cli, root, tmp_path / "run")
    records = read_records(run)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert int(row["step"]) == record["step"]
        assert row["kind"] == ("eval" if "eval" in record else "train")
        for key, value in record.items():
            if key not in ("step", "eval"):
                assert float(row[key]) == pytest.approx(value), key
        if "eval" in record:
            assert row["split"] == record["eval"] and row["g_loss"] == ""
    assert not (run / "tensorboard").exists() and not (run / "wandb").exists()  # no logger unless named


def test_wandb_runs_offline_when_not_logged_in(tmp_path, root, run_cli, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    from ackd_fast.loggers import wandb_logged_in

    assert not wandb_logged_in()
    run = _teacher(run_cli, root, tmp_path / "run", "--logger", "wandb")
    (offline,) = (run / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing left this machine
    records = [_wandb_record(chunk) for chunk in _leveldb_log(offline.read_bytes())]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]  # fmt: skip
    losses = [r for r in read_records(run) if "lr" in r]
    assert [h["_step"] for h in history] == [1, 2, 3, 4]
    assert [h["train/g_loss"] for h in history] == pytest.approx([r["g_loss"] for r in losses])
    assert [h["_step"] for h in history if "eval_test/psnr" in h] == [2, 4]
    assert [h["samples/_type"] for h in history if "samples/_type" in h] == ["image-file"] * 2
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {i.key: i.value_json for i in started.config.update}
    assert json.loads(config["crop_size"]) == CROP


def _leveldb_log(data: bytes):
    """The records of a .wandb file: W&B's 7-byte header, then LevelDB's log format (32 KiB blocks of chunks with
    a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    import struct

    assert data[:4] == b":W&B"
    pos, parts, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield parts
            parts = b""


def _wandb_record(chunk: bytes):
    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    record.ParseFromString(chunk)
    return record


def test_a_logger_gets_the_refiners_diagnostics_and_the_student_grids(tmp_path, root, run_cli, monkeypatch):
    """trackio, stood in for by a module that records its calls (the same API: init, log, Image, finish)."""
    calls = []
    fake = types.ModuleType("trackio")
    fake.init = lambda **kw: calls.append(("init", kw))
    fake.log = lambda values, step=None: calls.append(("log", step, values))
    fake.Image = lambda picture: ("image", picture.shape)
    fake.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, "trackio", fake)
    teacher = _teacher(run_cli, root, tmp_path / "teacher")
    code, _, err = run_cli(["distill", "--teacher", teacher / "ckpt.pt", "--dataroot", root, "--out-dir",
                            tmp_path / "student", *COMMON, "--student-ngf", 4, "--steps", 2, "--log-every", 1,
                            "--sample-every", 2, "--diag-every", 1, "--logger", "trackio"])  # fmt: skip
    assert code == 0, err
    assert calls[0][0] == "init" and calls[0][1]["config"]["job"] == "distill" and calls[-1] == ("finish",)
    logged = {key: step for kind, step, *rest in calls[1:-1] if kind == "log" for key in rest[0]}
    assert logged["train/g_loss"] == 2
    assert any(key.startswith("diag/tap1/") for key in logged)
    assert logged["samples"] == 2
    (picture,) = [rest[0]["samples"] for kind, _, *rest in calls[1:-1] if kind == "log" and "samples" in rest[0]]
    assert picture[0] == "image" and picture[1][2] == 3  # an RGB grid, HWC


def test_a_missing_logger_package_is_named_in_one_line_before_anything_is_written(tmp_path, root, run_cli,
                                                                                  monkeypatch):  # fmt: skip
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    out = tmp_path / "run"
    code, _, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 2,
                            "--logger", "tensorboard"])  # fmt: skip
    assert_one_line_error(code, err, 1, "--logger tensorboard needs the package tensorboard",
                    "pip install 'ackd_fast[tensorboard]'")  # fmt: skip
    assert not out.exists()


def test_an_unknown_logger_exits_2(tmp_path, root, run_cli):
    code, _, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", tmp_path / "run", *TINY,
                            "--logger", "tensorboard,mlflow"])  # fmt: skip
    assert_one_line_error(code, err, 2, "--logger", "tensorboard, wandb, trackio", "mlflow")
    assert not (tmp_path / "run").exists()


def test_wandb_honours_wandb_mode(tmp_path, root, run_cli, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # logged in, so only WANDB_MODE keeps the run off the network
    run = _teacher(run_cli, root, tmp_path / "run", "--logger", "wandb")
    assert not list(run.glob("wandb/*run-*")) and (run / "metrics.csv").is_file()


def test_tensorboard_keeps_one_value_a_step_over_a_resume_and_an_overwrite(tmp_path, root, run_cli):
    pytest.importorskip("tensorboard")
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def steps(run):
        events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        return [e.step for e in events.Scalars("train/g_loss")]

    run = _teacher(run_cli, root, tmp_path / "run", "--logger", "tensorboard", "--ckpt-every", 2)
    # the run died after logging steps 3 and 4 but before keeping their checkpoint: resume from step 2
    shutil.copy(run / "ckpt.prev.pt", run / "ckpt.pt")
    _teacher(run_cli, root, run, "--logger", "tensorboard", "--ckpt-every", 2, "--resume")
    assert steps(run) == [1, 2, 3, 4]
    _teacher(run_cli, root, run, "--logger", "tensorboard", "--overwrite")
    assert steps(run) == [1, 2, 3, 4] and len(list((run / "tensorboard").iterdir())) == 1
