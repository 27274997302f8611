"""Flags described once: a dataclass field made with `flag(default, help)` is both a setting of the Python API and a
command-line flag (--name-with-dashes), and `add_flags` builds a command's parser from the fields. Config (training),
EvaluationSettings (evaluate), DemoConfig and StudyConfig are described this way."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields


def flag(default, help: str, only: str = ""):
    """A field that is also a flag: its one description, and `only`, the job whose command alone takes it
    ("teacher", "distill"; "": every command built from the class)."""
    return field(default=default, metadata={"help": help, "only": only})


def flag_name(name: str, negative: bool = False) -> str:
    """The command-line flag of field `name`: --name-with-dashes (--no-name-with-dashes for a bool's off)."""
    return ("--no-" if negative else "--") + name.replace("_", "-")


_KINDS = {"int": int, "float": float, "str": str, "float | None": float, "int | None": int}


def add_flags(parser: argparse.ArgumentParser, cls, job: str = "", defaults: dict | None = None) -> None:
    """A --flag for every field of dataclass `cls` made with `flag` that `job` takes, with `defaults` overriding the
    fields' defaults (a command's own, e.g. its output folder)."""
    defaults = defaults or {}
    for f in fields(cls):
        if "help" not in f.metadata or f.metadata["only"] not in ("", job):
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        name, text = flag_name(f.name), f.metadata["help"]
        if f.type in (bool, "bool"):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            kind = _KINDS[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(name, type=kind, default=default, help=f"{text} (default: %(default)s)")


def from_args(cls, args: argparse.Namespace, **given):
    """An instance of dataclass `cls` from the parsed flags that are its fields, and `given`."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names} | given)


__all__ = ["add_flags", "flag", "flag_name", "from_args"]
