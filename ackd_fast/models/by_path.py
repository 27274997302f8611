"""Generators named by import path (issue 30's groundwork): `import_model("package.module:callable", kwargs)`
builds a user's own network, a class or a factory function, with keyword arguments given as a dict or as JSON
text (what a flag holds). The module is imported only because the path names it; everything that can go wrong is a
ValueError in one line naming the path."""

from __future__ import annotations

import importlib
import json
import re

from torch import nn

_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


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


def import_model(path: str, kwargs: dict | str | None = None) -> nn.Module:
    """`path` ("package.module:callable", the callable an attribute path in the module) imported and called with
    `kwargs`; it must return an nn.Module."""
    if not is_import_path(path):
        raise ValueError(f"a model path must look like package.module:callable, got {path!r}")
    kwargs = parse_kwargs(kwargs, f"the keyword arguments of {path}")
    module_name, _, attribute = path.partition(":")
    try:
        target = importlib.import_module(module_name)
    except Exception as e:  # the user's module: anything its import raises
        raise ValueError(f"{path}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    owner = module_name
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{path}: {owner} has no attribute {part!r}")
        target, owner = getattr(target, part), f"{owner}.{part}"
    if not callable(target):
        raise ValueError(f"{path}: {attribute} is a {type(target).__name__}, not a class or function")
    try:
        model = target(**kwargs)
    except TypeError as e:  # most often keyword arguments it does not take
        raise ValueError(f"{path} rejects the keyword arguments {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path}(**{kwargs}) returned a {type(model).__name__}, not an nn.Module")
    return model


__all__ = ["import_model", "is_import_path", "parse_kwargs"]
