"""A run folder that loses nothing: one run at a time (a lock), never overwritten unasked, a log that a resume cuts
back to its checkpoint, signals that end a run with a checkpoint, and a disk that is checked before it is needed.

`train.py` uses these in this order: `check_out_dir` (before anything is written), `RunLock` (held for the whole run),
`trim_log` (on resume), `StopSignals` (around the loop), `check_free_space`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ackd_fast.checkpoint import BEST, CHECKPOINT, PREVIOUS_CHECKPOINT, sweep_temporaries, temporary_path
from ackd_fast.errors import UsageError

LOCK = ".lock"
LOG = "log.jsonl"
LOSSES_PLOT = "losses.png"
RUN_CONFIG = "config.yaml"  # the run's resolved flags, which --config reads back
METRICS_CSV = "metrics.csv"  # log.jsonl's records as a table (loggers.write_metrics_csv)
TENSORBOARD_DIR = "tensorboard"  # --logger tensorboard's event files
SAMPLES = "samples"  # the sample grids, samples/step_NNNNNNN.png
RUN_FILES = (CHECKPOINT, PREVIOUS_CHECKPOINT, BEST, LOG)  # a folder holding one of these holds a run


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except OSError:
        return False


def run_files(out_dir: Path) -> list[str]:
    """The files of a run that `out_dir` holds (none: it holds no run)."""
    return [name for name in RUN_FILES if (out_dir / name).exists()]


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool, inputs: dict[str, str],
                  read_folders: dict[str, str] | None = None) -> None:  # fmt: skip
    """UsageError when the run may not write into `out_dir`: it is a file (or lies under one); it holds one of the
    run's `inputs` ({flag: path}, e.g. the teacher) or lies inside a folder the run reads (`read_folders`, {what:
    folder}, e.g. the training split: the run's own images would become its data); it holds a finished or started
    run (RUN_FILES) and neither --resume nor --overwrite was given; or --resume was given and it holds a run but
    no checkpoint to continue it from. Touches nothing."""
    for parent in (out_dir, *out_dir.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out_dir else f"lies under {parent}, which is a file"
            raise UsageError(f"--out-dir {out_dir} {where}, not a folder: choose another --out-dir")
    for name, path in inputs.items():
        if path and _inside(path, out_dir):
            raise UsageError(
                f"--out-dir {out_dir} holds {name} {path}, an input of this run, which the run would overwrite: "
                "choose another --out-dir"
            )
    for what, folder in (read_folders or {}).items():
        if _inside(out_dir, folder):
            raise UsageError(
                f"--out-dir {out_dir} lies inside {folder}, {what}, which the run reads: its sample images would "
                "become data; choose an --out-dir outside the data"
            )
    held = run_files(out_dir)
    if held and not (resume or overwrite):
        raise UsageError(
            f"--out-dir {out_dir} holds a run ({', '.join(held)}): add --resume to continue it or --overwrite to "
            "replace it, or choose another --out-dir"
        )
    if resume and held and not {CHECKPOINT, PREVIOUS_CHECKPOINT} & set(held):
        raise UsageError(
            f"--resume: {out_dir} holds a run ({', '.join(held)}) but no {CHECKPOINT} to continue it from (was it run "
            f"with --ckpt-every 0, or the file moved?): restore {CHECKPOINT}, or start afresh with --overwrite"
        )


def clear_run(out_dir: Path) -> list[str]:
    """What --overwrite replaces, when `out_dir` holds a run: its checkpoints, log, metrics.csv, config.yaml, loss
    plot, sample grids and TensorBoard event files, and nothing else (the built-in data and any file of the user's
    stay). Returns what it removed."""
    if not run_files(out_dir):
        return []
    removed = []
    files = (*RUN_FILES, LOSSES_PLOT, METRICS_CSV, RUN_CONFIG)
    events = (out_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*")
    for path in [*(out_dir / name for name in files), *(out_dir / SAMPLES).glob("step_*.png"), *events]:
        if path.is_file():
            path.unlink()
            removed.append(str(path.relative_to(out_dir)))
    with contextlib.suppress(OSError):
        (out_dir / SAMPLES).rmdir()  # only when empty
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """`out_dir/.lock`, created exclusively, holding the owner's pid, host and start time. A second run in the folder
    is refused (UsageError naming the folder and the owner); a lock left by a dead process of this host is taken
    over with a notice. `release` removes it, and `out_dir` too when the lock created it and nothing else is in it."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.path, self.held = out_dir, out_dir / LOCK, False
        self.created_dir = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                    print(f"notice: taking over the lock of {out_dir} left by process {owner['pid']}, which has ended")
                    self.path.unlink(missing_ok=True)
                    continue
                self._cleanup_dir()
                who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {owner.get('started', '?')})"
                raise UsageError(
                    f"--out-dir {out_dir} is in use by another run: {who}; wait for it, stop it, or choose another "
                    f"--out-dir (a stale lock: delete {self.path})"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            # the temporary files of writes killed half-way (the folder is ours now: no live writer of a run)
            for folder in (out_dir, out_dir / SAMPLES):
                for tmp in sweep_temporaries(folder, _alive) if folder.is_dir() else []:
                    print(f"notice: removed {tmp}, left by a write of process {tmp.name.split('.')[-3]}, which ended")
            return

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def _cleanup_dir(self) -> None:
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.out_dir.rmdir()  # only when empty

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        self._cleanup_dir()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def trim_log(path: Path, step: int) -> int:
    """Cuts `path` (log.jsonl) back to the records of steps <= `step`, dropping torn lines, before a resumed run
    appends to it: the steps after the checkpoint are logged again by the resumed run. Returns the records dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("step", 0) > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        tmp = temporary_path(path)
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped


class RecordLog:
    """log.jsonl, appended one whole record per write() call (one os.write of the line), so that a kill leaves whole
    records and at most one torn last line (which `trim_log` drops on resume)."""

    def __init__(self, path: Path, fresh: bool):
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0)
        self.path, self.fd = path, os.open(path, flags, 0o644)

    def write(self, record: dict) -> None:
        os.write(self.fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class StopSignals:
    """While entered, SIGINT, SIGTERM and SIGHUP ask the loop to stop after its current step (`requested` holds the
    first signal's number); a second one stops at once (KeyboardInterrupt). Outside the main thread it does
    nothing (Python delivers signals to the main thread only).

    Python runs a handler only between bytecodes of the main thread, so a process blocked in a collective (a peer
    stopped or hung) would never see one, nor stop after its step. With `blocked_exit`, a watcher thread learns of
    every signal through signal.set_wakeup_fd and calls blocked_exit(signum), which must end the process (the main
    thread cannot be reached), when the handler has not run `grace_s` seconds later, or when the loop has not
    `acknowledge`d the stop within `grace_s` plus twice the longest step (`note_step`) after it ran."""

    def __init__(self, blocked_exit=None, grace_s: float = 5.0) -> None:
        self.requested: int | None = None
        self._previous: dict = {}
        self._blocked_exit, self._grace_s = blocked_exit, grace_s
        self._handled = 0  # signals whose Python handler ran
        self._acknowledged = False
        self._longest_step_s = 0.0
        self._wakeup: tuple[int, int] | None = None
        self._previous_wakeup_fd = -1

    def note_step(self, seconds: float) -> None:
        self._longest_step_s = max(self._longest_step_s, seconds)

    def acknowledge(self) -> None:
        """The loop stops: every rank has agreed to (what the watcher waits for)."""
        self._acknowledged = True

    def _waited_for(self, condition, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        return condition() or self._wakeup is None  # no longer entered: nothing to watch

    def _watch(self, read_fd: int) -> None:
        received = 0
        with os.fdopen(read_fd, "rb", buffering=0) as wakeups:
            while data := wakeups.read(64):  # b"" once __exit__ closed the write end
                received += len(data)
                handled = self._waited_for(lambda n=received: self._handled >= n, self._grace_s)
                if not handled or not self._waited_for(
                    lambda: self._acknowledged, self._grace_s + 2 * self._longest_step_s
                ):
                    self._blocked_exit(data[-1])

    def _handle(self, signum: int, frame) -> None:
        self._handled += 1
        if self.requested is not None:
            self.__exit__()
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): stopped at once")
        self.requested = signum
        # on stdout, with the progress: stderr keeps the one line that ends the run
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint (again: stop at once)",
              flush=True)  # fmt: skip

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
            if self._blocked_exit is not None:
                read_fd, write_fd = os.pipe()
                os.set_blocking(write_fd, False)  # the C handler must never block on it
                self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
                self._wakeup = (read_fd, write_fd)
                threading.Thread(target=self._watch, args=(read_fd,), name="stop-signal watcher", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            _, write_fd = self._wakeup
            self._wakeup = None
            os.close(write_fd)  # the watcher reads EOF, closes its end and ends


def check_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """A warning (stderr) when the disk of `folder` has less free space than `needed_bytes`."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        print(
            f"warning: {folder} has {free / 2**20:.0f} MiB free; {what} needs about {needed_bytes / 2**20:.0f} MiB",
            file=sys.stderr,
        )


__all__ = [
    "LOCK",
    "LOG",
    "RecordLog",
    "RunLock",
    "StopSignals",
    "check_free_space",
    "check_out_dir",
    "clear_run",
    "trim_log",
]
