"""What a run records of its generator so that any later command rebuilds it from the checkpoint alone: a built-in
architecture and its width, or an import path and its keyword arguments."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from torch import nn

from ackd_fast.models.architectures import GENERATORS, build_generator
from ackd_fast.models.by_path import import_model, is_import_path, parse_kwargs


@dataclass(frozen=True)
class GeneratorSpec:
    """name: a built-in generator (models.GENERATORS) or "package.module:callable". ngf: a built-in's width (None
    for an import path). kwargs: an import path's keyword arguments (JSON values)."""

    name: str
    ngf: int | None = None
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name in GENERATORS:
            if isinstance(self.ngf, bool) or not isinstance(self.ngf, int) or self.ngf < 1:
                raise ValueError(f"generator {self.name} needs ngf, a positive int; got {self.ngf!r}")
            if self.kwargs:
                raise ValueError(f"generator {self.name} is built-in: it takes ngf, not kwargs {self.kwargs}")
        elif is_import_path(self.name):
            object.__setattr__(self, "kwargs", parse_kwargs(self.kwargs, f"the keyword arguments of {self.name}"))
            object.__setattr__(self, "ngf", None)  # a width is the model's own business
            try:
                json.dumps(self.kwargs)
            except (TypeError, ValueError) as e:
                raise ValueError(f"the keyword arguments of {self.name} must be JSON values (a checkpoint records "
                                 f"them): {e}") from None  # fmt: skip
        else:
            raise ValueError(f"a generator must be one of {', '.join(GENERATORS)} or package.module:callable, got "
                             f"{self.name!r}")  # fmt: skip

    @property
    def builtin(self) -> bool:
        return self.name in GENERATORS

    @property
    def label(self) -> str:
        """How summaries and reports name it: "resnet_9blocks ngf 64", "mypkg.nets:Unet(width=32)"."""
        if self.builtin:
            return f"{self.name} ngf {self.ngf}"
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"

    def build(self, init: str = "normal", named_in: str | os.PathLike | None = None) -> nn.Module:
        """The generator: a built-in initialised as `init` says; an import path's model as it initialises itself.
        `named_in`: the file the spec was read from (by_path.import_model)."""
        if self.builtin:
            return build_generator(self.name, self.ngf, init=init)
        return import_model(self.name, self.kwargs, named_in=named_in)

    def record(self) -> dict:
        """What a checkpoint's "generator" entry and a sidecar store (a built-in's entry as before: name, ngf)."""
        return {"name": self.name, "ngf": self.ngf} | ({} if self.builtin else {"kwargs": self.kwargs})

    @classmethod
    def of_module(cls, model: nn.Module, kwargs: dict | None = None) -> GeneratorSpec:
        """What a checkpoint records of a module given as an instance: its class's import path and `kwargs` (a class
        defined inside a function records a path no other code imports: load such a run with `model=`)."""
        return cls(f"{type(model).__module__}:{type(model).__qualname__}", None, kwargs or {})

    @classmethod
    def from_record(cls, record: dict, where: str | os.PathLike) -> GeneratorSpec:
        """The spec a checkpoint or sidecar records; ValueError naming `where` when it is not one."""
        try:
            return cls(record.get("name"), record.get("ngf"), record.get("kwargs") or {})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: its generator record is not valid: {e}") from None


__all__ = ["GeneratorSpec"]
