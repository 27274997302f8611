"""The first hour (issue 20): --version, one error path for every command (one line, exit 2 for a bad flag value and 1
for a failure, --debug for the traceback), runs that explain themselves (summary, estimate, status lines, labelled
grids), evaluation defaults that fit the machine."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tiny_runs import CROP, TINY, assert_one_line_error, tiny_config

import ackd_fast
from ackd_fast import metrics
from ackd_fast.report import latency_dtypes_for
from ackd_fast.train import train


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, root):
    out = tmp_path_factory.mktemp("teacher")
    train(tiny_config(out, root, steps=2))
    return out / "ckpt.pt"


def test_version_has_one_source(run_cli):
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.strip() == f"ackd-fast {ackd_fast.__version__}"
    import tomllib

    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_debug_shows_the_traceback(tmp_path, monkeypatch, run_cli):
    argv = ["train-teacher", "--dataroot", tmp_path / "missing", "--out-dir", tmp_path / "run"]
    code, _, err = run_cli(argv)
    assert_one_line_error(code, err, 1, "ackd-fast train-teacher: error: dataset root", "missing does not exist")
    with pytest.raises(FileNotFoundError):
        from ackd_fast import cli

        cli.main([*map(str, argv), "--debug"])
    monkeypatch.setenv("ACKD_FAST_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(list(map(str, argv)))


def test_each_command_answers_a_mistake_inassert_one_line_error(tmp_path, root, unpaired, teacher, run_cli):
    jpg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpg)
    cases = [
        (["train-teacher", "--dataroot", unpaired, *TINY], 1, "holds unaligned data (trainA/, trainB/)"),
        (["train-teacher", "--model", "cyclegan", "--dataroot", root, *TINY], 1, "holds aligned pairs (train/)"),
        (["distill", "--teacher", jpg, "--dataroot", root, *TINY[:4]], 1, "photo.jpg is not a PyTorch checkpoint"),
        (["distill", "--dataroot", root], 2, "distill needs --teacher"),
        (["evaluate", "--checkpoint", teacher, "--no-fid", "--latency-runs", "0", "--batch-size", "0"], 2,
         "--batch-size must be >= 1"),
        (["evaluate", "--checkpoint", teacher, "--no-fid", "--latency-dtypes", "fp8"], 2, "--latency-dtypes takes"),
        (["evaluate", "--checkpoint", tmp_path / "nope.pt"], 1, "nope.pt does not exist"),
        (["evaluate", "--checkpoint", teacher, "--device", "gpu"], 2, "--device must be auto, cpu, cuda or cuda:N"),
        (["export", teacher, "--format", "tflite", "--out", tmp_path / "g"], 2, "--format"),
        (["bench-deploy"], 2, "give checkpoints or --arch NAME:NGF"),
        (["demo", "--seeds", "0"], 2, "seeds must be a positive int"),
        (["study", "--preset", "huge"], 2, "preset must be one of"),
    ]
    for argv, expected, message in cases:
        out_dir = tmp_path / "run"
        extra = ["--out-dir", out_dir] if argv[0] in ("train-teacher", "distill") else []
        code, _, err = run_cli([*argv, *extra])
        assert_one_line_error(code, err, expected, f"ackd-fast {argv[0]}: error: ", message)
        assert not out_dir.exists()


def test_missing_inception_weights_are_one_line_saying_where_and_no_fid(teacher, run_cli, monkeypatch, tmp_path):
    monkeypatch.setattr(metrics, "inception_cache_path", lambda: tmp_path / "hub" / metrics.INCEPTION_FILE)
    code, _, err = run_cli(["evaluate", "--checkpoint", teacher, "--no-download", "--latency-runs", "0",
                            "--out-dir", tmp_path / "report"])  # fmt: skip
    assert_one_line_error(code, err, 1, "FID/KID need pytorch-fid's Inception weights", str(tmp_path / "hub"),
              "--inception-weights PATH", "--no-fid skips FID/KID")  # fmt: skip
    bad = tmp_path / "bad.pth"
    torch.save({f"layer{i}.weight": torch.zeros(3) for i in range(2000)}, bad)
    code, _, err = run_cli(["evaluate", "--checkpoint", teacher, "--inception-weights", bad, "--latency-runs", "0",
                            "--out-dir", tmp_path / "report"])  # fmt: skip
    digest = metrics.file_sha256(bad)
    assert_one_line_error(code, err, 1, str(bad), f"sha256 {digest}", metrics.INCEPTION_SHA256,
                          f"--inception-sha256 {digest}")  # fmt: skip
    code, _, err = run_cli(["evaluate", "--checkpoint", teacher, "--inception-weights", bad, "--latency-runs", "0",
                            "--inception-sha256", digest, "--out-dir", tmp_path / "report"])  # fmt: skip
    assert_one_line_error(code, err, 1, "is not pytorch-fid's Inception state dict", "--no-fid")
    assert len(err) < 800  # not the ~30 KB of key names


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    import builtins

    from ackd_fast.errors import optional_import

    real = builtins.__import__

    def no_onnxruntime(name, *args, **kw):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    message = r"--format onnx needs the package onnxruntime: pip install 'ackd_fast\[onnx\]'"
    with pytest.raises(ImportError, match=message):
        optional_import("onnxruntime", "--format onnx")


def test_unpaired_without_fid_says_why_there_is_no_score(tmp_path, unpaired, run_cli):
    out = tmp_path / "cyc"
    train(tiny_config(out, unpaired, model="cyclegan", batch_size=0, steps=1, log_every=100, ckpt_every=100))
    code, out_text, _ = run_cli(["evaluate", "--checkpoint", out / "ckpt.pt", "--no-fid", "--latency-runs", "0"])
    assert code == 0 and "no score: unaligned data has no targets for PSNR/SSIM" in out_text
    notes = json.loads((out / "results.json").read_text())["info"]["notes"]
    assert any("no score" in n for n in notes)


def test_latency_runs_in_the_precision_of_the_device():
    assert latency_dtypes_for("auto", torch.device("cpu")) == ("fp32",)
    assert latency_dtypes_for("fp32,bf16", torch.device("cpu")) == ("fp32", "bf16")


def test_a_distill_run_explains_itself(tmp_path, root, teacher, monkeypatch):
    cmd = [sys.executable, "-m", "ackd_fast.cli", "distill", "--teacher", str(teacher), "--dataroot", str(root),
           "--out-dir", str(tmp_path / "s"), *map(str, TINY[:4]), "--student-ngf", "4", "--batch-size", "2",
           "--workers", "0", "--steps", "12", "--log-every", "2", "--sample-every", "12"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for part in ("distill: pix2pix student by ACKD", "  teacher: resnet_9blocks ngf 4, ",
                 "  student: mobile_resnet_9blocks ngf 4", "M params", "GMACs at 32x32", "refiners and connectors",
                 "  data: ", "training samples",
                 "  device: cpu", "precision fp32", "  steps: 1..12 of 12", f"  output: {tmp_path / 's'}/",
                 "estimate: ", "distill step 2/12"):  # fmt: skip
        assert part in out, (part, out)
    # output to a file: status lines, no carriage-return frames, with or without --no-progress
    assert "\r" not in out and "\r" not in proc.stderr
    assert (tmp_path / "s" / "losses.png").is_file()
    grid = Image.open(tmp_path / "s" / "samples" / "step_0000012.png")
    # four labelled columns (input, teacher, student, target) of whole 32 px images under a header
    assert grid.size[0] == 4 * (CROP + 2) + 2 and grid.size[1] > CROP + 14


def test_no_cuda_home_warning_on_import(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_HOME"} | {"CUDA_HOME": str(tmp_path / "no-cuda")}
    # inductor imports torch.utils.cpp_extension when it compiles, which logs the notice without a CUDA device
    code = ("import logging, ackd_fast, ackd_fast.cli, ackd_fast.train; logging.getLogger('torch.utils.cpp_extension')"
            ".warning(\"No CUDA runtime is found, using CUDA_HOME='/usr/local'\")")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
