"""The Python API for distilling a generator of your own: `train_teacher` and `distill` take models as nn.Module
instances or as names (a built-in, or "package.module:callable" with keyword arguments), `Taps` says which maps
are distilled, `list_taps` shows what a model has to tap. Every other setting is a keyword named as the command's
flag (`steps=`, `crop_size=`, `kd=`, ...; `ackd-fast distill --help` lists them) and checked as the flag is.

A module given as an instance is recorded in the checkpoint by its class ("package.module:Class") and the
`*_kwargs` given with it, so that `evaluate`, `export` and `load_generator` rebuild it where that class imports;
elsewhere, load the weights into a module of your own: `ackd_fast.load_generator(path, model=MyNet(...))`.

    >>> import torch
    >>> from torch import nn
    >>> from ackd_fast.api import Taps, list_taps
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 4, 2, 1), nn.ConvTranspose2d(8, 3, 4, 2, 1))
    >>> [(row.path, row.shape) for row in list_taps(net, size=32)]
    [('0', (8, 32, 32)), ('1', (8, 16, 16)), ('2', (3, 32, 32))]
    >>> Taps(teacher=["0", "1"], student=["0", "1"]).flags()
    {'taps': '0,1', 'student_taps': '0,1'}
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from torch import nn

from ackd_fast.assembly import COMMAND_DEFAULTS, Config
from ackd_fast.models import GENERATORS, GeneratorSpec, build_generator
from ackd_fast.models.by_path import import_model, is_import_path
from ackd_fast.models.module_taps import ModuleRow, module_table
from ackd_fast.peers import GeneratorFile, read_generator


@dataclass(frozen=True)
class Taps:
    """Which maps are distilled: `teacher[k]` is pulled towards `student[k]` (through a 1x1 connector), shallow to
    deep; the first pair is only a source of ACKD's refiners. Names are module paths of `named_modules()` ("enc.2",
    "re:REGEX", "PATH@input", "PATH@N") or a built-in's stage names; `Taps.auto()` pairs them from one probe."""

    teacher: Sequence[str]
    student: Sequence[str]

    def __post_init__(self):
        teacher, student = tuple(self.teacher), tuple(self.student)
        for side, names in (("teacher", teacher), ("student", student)):
            if isinstance(getattr(self, side), str) or not all(isinstance(n, str) and n for n in names):
                raise TypeError(f"Taps.{side} must be a sequence of non-empty tap names, got {getattr(self, side)!r}")
            if any("," in n for n in names):
                raise ValueError(f"Taps.{side}: a tap name holds no comma, got {names}")
        if (teacher, student) != ("auto",) * 2 and (len(teacher) != len(student) or len(teacher) < 2):
            raise ValueError(f"Taps needs as many student taps as teacher taps, two or more (the first is only a "
                             f"source); got {len(teacher)} and {len(student)}")  # fmt: skip
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "student", student)

    @classmethod
    def auto(cls) -> Taps:
        """The last map of each scale of both models, paired by resolution at the crop size (`--taps auto`)."""
        return cls(("auto",), ("auto",))

    def flags(self) -> dict[str, str]:
        """The --taps / --student-taps values."""
        return {"taps": ",".join(self.teacher), "student_taps": ",".join(self.student)}


def named_model(model: nn.Module | str | os.PathLike, kwargs: dict | str | None = None,
                ngf: int = 64) -> tuple[nn.Module, str]:  # fmt: skip
    """(module, its name) for a model named any way: a module, a built-in name (at `ngf`), "package.module:callable"
    (with `kwargs`), or a generator file `load_generator` reads; ValueError for anything else."""
    if isinstance(model, nn.Module):
        return model, GeneratorSpec.of_module(model).name
    if model in GENERATORS:
        return build_generator(model, ngf, init="default"), model
    if isinstance(model, str) and is_import_path(model):
        return import_model(model, kwargs), model
    if isinstance(model, (str, os.PathLike)) and Path(model).is_file():
        g = read_generator(model)
        return g.generator, g.name
    raise ValueError(f"{model!r} is no built-in generator ({', '.join(GENERATORS)}), file, package.module:callable "
                     "or nn.Module")  # fmt: skip


def list_taps(model: nn.Module | str | os.PathLike, size: int = 256, kwargs: dict | str | None = None,
              ngf: int = 64) -> list[ModuleRow]:  # fmt: skip
    """Every module of `model` (a module, a built-in name at `ngf`, "package.module:callable" with `kwargs`, or a
    generator file) in the order its forward finishes them, with its output (C, H, W), stride and MACs for a
    `size` x `size` image: what a tap can name (`ackd-fast taps` prints it). One forward of a meta copy where the
    model allows (nothing is allocated)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return module_table(named_model(model, kwargs, ngf)[0], size)


def _config(job: str, flags: dict) -> Config:
    known = {f.name for f in fields(Config)} - {"job"}
    unknown = sorted(set(flags) - known)
    if unknown:
        command = "train-teacher" if job == "teacher" else "distill"
        raise TypeError(f"unknown settings {unknown}: the keywords are the flags of ackd-fast {command} (e.g. "
                        "steps, crop_size, out_dir)")  # fmt: skip
    return Config(job=job, **(COMMAND_DEFAULTS[job] | flags))


def _kwargs_flag(kwargs: dict | str | None) -> str:
    return kwargs if isinstance(kwargs, str) else (json.dumps(kwargs) if kwargs else "")


def train_teacher(generator: nn.Module | str = "resnet_9blocks", *, generator_kwargs: dict | str | None = None,
                  **flags) -> dict:  # fmt: skip
    """Trains a teacher (`ackd-fast train-teacher`): `generator` a module, a built-in name (width `ngf=`) or
    "package.module:callable" with `generator_kwargs`. Returns {"checkpoint", "step", "wall_s", "logs"}.

    Example (a complete one is README's "Your own generator"):
        train_teacher(MyUnet(width=64), generator_kwargs={"width": 64}, dataroot="datasets/edges2shoes",
                      out_dir="runs/teacher", steps=20000)
    """
    from ackd_fast.train import train

    modules = {}
    if isinstance(generator, nn.Module):
        spec = GeneratorSpec.of_module(generator, generator_kwargs if isinstance(generator_kwargs, dict) else None)
        generator, generator_kwargs, modules = spec.name, spec.kwargs, {"generator": generator}
    cfg = _config("teacher", flags | {"generator": generator, "generator_kwargs": _kwargs_flag(generator_kwargs)})
    return train(cfg, modules)


def distill(teacher: str | os.PathLike | nn.Module, student: nn.Module | str | None = None, *,
            taps: Taps | str | None = None, student_kwargs: dict | str | None = None, **flags) -> dict:  # fmt: skip
    """Distils a student from `teacher` (`ackd-fast distill`): a teacher run's ckpt.pt, any generator file
    `load_generator` reads, or a module (frozen in place). `student`: a module, a built-in name (width
    `student_ngf=`), "package.module:callable" with `student_kwargs`, or None for `recipe=`'s. `taps`: a Taps, "auto",
    or None for the built-ins' defaults. Returns {"checkpoint", "step", "wall_s", "logs"}.

    Example:
        distill("runs/teacher/ckpt.pt", MyUnet(width=16), student_kwargs={"width": 16},
                taps=Taps(teacher=["down1", "down2", "mid"], student=["down1", "down2", "mid"]),
                dataroot="datasets/edges2shoes", out_dir="runs/student", steps=20000)
    """
    from ackd_fast.train import train

    modules: dict = {}
    if isinstance(teacher, nn.Module):
        spec = GeneratorSpec.of_module(teacher)
        modules["teacher"] = GeneratorFile(teacher.eval(), spec.name, None, "module given to distill()")
        teacher = f"{spec.name} (a module given to distill())"
    if isinstance(student, nn.Module):
        spec = GeneratorSpec.of_module(student, student_kwargs if isinstance(student_kwargs, dict) else None)
        modules["student"], student, student_kwargs = student, spec.name, spec.kwargs
    if taps == "auto":
        taps = Taps.auto()
    if taps is not None and not isinstance(taps, Taps):
        raise TypeError(f"taps must be a Taps, 'auto' or None, got {taps!r}")
    given = {"teacher": os.fspath(teacher), "student": student or "", "student_kwargs": _kwargs_flag(student_kwargs)}
    return train(_config("distill", flags | given | (taps.flags() if taps else {})), modules)


__all__ = ["Taps", "distill", "list_taps", "named_model", "train_teacher"]
