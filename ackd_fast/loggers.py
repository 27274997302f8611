"""Opt-in experiment loggers for the training commands (`--logger tensorboard,wandb,trackio`; default none) and the
metrics.csv view of a run's log.jsonl.

log.jsonl stays the run's record; a logger gets a copy of what is written there: the losses every --log-every steps
("train/..."), the evaluation scores ("eval_<split>/..."), the refiners' diagnostics ("diag/tap1/..."), the sample
grids every --sample-every steps ("samples") and the resolved settings once. Each package is imported only when its
logger is named; only rank 0 logs; nothing prompts:

    tensorboard  torch.utils.tensorboard's SummaryWriter, event files in OUT_DIR/tensorboard/
    wandb        a run in OUT_DIR/wandb/, project $WANDB_PROJECT or "ackd-fast", named after OUT_DIR; $WANDB_MODE is
                 honoured, and without it a machine that is not logged in ($WANDB_API_KEY or a netrc entry for the
                 W&B host) runs offline (`wandb sync` uploads it later)
    trackio      trackio's local dashboard, project $TRACKIO_PROJECT or "ackd-fast", named after OUT_DIR

A logger whose package is missing stops the command before it starts, in one line naming the package and its extra.
"""

from __future__ import annotations

import csv
import io
import json
import math
import netrc
import os
from pathlib import Path

import numpy as np

from ackd_fast.checkpoint import write_atomic
from ackd_fast.errors import UsageError, optional_import
from ackd_fast.rundir import METRICS_CSV, TENSORBOARD_DIR

LOGGERS = ("tensorboard", "wandb", "trackio")
PROJECT = "ackd-fast"  # the W&B / trackio project when the environment names none


def parse_loggers(spec: str) -> tuple[str, ...]:
    """The logger names in `spec` ("" or "none": none), in order, each once; UsageError for another name."""
    names = [n.strip() for n in spec.split(",") if n.strip()] if spec.strip() not in ("", "none") else []
    for name in names:
        if name not in LOGGERS:
            raise UsageError(f"--logger takes a comma-separated list of {', '.join(LOGGERS)} (or none); got {spec!r}")
    return tuple(dict.fromkeys(names))


def _scalars(values: dict, prefix: str) -> dict[str, float]:
    """{prefix/key: value} of the finite numbers among `values` (nested dicts flattened with '/')."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out |= _scalars(value, name)
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _picture(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class TensorBoardLogger:
    def __init__(self, out_dir: Path, settings: dict):
        optional_import("tensorboard", "--logger tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run logs again from the step after its checkpoint: TensorBoard drops what it had from there on
        first = settings.get("start_step", 0) + 1
        self.writer = SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR), purge_step=first if first > 1 else None)
        text = "```\n" + json.dumps(settings, indent=1, default=str) + "\n```"
        self.writer.add_text("settings", text, 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def picture(self, step: int, name: str, picture: np.ndarray) -> None:
        self.writer.add_image(name, picture, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def _host(url: str) -> str:
    return url.split("://")[-1].split("/")[0].split(":")[0]


def wandb_logged_in() -> bool:
    """Whether W&B has credentials on this machine without asking: $WANDB_API_KEY, or a netrc entry for its host
    ($WANDB_BASE_URL's, else api.wandb.ai or the installed wandb's default)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    if os.environ.get("WANDB_BASE_URL"):
        hosts = {_host(os.environ["WANDB_BASE_URL"])}
    else:
        hosts = {"api.wandb.ai"}
        try:
            from wandb.sdk.lib.urls import DEFAULT_BASE_URL  # newer wandb: another default host

            hosts.add(_host(DEFAULT_BASE_URL))
        except ImportError:
            pass
    try:
        credentials = netrc.netrc(os.environ.get("NETRC") or None)
    except (OSError, netrc.NetrcParseError):
        return False
    return any(credentials.authenticators(host) is not None for host in hosts)


class WandbLogger:
    def __init__(self, out_dir: Path, settings: dict):
        self.wandb = optional_import("wandb", "--logger wandb")
        # $WANDB_MODE (online, offline, disabled) decides when set (passed on: wandb reads its environment once per
        # process); otherwise online only with credentials
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT, name=out_dir.resolve().name, dir=str(out_dir),
            config=settings, mode=mode, settings=self.wandb.Settings(console="off", silent=True),
        )  # fmt: skip

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def picture(self, step: int, name: str, picture: np.ndarray) -> None:
        self.run.log({name: self.wandb.Image(picture)}, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioLogger:
    def __init__(self, out_dir: Path, settings: dict):
        self.trackio = optional_import("trackio", "--logger trackio")
        self.run = self.trackio.init(project=os.environ.get("TRACKIO_PROJECT") or PROJECT,
                                     name=out_dir.resolve().name, config=settings)  # fmt: skip

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.trackio.log(values, step=step)

    def picture(self, step: int, name: str, picture: np.ndarray) -> None:
        self.trackio.log({name: self.trackio.Image(picture)}, step=step)

    def close(self) -> None:
        self.trackio.finish()


ADAPTERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "trackio": TrackioLogger}


class Loggers:
    """The loggers a run named (none: every call does nothing). `scalars(step, values, prefix)` for losses, scores
    and diagnostics; `picture(step, name, path)` for a sample grid's PNG."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        flat = _scalars(values, prefix)
        for logger in self.loggers:
            logger.scalars(step, flat)

    def picture(self, step: int, name: str, path: str | os.PathLike) -> None:
        if self.loggers:
            picture = _picture(path)
            for logger in self.loggers:
                logger.picture(step, name, picture)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []


def check_loggers(spec: str) -> tuple[str, ...]:
    """The named loggers, each package importable (ImportError in one line naming the package and its extra)
    before the run writes anything."""
    names = parse_loggers(spec)
    for name in names:  # each logger's package has its name
        optional_import(name, f"--logger {name}")
    return names


def open_loggers(spec: str, out_dir: str | os.PathLike, settings: dict) -> Loggers:
    """The loggers `spec` names, started in `out_dir` with the resolved `settings` (a dict of plain values), which
    each records once. Call on rank 0 only."""
    out_dir = Path(out_dir)
    opened = []
    try:
        for name in parse_loggers(spec):
            opened.append(ADAPTERS[name](out_dir, settings))
    except BaseException:
        Loggers(opened).close()
        raise
    return Loggers(opened)


def write_metrics_csv(records: list[dict], path: str | os.PathLike) -> Path:
    """metrics.csv, a view of log.jsonl's records (one row each, in order), written atomically: `step`, `kind`
    (train, eval, diag, resumed), then every number the records hold, nested keys joined with '/' ("diag/tap1/..."),
    columns in the order they first appear; a record leaves the others empty."""
    rows, columns = [], {"step": None, "kind": None}
    for record in records:
        kind = "eval" if "eval" in record else "diag" if "diag" in record else "resumed" if "resumed" in record else (
            "train")  # fmt: skip
        values = {k: v for k, v in record.items() if k not in ("step", "resumed", "changed")}
        row = {"step": record.get("step"), "kind": kind}
        if kind == "eval":
            row["split"] = values.pop("eval")
        row |= _scalars(values, "")
        columns |= dict.fromkeys(row)
        rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, lambda f: f.write(text.getvalue().encode()))


__all__ = ["LOGGERS", "METRICS_CSV", "Loggers", "check_loggers", "open_loggers", "parse_loggers", "write_metrics_csv"]
