"""Generators named by import path: `import_model("package.module:callable", kwargs)` builds a user's own network,
a class or a factory function, with keyword arguments given as a dict or as JSON text (what a flag holds). The module
is imported only because a flag or a file names it; everything that can go wrong is a ValueError in one line naming
the path.

A path read from a file (a checkpoint, a sidecar: `named_in=` the file) is called only when it is an nn.Module class
or a function annotated to return one: a file's path and arguments otherwise could name any function of any installed
package (`subprocess:run`, `torch:load` with weights_only false) and run it."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import typing

from torch import nn

# package.module:attribute.path; "<locals>" in the attribute path is what a class defined inside a function records
# (Python's __qualname__): importing it fails with a message that says so
_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.([A-Za-z_]\w*|<locals>))*")
LOCALS = "<locals>"


def is_import_path(name: str) -> bool:
    """Whether `name` has the form `package.module:callable` (a built-in generator's name has no colon)."""
    return isinstance(name, str) and _PATH.fullmatch(name) is not None


def parse_kwargs(kwargs: dict | str | None, what: str = "kwargs") -> dict:
    """`kwargs` as a dict: a dict as it is, JSON text of an object, or None / "" for none."""
    if kwargs is None or kwargs == "":
        return {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} must be a JSON object, e.g. '{{\"width\": 32}}'; got {kwargs!r} ({e})") from None
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{what} must be a JSON object with string keys, got {kwargs!r}")
    return kwargs


def _builds_modules(target: object) -> bool:
    """Whether `target` is an nn.Module class or a function annotated to return one."""
    if inspect.isclass(target):
        return issubclass(target, nn.Module)
    try:
        returns = typing.get_type_hints(target).get("return")
    except Exception:  # an annotation that does not resolve says nothing
        return False
    return inspect.isclass(returns) and issubclass(returns, nn.Module)


def import_model(path: str, kwargs: dict | str | None = None, named_in: str | os.PathLike | None = None) -> nn.Module:
    """`path` ("package.module:callable", the callable an attribute path in the module) imported and called with
    `kwargs`; it must return an nn.Module. `named_in`: the file the path was read from (module docstring)."""
    if not is_import_path(path):
        raise ValueError(f"a model path must look like package.module:callable, got {path!r}")
    kwargs = parse_kwargs(kwargs, f"the keyword arguments of {path}")
    module_name, _, attribute = path.partition(":")
    try:
        target = importlib.import_module(module_name)
    except Exception as e:  # the user's module: anything its import raises
        raise ValueError(f"{path}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    if LOCALS in attribute.split("."):
        raise ValueError(f"{path} is a class defined inside a function, which cannot be imported: pass the module "
                         "itself (ackd_fast.load_generator(path, model=...))")  # fmt: skip
    owner = module_name
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{path}: {owner} has no attribute {part!r}")
        target, owner = getattr(target, part), f"{owner}.{part}"
    if not callable(target):
        raise ValueError(f"{path}: {attribute} is a {type(target).__name__}, not a class or function")
    if named_in is not None and not _builds_modules(target):
        raise ValueError(f"{named_in} names {path}, which is neither an nn.Module class nor a function annotated "
                         "'-> nn.Module'; a model named in a file must be one (anything else could run any code)")
    try:
        model = target(**kwargs)
    except TypeError as e:  # most often keyword arguments it does not take
        raise ValueError(f"{path} rejects the keyword arguments {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path}(**{kwargs}) returned a {type(model).__name__}, not an nn.Module")
    return model


__all__ = ["import_model", "is_import_path", "parse_kwargs"]
