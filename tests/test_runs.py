"""Runs that lose nothing (issue 21) and the command's one error path (issue 20): bad images, signals, a second run,
a finished folder, kill -9 + resume with the log checked record by record, a non-finite loss, bad values, a full disk,
bad checkpoint files. Each asserts the exit code, the one-line message and that nothing was lost."""

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import (
    ENV,
    TINY,
    assert_one_line_error,
    copy_data,
    records,
    start_cli,
    tiny_config,
    wait_for_step,
)

from ackd_fast import checkpoint, losses
from ackd_fast.checkpoint import load_checkpoint
from ackd_fast.errors import RunInterrupted, UsageError
from ackd_fast.train import train

# ----------------------------------------------------------------------------------------- 1. bad images


def _break_images(folder: Path) -> list[Path]:
    """Four kinds of bad file among the good ones: empty, random bytes, truncated, 1x1."""
    good = sorted(folder.glob("*.png"))[0]
    bad = [folder / "zero.png", folder / "random.png", folder / "truncated.png", folder / "tiny.png"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(os.urandom(3000))
    bad[2].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    from PIL import Image

    Image.new("RGB", (1, 1)).save(bad[3])
    return bad


def test_bad_images_stop_the_run_before_its_first_step_naming_every_one(tmp_path, root, run_cli):
    dataroot = copy_data(root, tmp_path / "data")
    bad = _break_images(dataroot / "train")
    out = tmp_path / "run"
    code, _, err = run_cli(["train-teacher", "--dataroot", dataroot, "--out-dir", out, *TINY, "--steps", 2])
    assert_one_line_error(code, err, 1, "4 of the", "--skip-bad-images", *(str(p) for p in bad))
    assert not out.exists()  # nothing written, no folder left behind


def test_a_bad_image_in_the_scored_split_is_found_before_the_first_step(tmp_path, root, run_cli):
    dataroot = copy_data(root, tmp_path / "data")
    (dataroot / "test" / "zero.png").write_bytes(b"")
    code, _, err = run_cli(["train-teacher", "--dataroot", dataroot, "--out-dir", tmp_path / "run", *TINY,
                            "--steps", 2, "--eval-every", 1])  # fmt: skip
    assert_one_line_error(code, err, 1, "test split", "zero.png")


def test_skip_bad_images_trains_on_the_rest_in_the_order_of_the_rest(tmp_path, root, capsys):
    clean = copy_data(root, tmp_path / "clean")
    broken = copy_data(root, tmp_path / "broken")
    _break_images(broken / "train")
    a = train(tiny_config(tmp_path / "a", clean))
    b = train(tiny_config(tmp_path / "b", broken, skip_bad_images=True))
    assert "leaving out 4 of the" in capsys.readouterr().err
    wa, wb = load_checkpoint(a["checkpoint"])["g"], load_checkpoint(b["checkpoint"])["g"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same files, the same seed: the same run


# ----------------------------------------------------------------------------------------- 2. signals, 5. resume


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(tmp_path, root, signum):
    out = tmp_path / "run"
    args = ["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 100000, "--log-every", 1,
            "--ckpt-every", 100000, "--no-progress"]  # fmt: skip
    proc = start_cli(args)
    wait_for_step(out, 3, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert_one_line_error(proc.returncode, err, 128 + signum, f"{name}: stopped after step", "continue with: ackd-fast")
    step = load_checkpoint(out / "ckpt.pt")["step"]
    assert f"after step {step};" in err and f"(step {step}) written" in err
    assert records(out)[-1]["step"] == step  # every step up to the checkpoint logged, none after
    resume = shlex.split(err.split("continue with: ")[1])
    assert resume[:2] == ["ackd-fast", "train-teacher"] and resume[-1] == "--resume"
    proc = start_cli([*resume[1:], "--stop-at", step + 2])  # the printed command, two steps further
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert [r["step"] for r in records(out) if "g_loss" in r] == list(range(1, step + 3))


def test_a_second_ctrl_c_stops_at_once(tmp_path, root):
    out = tmp_path / "run"
    args = ["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 100000, "--ckpt-every", 100000,
            "--no-progress", "--log-every", 1]  # fmt: skip
    proc = start_cli(args)
    wait_for_step(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (out / ".lock").exists()  # the lock goes with the run


def test_kill_9_then_resume_keeps_the_log_record_by_record(tmp_path, root):
    full, killed = tmp_path / "full", tmp_path / "killed"
    flags = [*TINY, "--dataroot", root, "--steps", 12, "--log-every", 1, "--ckpt-every", 4, "--no-progress"]
    subprocess.run([sys.executable, "-m", "ackd_fast.cli", "train-teacher", "--out-dir", str(full), *map(str, flags)],
                   check=True, capture_output=True, env=ENV)  # fmt: skip
    proc = start_cli(["train-teacher", "--out-dir", killed, *flags])
    wait_for_step(killed, 6, proc)
    proc.kill()
    proc.communicate()
    with open(killed / "log.jsonl", "a") as f:
        f.write('{"step": 7, "g_lo')  # a record torn by the kill (or a full disk)
    assert (killed / ".lock").exists()  # left by the killed process: taken over below
    proc = start_cli(["train-teacher", "--out-dir", killed, *flags, "--resume"])
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "taking over the lock" in stdout
    ours, theirs = records(killed), records(full)
    assert [r["step"] for r in ours] == list(range(1, 13))
    drop = lambda r: {k: v for k, v in r.items() if k != "img_per_s"}
    assert [drop(r) for r in ours] == [drop(r) for r in theirs]  # bit for bit on the CPU
    a, b = load_checkpoint(killed / "ckpt.pt")["g"], load_checkpoint(full / "ckpt.pt")["g"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_flags_another_kind_and_other_data(tmp_path, root, capsys):
    out, dataroot = tmp_path / "run", copy_data(root, tmp_path / "data")
    train(tiny_config(out, dataroot, stop_at=2))
    before = (out / "ckpt.pt").read_bytes()
    for change, flag in (({"lr": 1e-3}, "--lr 0.0002 in the checkpoint, 0.001 now"),
                         ({"ngf": 8}, "--ngf 4 in the checkpoint, 8 now"), ({"seed": 3}, "--seed 0")):  # fmt: skip
        with pytest.raises(UsageError, match=flag):
            train(tiny_config(out, dataroot, resume=True, **change))
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "ckpt.pt", other / "ckpt.pt")  # a teacher's checkpoint where a distill run would resume
    with pytest.raises(UsageError, match="checkpoint of a train-teacher run, not of a distill run"):
        train(tiny_config(other, dataroot, resume=True, job="distill", teacher=str(out / "ckpt.pt")))
    shutil.copy(next((dataroot / "train").glob("*.png")), dataroot / "train" / "added.png")
    with pytest.raises(UsageError, match="training images changed"):
        train(tiny_config(out, dataroot, resume=True))
    (dataroot / "train" / "added.png").unlink()
    assert (out / "ckpt.pt").read_bytes() == before  # nothing refused touched the run
    # more steps: allowed, said and recorded
    result = train(tiny_config(out, dataroot, resume=True, steps=6))
    assert result["step"] == 6 and "--steps 6 (the checkpoint's: 4)" in capsys.readouterr().out
    assert {"step": 2, "resumed": True, "changed": {"steps": [4, 6], "stop_at": [2, 0]}} in records(out)
    assert [r["step"] for r in records(out) if "g_loss" in r] == list(range(1, 7))


# ----------------------------------------------------------------------------------------- 3, 4. one run per folder


def test_a_second_run_in_the_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, root, run_cli, capsys):
    out = tmp_path / "run"
    out.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / ".lock").write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname(), "started": "then"}))
        code, _, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 1])
        assert_one_line_error(code, err, 2, f"--out-dir {out} is in use by another run", f"process {owner.pid}")
    finally:
        owner.kill()
        owner.wait()
    code, out_text, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 1])
    assert code == 0 and "taking over the lock" in out_text, err
    assert not (out / ".lock").exists()


def test_unique_temporary_names(tmp_path):
    seen = []
    real_open = open

    def spy(path, *a, **kw):
        seen.append(Path(path).name)
        return real_open(path, *a, **kw)

    import builtins

    builtins.open, saved = spy, builtins.open
    try:
        checkpoint.save_checkpoint({"a": 1}, tmp_path / "ckpt.pt")
        checkpoint.save_checkpoint({"a": 2}, tmp_path / "ckpt.pt")
    finally:
        builtins.open = saved
    temps = [n for n in seen if n.endswith(".tmp")]
    assert len(temps) == 2 and temps[0] != temps[1] and str(os.getpid()) in temps[0]


def test_a_finished_run_is_never_overwritten_unasked(tmp_path, root, run_cli):
    out = tmp_path / "run"
    assert run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 2])[0] == 0
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cases = [
        ([*TINY, "--steps", 2], 2, "holds a run (ckpt.pt, log.jsonl): add --resume"),
        # a crop the generator cannot take: refused before the folder is touched, --overwrite or not
        ([*TINY, "--generator", "unet_256", "--overwrite"], 2, "--crop-size 32: the unet_256 generator cannot take"),
        ([*TINY, "--n-layers-d", 8, "--overwrite"], 2, "--crop-size 32: the discriminator"),
    ]
    for flags, expected, message in cases:
        code, _, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *flags])
        assert_one_line_error(code, err, expected, message)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept
    # distill into the teacher's own folder: refused outright
    code, _, err = run_cli(["distill", "--teacher", out / "ckpt.pt", "--dataroot", root, "--out-dir", out,
                            "--overwrite", *TINY[:4], "--student-ngf", 4])  # fmt: skip
    assert_one_line_error(code, err, 2, "an input of this run")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept
    # --overwrite replaces the run
    flags = [*TINY, "--steps", 3, "--log-every", 1, "--overwrite"]
    assert run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *flags])[0] == 0
    assert load_checkpoint(out / "ckpt.pt")["step"] == 3 and [r["step"] for r in records(out)] == [1, 2, 3]


# ----------------------------------------------------------------------------------------- 6. non-finite losses


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, root, monkeypatch):
    forward, calls = losses.Pix2Pix.forward, []

    def poisoned(self, a, b, critic):
        out = forward(self, a, b, critic)
        calls.append(1)
        if len(calls) == 3:  # step 3: the loss (and so the weights after it) NaN
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(losses.Pix2Pix, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"step 3: non-finite loss \(g_loss nan.*ckpt\.pt \(step 2\) is kept"):
        train(tiny_config(tmp_path, root, steps=6, ckpt_every=2))
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["g"].values() if v.is_floating_point())
    assert max(r["step"] for r in records(tmp_path)) == 2  # the NaN step is not logged as a loss


# ----------------------------------------------------------------------------------------- 7. values at the edge


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "-3"], "--batch-size must be >= 0"),
        (["--steps", "0"], "--steps must be >= 1; got 0"),
        (["--steps", "-5"], "--steps must be >= 1; got -5"),
        (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
        (["--device", "tpu"], "--device must be"),
        (["--device", ""], "--device must be"),
        (["--model", "foo"], "--model must be one of pix2pix, cyclegan; got 'foo'"),
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--lr", "-1"], "--lr must be >= 0"),
        (["--beta1", "1.5"], "--beta1 must be >= 0 and < 1"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--crop-size", "30"], "--crop-size must be a multiple of 4"),
        (["--load-size", "16"], "--load-size must be >= 32"),
        (["--generator", "unet_256"], "--crop-size 32: the unet_256 generator cannot take 32x32 images"),
        (["--n-layers-d", "8"], "--crop-size 32: the discriminator"),
        (["--dataset-mode", "weird"], "--dataset-mode must be one of"),
    ],
)
def test_bad_values_are_refused_in_one_line_with_exit_code_2(tmp_path, root, run_cli, flags, message):
    out = tmp_path / "run"
    code, _, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 1, *flags])
    assert_one_line_error(code, err, 2, message)
    assert not out.exists()


def test_bad_distill_values_and_cuda_devices(tmp_path, root, run_cli):
    teacher = tmp_path / "t"
    train(tiny_config(teacher, root, steps=1))
    base = ["distill", "--teacher", teacher / "ckpt.pt", "--dataroot", root, "--out-dir", tmp_path / "s", *TINY[:4]]
    for flags, message in ((["--batch-size", "-1"], "--batch-size must be >= 0"),
                           (["--lambda-feat", "nan"], "--lambda-feat must be a finite number"),
                           (["--kd", "best"], "--kd must be one of ackd, plain, none"),
                           (["--mask-ratio", "1"], "--mask-ratio must be >= 0 and < 1")):  # fmt: skip
        code, _, err = run_cli([*base, *flags])
        assert_one_line_error(code, err, 2, message)
    if not torch.cuda.is_available():
        code, _, err = run_cli([*base, "--device", "cuda:3"])
        assert_one_line_error(code, err, 2, "--device cuda:3: this machine has no CUDA device")
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------- 8. disk


def _full_disk(monkeypatch, name_part: str):
    real = os.fsync

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if name_part in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_previous_checkpoint_stays(tmp_path, root, monkeypatch,
                                                                                   run_cli):  # fmt: skip
    out = tmp_path / "run"
    train(tiny_config(out, root, stop_at=2, steps=4))
    before = (out / "ckpt.pt").read_bytes()
    _full_disk(monkeypatch, "ckpt.pt.")
    code, _, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--steps", 4,
                            "--ckpt-every", 2, "--log-every", 1, "--no-progress", "--resume"])  # fmt: skip
    assert_one_line_error(code, err, 1, f"cannot write {out / 'ckpt.pt'}: No space left on device",
                    "the previous file there is intact")  # fmt: skip
    assert (out / "ckpt.pt").read_bytes() == before
    assert not list(out.glob("*.tmp")) and not (out / ".lock").exists()


@pytest.mark.parametrize("fmt", ["pth", "peer", "pt2"])
def test_export_to_a_full_disk_is_one_line(tmp_path, root, monkeypatch, run_cli, fmt):
    train(tiny_config(tmp_path / "t", root, steps=1))
    _full_disk(monkeypatch, "g.out.")
    code, _, err = run_cli(["export", tmp_path / "t" / "ckpt.pt", "--format", fmt, "--out", tmp_path / "g.out",
                            "--size", 32])  # fmt: skip
    assert_one_line_error(code, err, 1, "g.out: No space left on device", "nothing was written there")
    assert not list(tmp_path.glob("g.out*"))


def test_free_space_is_checked_at_the_start(tmp_path, root, monkeypatch, capsys):
    import shutil as shutil_module

    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: shutil_module._ntuple_diskusage(10, 10, 1000))
    train(tiny_config(tmp_path, root, steps=1))
    assert "MiB free; a checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- 9. bad checkpoint files


def test_bad_checkpoint_bytes_are_not_a_security_refusal(tmp_path, root, run_cli):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    code, _, err = run_cli(["distill", "--teacher", junk, "--dataroot", root, "--out-dir", tmp_path / "s", *TINY[:4]])
    assert_one_line_error(code, err, 1, "junk.pt is not a PyTorch checkpoint (truncated or corrupt")
    assert "would run code" not in err
    teacher = tmp_path / "t"
    train(tiny_config(teacher, root, steps=1))
    code, _, err = run_cli(["distill", "--teacher", teacher / "ckpt.pt", "--teacher-d", junk, "--dataroot", root,
                            "--out-dir", tmp_path / "s", *TINY[:4]])  # fmt: skip
    assert_one_line_error(code, err, 1, "junk.pt is not a PyTorch checkpoint")
    assert not (tmp_path / "s").exists()  # no empty run folder left behind


def test_signals_raise_run_interrupted_in_the_python_api(tmp_path, root, monkeypatch):
    # the signal itself is the subprocess tests' (a real SIGTERM in the test process would reach every library's
    # threads): here the loop is told after its first step that one arrived
    from ackd_fast import train as train_module

    monkeypatch.setattr(train_module, "stop_requested", lambda signals, rt: True)
    with pytest.raises(RunInterrupted, match=r"SIGTERM: stopped after step 1; checkpoint .* written") as e:
        train(tiny_config(tmp_path, root, steps=5, ckpt_every=100))
    assert e.value.exit_code == 143 and load_checkpoint(tmp_path / "ckpt.pt")["step"] == 1


def test_a_signal_to_the_process_group_with_data_workers_still_checkpoints(tmp_path, root):
    # a terminal's Ctrl-C or `kill -TERM -PGID` reaches the data workers too: they leave it to the training process
    out = tmp_path / "run"
    args = ["train-teacher", "--dataroot", root, "--out-dir", out, *TINY, "--workers", 2, "--steps", 100000,
            "--log-every", 1, "--ckpt-every", 100000, "--no-progress"]  # fmt: skip
    cmd = [sys.executable, "-m", "ackd_fast.cli", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)  # fmt: skip
    wait_for_step(out, 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert_one_line_error(proc.returncode, err, 143, "SIGTERM: stopped after step", "written; continue with")
    assert load_checkpoint(out / "ckpt.pt")["step"] >= 3
