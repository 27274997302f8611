"""Checkpoint files: written atomically, read without running any code.

What we write holds tensors and plain values only (dict, list, tuple, str, int, float, bool, None): the config as a
dict, the RNG states as tensors. So `torch.load(weights_only=True)` reads every file of ours, and every read of ours
passes `weights_only=True`: a file that needs more (a pickle that would import or call something) is refused with an
error naming it, and nothing in it runs. A write goes to a temporary file beside the target, is fsynced, then renamed
over it: a crash at any moment leaves the previous file or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "ckpt.pt"  # a run's checkpoint, in its out_dir: everything needed to resume
PREVIOUS_CHECKPOINT = "ckpt.prev.pt"  # the one before it, kept for when the newest does not load
BEST = "best.pt"  # the generator of the best evaluation on the validation split (select_on="val")

_PLAIN = (str, int, float, bool, type(None), torch.dtype, torch.device)


def _plain(value: object, where: str) -> object:
    """`value` with numpy scalars made Python scalars (a pickled np.float64 needs numpy to load); TypeError naming the
    first entry that weights_only=True could not read back."""
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN:
        return value
    if isinstance(value, np.generic) and value.ndim == 0 and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; checkpoints take str or int keys")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}; checkpoints hold tensors and plain values "
        "only (dict, list, tuple, str, int, float, bool, None), so that they load with weights_only=True"
    )


class WriteError(OSError):
    """A file that could not be written (a full disk, no permission): the message names the file and the cause, and
    says that the previous file at that path, if any, is intact."""


def temporary_path(path: Path) -> Path:
    """A name beside `path` unique to this process and call, that `sweep_temporaries` recognises."""
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


_TEMPORARY = re.compile(r".+\.(\d+)\.[0-9a-f]{8}\.tmp")


def sweep_temporaries(folder: Path, alive) -> list[Path]:
    """Removes the temporary files in `folder` (not below it) whose writing process has ended (`alive(pid)` is
    False): what a write killed half-way leaves. Returns them."""
    swept = []
    for tmp in folder.glob("*.tmp"):
        match = _TEMPORARY.fullmatch(tmp.name)
        if match and not alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            swept.append(tmp)
    return swept


def write_atomic(path: str | os.PathLike, write, keep_previous: str | os.PathLike | None = None) -> Path:
    """Calls write(f) on a temporary file beside `path`, fsyncs it, then renames it over `path`; with
    `keep_previous`, the file at `path` is first renamed to that name. A failure (WriteError naming the file and the
    cause) leaves the previous file intact; a kill between the two renames leaves it at `keep_previous`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "the previous file there is intact" if path.exists() else "nothing was written there"
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}; {kept}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_writable(folder: Path, what: str) -> None:
    """Creates `folder` (and its parents) when missing, then writes and deletes a probe file in it, so that work
    whose results go there fails before it starts, not after: WriteError naming the folder."""
    probe = folder / f".write-test.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WriteError(
            e.errno, f"cannot write into {what} {folder}: {e.strerror or e}; nothing was computed"
        ) from None


def write_bytes_atomic(path: str | os.PathLike, serialize, keep_previous: str | os.PathLike | None = None) -> Path:
    """serialize(buffer) into memory first (torch's zip writer reports a full disk as an internal error, and some
    C++ writers abort), then the bytes through `write_atomic`."""
    buffer = io.BytesIO()
    serialize(buffer)
    return write_atomic(path, lambda f: f.write(buffer.getbuffer()), keep_previous)


def save_checkpoint(state: dict, path: str | os.PathLike, keep_previous: str | os.PathLike | None = None) -> None:
    """Writes `state` (tensors and plain values, numpy scalars made Python ones; TypeError naming the first entry
    that is neither) to `path` atomically; `keep_previous`: where the file it replaces goes (see write_atomic)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    state = _plain(state, "state")
    write_bytes_atomic(path, lambda f: torch.save(state, f), keep_previous)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The dict saved in `path`, read with weights_only=True on the CPU. FileNotFoundError when there is no such
    file; ValueError naming the file when it is not a readable PyTorch file, is not a dict, or needs more than
    tensors and plain values to load (then nothing in it has run)."""
    obj = load_tensors(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def check_archive(path: Path) -> None:
    """ValueError naming `path` when its zip records could hold more than the file's own size: a compressed record
    (torch.save writes every record stored, and a DEFLATE one expands up to 1000x, allocated before any check of
    ours), or declared sizes that add up to more than the file. So what torch.load allocates is bounded by the
    file's size. A file in torch's legacy (non-zip) format stores its bytes as they are."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a PyTorch checkpoint (truncated or corrupt: {e})") from None
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED or record.compress_size != record.file_size:
            raise ValueError(
                f"refused to load {path}: its record {record.filename!r} is compressed ({record.compress_size} bytes "
                f"that expand to {record.file_size}); torch.save stores every record as it is"
            )
    declared, size = sum(r.file_size for r in records), path.stat().st_size
    if declared > size:
        raise ValueError(f"refused to load {path}: its records declare {declared} bytes in a file of {size}")


def load_tensors(path: str | os.PathLike):
    """Whatever `path` holds, read with weights_only=True on the CPU (see load_checkpoint for the errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # A real pickle that asks for a global (a class, a function) would run code; anything else is bad bytes.
        lines = [line.strip() for line in str(e).splitlines()]
        reason = next((line for line in lines if "Unsupported global" in line or "GLOBAL" in line), "")
        if reason:
            raise ValueError(
                f"refused to load {path}: it holds more than tensors and plain values, and loading it would run "
                f"code from the file ({reason})"
            ) from None
        raise ValueError(f"{path} is not a PyTorch checkpoint (truncated or corrupt)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise ValueError(f"{path} is not a PyTorch checkpoint (truncated or corrupt: {first})") from None


# ----------------------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """The torch, numpy, Python and CUDA (every visible device) generator states, as tensors and ints."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached_gaussian": cached,
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores `rng_state()`'s states. CUDA: the states of the devices that exist now; a run saved with more
    visible GPUs than this one has restores the first ones, one saved with fewer leaves the others as they are."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        for device, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, device)
