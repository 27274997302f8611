"""A config file for every command (`--config FILE`, issue 30 point 6): YAML or JSON whose keys are the command's
flag names (`crop-size`, `crop_size` or `--crop-size`). The file's values become the flags' defaults, so a flag on the
command line overrides the file; `--print-config` prints the resolved flags as YAML (a file `--config` reads back)
and exits. The file is read with yaml.safe_load, which builds plain values only: nothing in it runs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from dataclasses import fields
from pathlib import Path

from ackd_fast.errors import UsageError

CONFIG_FLAGS = ("--config", "--print-config")
_NOT_SETTINGS = {"help", "config", "print_config", "func", "command"}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="", help="YAML or JSON file of this command's flags (keys: the flag "
                        "names); flags on the command line override it")  # fmt: skip
    parser.add_argument("--print-config", action="store_true", help="print the resolved flags as YAML and exit")


def read_config(path: str | os.PathLike) -> dict:
    """The mapping in `path` (safe YAML, of which JSON is a part); UsageError naming the file otherwise."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path}: cannot read it ({e.strerror if isinstance(e, OSError) else e})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"--config {path} is not YAML or JSON{at}: {getattr(e, 'problem', e)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"--config {path} must hold a mapping of flag names to values, not a {type(values).__name__}")
    return values


def _settings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The command's flags that a file may set, by dest."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _NOT_SETTINGS}


def _checked(path: Path, key: str, action: argparse.Action, value: object) -> object:
    flag = action.option_strings[-1] if action.option_strings[0].startswith("--no-") else action.option_strings[0]
    bad = f"--config {path}: {key!r} ({flag}) must be"
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(f"{bad} true or false, got {value!r}")
        return value if not isinstance(action, argparse._StoreFalseAction) else not value
    if action.dest.endswith("kwargs") and isinstance(value, dict):  # a model's keyword arguments, as YAML
        return json.dumps(value)
    if isinstance(action, argparse._StoreConstAction):
        if value not in (action.const, action.default):
            raise UsageError(f"{bad} {action.const!r}, got {value!r}")
        return value
    items = value if isinstance(value, list) and action.nargs in ("+", "*") else None
    if action.nargs in ("+", "*") and items is None:
        items = [value]
    kind = action.type or str
    for item in items if items is not None else [value]:
        ok = (isinstance(item, (int, float)) and not isinstance(item, bool)) if kind is float else (
            isinstance(item, int) and not isinstance(item, bool) if kind is int else isinstance(item, str))
        if not ok:
            what = {int: "integer", float: "number", str: "string"}.get(kind, getattr(kind, "__name__", str(kind)))
            what = f"a list of {what}s" if items is not None else f"{'an' if what[0] in 'aeiou' else 'a'} {what}"
            raise UsageError(f"{bad} {what}, got {item!r}")
        if action.choices is not None and item not in action.choices:
            raise UsageError(f"{bad} one of {', '.join(map(str, action.choices))}, got {item!r}")
    if items is not None:
        return [float(i) if kind is float else i for i in items]
    return float(value) if kind is float else value


def apply_config(parser: argparse.ArgumentParser, path: str | os.PathLike) -> None:
    """The values of config file `path` as the defaults of command `parser`'s flags (checked as the flags' own
    types and choices; an unknown key is refused naming the nearest flags). A flag the file gives is no longer
    required on the command line."""
    path = Path(path)
    settings = _settings(parser)
    for key, value in read_config(path).items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in settings:
            near = difflib.get_close_matches(dest, list(settings), n=3, cutoff=0.6)
            hint = f"; nearest: {', '.join('--' + n.replace('_', '-') for n in near)}" if near else ""
            raise UsageError(f"--config {path}: {key!r} is not a flag of this command{hint}")
        action = settings[dest]
        parser.set_defaults(**{dest: _checked(path, str(key), action, value)})
        action.required = False


def resolved_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command's flags as the parse resolved them, as YAML with the flag names as keys."""
    import yaml

    values = {dest.replace("_", "-"): getattr(args, dest) for dest in _settings(parser) if hasattr(args, dest)}
    return yaml.safe_dump(values, sort_keys=False)


def run_config(cfg) -> str:
    """A training Config as the YAML a run writes into its folder (config.yaml): the flags its command takes, by
    flag name, which `--config` reads back."""
    import yaml

    values = {f.name.replace("_", "-"): getattr(cfg, f.name) for f in fields(cfg)
              if "help" in f.metadata and f.metadata["only"] in ("", cfg.job)}  # fmt: skip
    return yaml.safe_dump(values, sort_keys=False)


def config_path_in(argv: list[str]) -> str:
    """The value of --config in a command's arguments ("" when not given)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return ""


__all__ = ["CONFIG_FLAGS", "add_config_flags", "apply_config", "config_path_in", "read_config", "resolved_config",
           "run_config"]
