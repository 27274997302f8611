"""Runs that lose nothing, round two (issue 31, points 3-6, 8-11, 13 and the run's messages of 16), each from the
fault probe's reproduction on tiny data: a data error with workers, DDP variables left over, a stopped peer, ranks
that disagree, a DDP checkpoint resumed by one process, --resume without a checkpoint, a truncated checkpoint,
--overwrite in a user's folder, an --out-dir inside the data or moved, a killed write's temporary file. Each asserts
the exit code, the one-line message, and that nothing was lost or overwritten."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import (
    ENV,
    TINY,
    assert_one_line_error,
    copy_data,
    free_port,
    records,
    start_cli,
    tiny_config,
    wait_for_step,
)

from ackd_fast.checkpoint import load_checkpoint, save_checkpoint
from ackd_fast.errors import UsageError
from ackd_fast.train import train

FLAGS = [*TINY, "--no-progress", "--sample-every", 0]
DDP_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _cfg(out, dataroot, **kw):
    return tiny_config(out, dataroot, **({"ckpt_every": 1} | kw))


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["g"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ----------------------------------------------------------------------------------------- 3. data workers


def test_an_image_that_breaks_mid_run_with_data_workers_ends_the_run_inassert_one_line_error(tmp_path, root):
    dataroot = copy_data(root, tmp_path / "data")
    out = tmp_path / "run"
    proc = start_cli(["train-teacher", "--dataroot", dataroot, "--out-dir", out, *FLAGS, "--workers", 2,
                      "--steps", 100000, "--log-every", 1, "--ckpt-every", 2])  # fmt: skip
    wait_for_step(out, 3, [proc])
    for image in (dataroot / "train").glob("*.png"):
        image.write_bytes(b"not a png")  # every image: the next batch of any epoch reads one
    _, err = proc.communicate(timeout=90)  # before the fix: the workers were waited for forever
    assert_one_line_error(proc.returncode, err, 1, "cannot read image", str(dataroot / "train"))
    assert len(err) < 400 and "Original Traceback" not in err  # the worker's reason, not its traceback
    assert load_checkpoint(out / "ckpt.pt")["step"] >= 2


# ----------------------------------------------------------------------------------------- 4. DDP: no silent waits


def test_leftover_ddp_variables_say_what_they_wait_for_and_give_up(tmp_path, root):
    port = free_port()
    env = ENV | {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                 "ACKD_RENDEZVOUS_TIMEOUT": "3"}  # fmt: skip
    start = time.time()
    proc = start_cli(["train-teacher", "--dataroot", root, "--out-dir", tmp_path / "run", *FLAGS,
                   "--steps", 2], env)  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert time.time() - start < 60
    assert f"rank 0 of 2: waiting for the other 1 process(es) at 127.0.0.1:{port}" in out
    assert_one_line_error(proc.returncode, err, 1, "did not all join",
                          "unset WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"WORLD_SIZE": "abc"}, "environment variable WORLD_SIZE must be an integer, got 'abc'"),
        ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
         "environment variable RANK must be >= 0 and <= 1, got 5"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "environment variable MASTER_ADDR is not set"),
    ],
)  # fmt: skip
def test_bad_ddp_variables_are_refused_before_anything_is_written(tmp_path, root, run_cli, monkeypatch, variables,
                                                                  message):  # fmt: skip
    for name in DDP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    code, _, err = run_cli(["train-teacher", "--dataroot", root, "--out-dir", tmp_path / "run", *FLAGS,
                            "--steps", 1])  # fmt: skip
    assert_one_line_error(code, err, 2, message)
    assert not (tmp_path / "run").exists()


def _two_ranks(out: Path, root: Path, extra: list) -> list[subprocess.Popen]:
    """Two gloo ranks started by hand, as torchrun would start them."""
    port = free_port()
    args = ["train-teacher", "--dataroot", root, "--out-dir", out, *FLAGS, "--log-every", 1, *extra]
    procs = []
    for rank in range(2):
        env = ENV | {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        procs.append(start_cli(args, env))
    return procs


def test_a_stop_signal_ends_a_rank_whose_peer_is_stopped_within_seconds(tmp_path, root):
    # ~17 s: two fresh processes import torch and join over gloo; the watcher's grace is 5 s
    out = tmp_path / "run"
    procs = _two_ranks(out, root, ["--steps", 100000, "--ckpt-every", 2])
    try:
        wait_for_step(out, 4, procs)
        procs[1].send_signal(signal.SIGSTOP)  # a hung peer: rank 0 blocks in the next collective
        time.sleep(1)
        procs[0].send_signal(signal.SIGTERM)
        start = time.time()
        _, err = procs[0].communicate(timeout=60)  # before the fix: deaf to SIGTERM and SIGINT for 2 hours
        assert time.time() - start < 60  # 5 s of grace plus twice the longest step, on a loaded machine too
        assert_one_line_error(procs[0].returncode, err, 143, "rank 0 is blocked waiting for another process",
                  "ended without a checkpoint", "continue with: torchrun --nproc_per_node=2 -m ackd_fast.cli")
        step = load_checkpoint(out / "ckpt.pt")["step"]
        assert f"(step {step})" in err
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.communicate()


# ----------------------------------------------------------------------------------------- 11. DDP checkpoints


def test_ranks_agree_on_the_checkpoint_and_one_process_may_not_resume_it_unasked(tmp_path, root, run_cli):
    # ~17 s: two fresh processes import torch and join over gloo, as torchrun starts them
    out = tmp_path / "run"
    procs = _two_ranks(out, root, ["--steps", 100000, "--ckpt-every", 100000])
    wait_for_step(out, 3, procs)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    errs = [proc.communicate(timeout=120)[1] for proc in procs]
    step = load_checkpoint(out / "ckpt.pt")["step"]
    for proc, err in zip(procs, errs, strict=True):
        assert_one_line_error(proc.returncode, err, 143, f"SIGTERM: stopped after step {step}; checkpoint",
                  f"(step {step}) written", "continue with: torchrun --nproc_per_node=2 -m ackd_fast.cli "
                  "train-teacher")  # fmt: skip
    resume = shlex.split(errs[0].split("continue with: ")[1])
    assert resume[-1] == "--resume" and resume[resume.index("--out-dir") + 1] == str(out)
    before = (out / "ckpt.pt").read_bytes()
    one_process = ["train-teacher", *resume[resume.index("train-teacher") + 1 :], "--steps", step + 1]
    code, _, err = run_cli(one_process)
    assert_one_line_error(code, err, 2, "written by 2 process(es) and this run has 1", "--allow-world-change",
              "resume it as it ran (torchrun --nproc_per_node=2 -m ackd_fast.cli train-teacher")  # fmt: skip
    assert (out / "ckpt.pt").read_bytes() == before
    code, _, err = run_cli([*one_process, "--allow-world-change"])
    assert code == 0, err
    assert load_checkpoint(out / "ckpt.pt")["world"] == 1


# ----------------------------------------------------------------------------------------- 5, 6. resume


def test_resume_without_a_checkpoint_refuses_a_run_and_says_when_it_starts_afresh(tmp_path, root, capsys):
    out = tmp_path / "run"
    train(_cfg(out, root, steps=4, ckpt_every=0, eval_every=2, select_on="val", val_size=2))
    kept = {name: (out / name).read_bytes() for name in ("log.jsonl", "best.pt")}
    with pytest.raises(UsageError, match=r"holds a run \(best\.pt, log\.jsonl\) but no ckpt\.pt to continue it"):
        train(_cfg(out, root, steps=2, ckpt_every=0, eval_every=2, select_on="val", val_size=2, resume=True))
    assert {name: (out / name).read_bytes() for name in kept} == kept
    fresh = tmp_path / "fresh"
    capsys.readouterr()
    assert train(_cfg(fresh, root, steps=2, resume=True))["step"] == 2
    assert f"--resume: no checkpoint in {fresh}: starting at step 1" in capsys.readouterr().out


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_exactly(tmp_path, root, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(full, root, steps=6))
    train(_cfg(cut, root, steps=6, stop_at=4))
    assert load_checkpoint(cut / "ckpt.prev.pt")["step"] == 3
    with open(cut / "ckpt.pt", "r+b") as f:
        f.truncate((cut / "ckpt.pt").stat().st_size // 2)
    capsys.readouterr()
    train(_cfg(cut, root, steps=6, resume=True))
    out = capsys.readouterr().out
    assert f"notice: {cut / 'ckpt.pt'} is not a PyTorch checkpoint" in out and "resuming from" in out
    assert f"resumed {cut / 'ckpt.prev.pt'} at step 3" in out
    assert [r["step"] for r in records(cut) if "g_loss" in r] == list(range(1, 7))
    assert _same_weights(cut / "ckpt.pt", full / "ckpt.pt")  # continued exactly from step 3
    assert load_checkpoint(cut / "ckpt.prev.pt")["step"] == 5


def test_checkpoints_that_do_not_load_are_named_with_what_is_wrong(tmp_path, root, run_cli):
    out = tmp_path / "run"
    train(_cfg(out, root, steps=2))
    (out / "ckpt.prev.pt").unlink()
    state = load_checkpoint(out / "ckpt.pt")
    flags = ["train-teacher", "--dataroot", root, "--out-dir", out, *FLAGS, "--steps", 3,
             "--ckpt-every", 1, "--log-every", 1, "--resume"]  # fmt: skip
    for broken, message in (
        ({k: v for k, v in state.items() if k != "g_opt"}, "is not a whole training state: it has no 'g_opt' entry"),
        (state | {"rng": state["rng"] | {"torch": torch.zeros(3, dtype=torch.uint8)}}, "its 'rng' entry does not load"),
    ):
        save_checkpoint(broken, out / "ckpt.pt")
        code, _, err = run_cli(flags)
        assert_one_line_error(code, err, 1, f"--resume: no checkpoint in {out} loads: {out / 'ckpt.pt'}", message)


# ----------------------------------------------------------------------------------------- 8, 9, 10. the run folder


def test_overwrite_removes_only_what_a_run_wrote(tmp_path, root):
    users = tmp_path / "users"
    (users / "samples" / "album").mkdir(parents=True)
    (users / "samples" / "README.txt").write_text("doc")
    (users / "samples" / "album" / "holiday.png").write_bytes(b"photo")
    train(_cfg(users, root, steps=1, overwrite=True))  # a folder without a run: --overwrite clears nothing
    assert (users / "samples" / "README.txt").read_text() == "doc"
    assert (users / "samples" / "album" / "holiday.png").read_bytes() == b"photo"
    train(_cfg(users, root, steps=2, sample_every=1, overwrite=True))  # now it holds a run: its files are replaced
    grids = sorted(p.name for p in (users / "samples").glob("step_*.png"))
    assert grids == ["step_0000001.png", "step_0000002.png"]
    train(_cfg(users, root, steps=1, overwrite=True))
    assert not list((users / "samples").glob("step_*.png")) and load_checkpoint(users / "ckpt.pt")["step"] == 1
    assert (users / "samples" / "album" / "holiday.png").read_bytes() == b"photo"


def test_an_out_dir_inside_the_data_or_a_file_is_refused(tmp_path, root, run_cli):
    dataroot = copy_data(root, tmp_path / "data")
    before = sorted(p.name for p in (dataroot / "train").iterdir())
    for out, message in ((dataroot / "train" / "run", "lies inside"), (dataroot / "test" / "x" / "y", "lies inside")):
        code, _, err = run_cli(["train-teacher", "--dataroot", dataroot, "--out-dir", out, *FLAGS, "--steps", 1])
        assert_one_line_error(code, err, 2, message, "which the run reads")
    assert sorted(p.name for p in (dataroot / "train").iterdir()) == before
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out, message in ((afile, "is a file, not a folder"), (afile / "run", f"lies under {afile}, which is a file")):
        code, _, err = run_cli(["train-teacher", "--dataroot", dataroot, "--out-dir", out, *FLAGS, "--steps", 1])
        assert_one_line_error(code, err, 2, f"--out-dir {out} {message}")
    assert afile.read_text() == "mine"


def test_a_run_folder_resumes_by_any_name_of_it_and_wherever_it_was_moved(tmp_path, root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = tmp_path / "full"
    train(_cfg(full, root, steps=7))
    train(_cfg("OUT/r", root, steps=7, stop_at=2))
    for step, name in enumerate(("./OUT/r", str(tmp_path / "OUT" / "r"), "OUT/r/"), start=3):
        assert train(_cfg(name, root, steps=7, stop_at=step, resume=True))["step"] == step
    shutil.copytree("OUT/r", "moved")
    assert train(_cfg("moved", root, steps=7, resume=True))["step"] == 7
    assert _same_weights(tmp_path / "moved" / "ckpt.pt", full / "ckpt.pt")


# ----------------------------------------------------------------------------------------- 13. killed writes


def test_the_temporary_files_of_killed_writes_are_swept_when_the_lock_is_taken(tmp_path, root, capsys):
    out = tmp_path / "run"
    train(_cfg(out, root, steps=2))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = out / f"ckpt.pt.{dead.pid}.0123abcd.tmp"
    left.write_bytes(b"half a checkpoint")
    live = out / f"results.json.{os.getpid()}.89abcdef.tmp"  # a live writer's (this process): not ours to remove
    live.write_bytes(b"{")
    train(_cfg(out, root, steps=3, resume=True))
    assert not left.exists() and live.exists()
    assert f"notice: removed {left}" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- 16. a student as teacher


def test_a_distilled_student_can_be_the_teacher_of_another_run(tmp_path, root):
    teacher = tmp_path / "teacher"
    train(_cfg(teacher, root, steps=1))
    student = tmp_path / "student"
    train(_cfg(student, root, job="distill", teacher=str(teacher / "ckpt.pt"), steps=1, ndf=64))
    # the student's discriminator is its teacher's (ndf 8); its config records distill's --ndf
    assert load_checkpoint(student / "ckpt.pt")["config"]["ndf"] == 64
    result = train(_cfg(tmp_path / "again", root, job="distill", teacher=str(student / "ckpt.pt"), steps=1))
    assert result["step"] == 1
