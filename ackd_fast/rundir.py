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

from ackd_fast.checkpoint import BEST, CHECKPOINT
from ackd_fast.errors import UsageError

LOCK = ".lock"
LOG = "log.jsonl"
RUN_FILES = (CHECKPOINT, BEST, LOG)  # what a fresh run would replace


def _inside(path: str | os.PathLike, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool, inputs: dict[str, str]) -> None:
    """UsageError when the run may not write into `out_dir`: it holds one of the run's `inputs` ({flag: path}, e.g.
    the teacher), or a finished or started run (ckpt.pt, best.pt or log.jsonl) and neither --resume nor --overwrite
    was given. Touches nothing."""
    for name, path in inputs.items():
        if path and _inside(path, out_dir):
            raise UsageError(
                f"--out-dir {out_dir} holds {name} {path}, an input of this run, which the run would overwrite: "
                "choose another --out-dir"
            )
    held = [name for name in RUN_FILES if (out_dir / name).exists()]
    if held and not (resume or overwrite):
        raise UsageError(
            f"--out-dir {out_dir} holds a run ({', '.join(held)}): add --resume to continue it or --overwrite to "
            "replace it, or choose another --out-dir"
        )


def clear_run(out_dir: Path) -> None:
    """What --overwrite replaces: the previous run's checkpoints, log and samples (the built-in data stays)."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "samples", ignore_errors=True)


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
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
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
    nothing (Python delivers signals to the main thread only)."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
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
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


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
