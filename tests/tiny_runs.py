"""What the run and command tests share: the tiny sizes, a tiny Config, the CLI started as a process, and the check
that a command failed in one line."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ackd_fast import data
from ackd_fast.assembly import Config

SIZE, CROP = 36, 32  # the smallest crop a 3-layer PatchGAN accepts is 32
TINY = ["--load-size", SIZE, "--crop-size", CROP, "--ngf", 4, "--ndf", 8, "--workers", 0, "--batch-size", 2]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one thread: ~100x faster on a shared box


def sample_set(folder: Path, unpaired: bool = False) -> Path:
    """The built-in tile set at SIZE, two training tiles and one test tile a photograph."""
    return data.build_sample_set(folder, size=SIZE, train_per_photo=2, test_per_photo=1, unpaired=unpaired)


def copy_data(root: Path, dest: Path) -> Path:
    """A copy of a data folder that a test may break."""
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(".built*"))
    return dest


def tiny_config(out, dataroot, **kw) -> Config:
    tiny = {"ngf": 4, "ndf": 8, "student_ngf": 4, "batch_size": 2, "workers": 0, "steps": 4, "device": "cpu"}
    quiet = {"log_every": 1, "sample_every": 0, "ckpt_every": 2, "progress": False}
    return Config(out_dir=str(out), dataroot=str(dataroot), load_size=SIZE, crop_size=CROP, **(tiny | quiet | kw))


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def assert_one_line_error(code: int, err: str, expected_code: int, *parts: str) -> None:
    """The command exited `expected_code` with one line on stderr, no traceback, holding every part."""
    assert code == expected_code, (code, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)


def start_cli(args: list, env: dict | None = None, **popen) -> subprocess.Popen:
    """`ackd-fast ARGS` as a process of its own (signals, kills and hangs need one), output captured as text."""
    cmd = [sys.executable, "-m", "ackd_fast.cli", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV, **popen)


def wait_for_step(out: Path, step: int, procs, timeout: float = 120) -> None:
    """Until out/log.jsonl has a whole record of `step` or later; fails when one of `procs` (a process or a list)
    ends first."""
    procs = procs if isinstance(procs, list) else [procs]
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = out / "log.jsonl"
        if log.is_file() and any(json.loads(x).get("step", 0) >= step for x in log.read_text().splitlines()[:-1]):
            return
        for proc in procs:
            assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
