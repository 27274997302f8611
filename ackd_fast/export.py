"""`ackd-fast export`: a trained generator as a file other programs run.

    pth   the generator's state dict alone (our keys) and a JSON sidecar beside it (`g.pth` -> `g.json`: architecture,
          ngf, taps, direction, objective, the run's config), which `ackd_fast.load_generator` reads back
    peer  the state dict in GAN Compression's / OMGD's key layout (`model.N.*`; U-Nets in pytorch-CycleGAN-and-pix2pix's
          nested one), loadable by their `load_network` and `test.py` unchanged
    onnx  `torch.onnx.export(dynamo=True)`, then checked: onnxruntime runs it on random inputs against PyTorch, the
          max abs difference is reported, and over ONNX_TOLERANCE the export fails and writes nothing
    pt2   a `torch.export` ExportedProgram, saved with `torch.export.save`

`dynamic`: H and W dynamic (onnx), H = W dynamic (pt2), in multiples of what the generator needs (4 for the ResNets,
2**num_downs for a U-Net). `io` "uint8" (onnx, pt2): the file takes and gives images as they are stored, uint8
(B, H, W, 3) RGB, with the scaling to [-1, 1], the layout and the clamped, truncated quantisation (`metrics.quantize`,
what `ackd-fast translate` writes) inside; "float" (default): float (B, 3, H, W) in [-1, 1] in and out. Every file
is written to a temporary name and renamed when complete. No export replaces its input, writes into a run's folder,
or replaces an existing file unless asked (`overwrite`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from ackd_fast.checkpoint import WriteError, write_atomic, write_bytes_atomic
from ackd_fast.data import from_uint8
from ackd_fast.errors import UsageError, optional_import
from ackd_fast.metrics import quantize
from ackd_fast.models import ModuleTaps, TappedGenerator
from ackd_fast.models.architectures import ARCHITECTURES, LAYOUT_NAMES
from ackd_fast.models.module_taps import on_copy
from ackd_fast.models.resnet import N_DOWNSAMPLING
from ackd_fast.peers import GeneratorFile, export_sidecar, read_generator, sidecar_path, to_peer_state_dict
from ackd_fast.rundir import SAMPLES, run_files

FORMATS = ("pth", "peer", "onnx", "pt2")
ONNX_TOLERANCE = 1e-4  # max abs difference (fp32) between onnxruntime and PyTorch that an onnx export accepts
UINT8_TOLERANCE = 1  # with --io uint8: one step (a value within 1e-4 of a step's edge may truncate either way)
IO_CHOICES = ("float", "uint8")
MAX_DYNAMIC_SIZE = 4096


class ImageToImage(nn.Module):
    """generator(x) with x the only argument: what the exporters trace."""

    def __init__(self, generator: TappedGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return self.generator(x)


class Uint8Images(nn.Module):
    """generator on images as stored: uint8 (B, H, W, 3) RGB in, uint8 (B, H, W, 3) RGB out, scaled as
    data.from_uint8 reads and quantised as metrics.quantize writes (clamped, truncated)."""

    def __init__(self, generator: TappedGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return quantize(self.generator(from_uint8(x.permute(0, 3, 1, 2)))).permute(0, 2, 3, 1)


def size_multiple(generator: nn.Module) -> int:
    """The input sizes the generator takes are multiples of this: a built-in's from its structure; any other's the
    smallest power of two p for which 3p x 3p and 5p x 5p images come out at their own size (forwards of a copy,
    `on_copy`: on the meta device where the model allows), odd multiples so that p is all the model needs."""
    if isinstance(generator, TappedGenerator) and not isinstance(generator, ModuleTaps):
        return 2 ** getattr(generator, "num_downs", N_DOWNSAMPLING)
    def smallest(copied: nn.Module, example) -> int:
        problem = ""
        for p in (2**k for k in range(9)):
            try:
                if all(copied(example(1, 3, n, n)).shape[-2:] == (n, n) for n in (3 * p, 5 * p)):
                    return p
            except Exception as e:  # too small for it, or sizes that do not fit: the next power of two
                problem = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"{type(generator).__name__} turns no square image of a side 3p or 5p (p a power of two up "
                         f"to 256) into one of its own size{f' (last: {problem})' if problem else ''}")  # fmt: skip

    return on_copy(generator, smallest)


def _check_size(generator: TappedGenerator, size: object) -> int:
    multiple = size_multiple(generator)
    if isinstance(size, bool) or not isinstance(size, int) or size < multiple or size % multiple:
        raise UsageError(f"size (--size) must be a positive multiple of {multiple} for this generator, got {size!r}")
    return size


def _check_targets(checkpoint: str | os.PathLike, fmt: str, out: Path, overwrite: bool) -> None:
    """UsageError when a file the export would write is its input (or the input's sidecar), the other file it
    writes, a file in a run folder, or an existing file (without `overwrite`). Paths are compared resolved, so a
    symlink or `..` does not get past it."""
    targets = [out, sidecar_path(out)] if fmt == "pth" else [out]
    if fmt == "pth" and sidecar_path(out).resolve() == out.resolve():
        raise UsageError(f"--out {out} would be overwritten by its own JSON sidecar ({sidecar_path(out)}): give "
                         "--format pth an --out with another suffix, e.g. .pth")  # fmt: skip
    inputs = {
        Path(checkpoint).resolve(): "the checkpoint being exported",
        sidecar_path(checkpoint).resolve(): f"the sidecar of the checkpoint being exported ({checkpoint})",
    }
    for target in targets:
        resolved = target.resolve()
        if resolved in inputs:
            raise UsageError(f"--out {out} would overwrite {target}, {inputs[resolved]}: choose another --out")
        run = resolved.parent.parent if resolved.parent.name == SAMPLES else resolved.parent
        held = run_files(run)
        if held:  # a file of the run (its checkpoints, log, samples): a sub-folder of the user's own is fine
            raise UsageError(f"--out {out} lies in the run folder {run} (it holds {', '.join(held)}), whose files "
                             "are the run's own: choose an --out outside it")  # fmt: skip
        if target.exists() and not target.is_dir() and not overwrite:
            raise UsageError(f"--out {out}: {target} exists; add --overwrite to replace it, or choose another --out")


def _check_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"cannot write --out {out}: it is a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot write --out {out}: {e.strerror or e}") from None
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"cannot write --out {out}: {out.parent} is not writable")
    return out


def _example(size: int, batch: int = 1, io: str = "float") -> Tensor:
    if io == "uint8":
        return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    # outside [-1, 1] too: the ResNet's input clamp is part of what is exported
    return torch.randn(batch, 3, size, size)


def _model(g: GeneratorFile, io: str) -> nn.Module:
    return (Uint8Images if io == "uint8" else ImageToImage)(g.generator).eval()


def _dims(generator: TappedGenerator, size: int, square: bool, io: str = "float"):
    multiple = size_multiple(generator)
    h = torch.export.Dim("h", min=1, max=MAX_DYNAMIC_SIZE // multiple)
    w = h if square else torch.export.Dim("w", min=1, max=MAX_DYNAMIC_SIZE // multiple)
    height, width = (1, 2) if io == "uint8" else (2, 3)
    return {"x": {height: multiple * h, width: multiple * w}}


@contextlib.contextmanager
def _exporter_output():
    """Around a torch.export call: what it prints passes on when it succeeds; when it fails (pages of graphs, logs and
    advice), a ValueError says in one line what failed (its summary, else its first line)."""
    printed, torch_log = io.StringIO(), logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    except Exception as e:
        text = " ".join(str(e).split())
        summary = re.search(r"Exception summary <class '[\w.]*?(\w+)'>: (.*?)(?= Caused by| For more information|$)",
                            text)  # fmt: skip
        why = f"{summary.group(1)}: {summary.group(2)}" if summary else (str(e).strip().splitlines() or [""])[0]
        hint = "; a forward that branches on a tensor's value does not export" if "data-dependent" in text else ""
        raise ValueError(f"torch.export cannot export the generator ({why[:300] or type(e).__name__}){hint}") from None
    finally:
        torch_log.setLevel(level)
    sys.stderr.write(printed.getvalue())


def export_pth(g: GeneratorFile, out: str | os.PathLike) -> list[Path]:
    """The state dict (our keys) to `out` and its sidecar to `sidecar_path(out)`."""
    state = {k: v.detach().clone() for k, v in g.generator.state_dict().items()}
    write_bytes_atomic(out, lambda f: torch.save(state, f))
    side = sidecar_path(out)
    write_atomic(side, lambda f: f.write(json.dumps(export_sidecar(g), indent=1).encode()))
    return [Path(out), side]


def export_peer(g: GeneratorFile, out: str | os.PathLike) -> list[Path]:
    """The state dict in the peers' layout (the architecture's peer_layout) to `out`."""
    state = {k: v.detach().clone() for k, v in to_peer_state_dict(g.generator, g.name).items()}
    write_bytes_atomic(out, lambda f: torch.save(state, f))
    return [Path(out)]


@torch.no_grad()
def onnx_max_abs_diff(path: str | os.PathLike, model: nn.Module, sizes: list[int], io: str = "float") -> float:
    """Max abs difference between onnxruntime (CPU) running `path` and the PyTorch `model` (what was exported),
    over one random input of each size."""
    onnxruntime = optional_import("onnxruntime", "checking an ONNX export")

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for s in sizes:
        x = _example(s, io=io)
        (y,) = session.run(None, {name: x.numpy()})
        worst = max(worst, (torch.from_numpy(y).float() - model(x).float()).abs().max().item())
    return worst


def export_onnx(g: GeneratorFile, out: str | os.PathLike, size: int, dynamic: bool,
                io: str = "float") -> tuple[list[Path], float]:  # fmt: skip
    """ONNX through torch.onnx.export(dynamo=True), checked against PyTorch by onnxruntime; ValueError (and
    nothing written) when they differ by more than ONNX_TOLERANCE (io "uint8": UINT8_TOLERANCE)."""
    for module in ("onnx", "onnxscript", "onnxruntime"):  # the exporter's and the check's
        optional_import(module, "--format onnx")
    out = Path(out)
    model = _model(g, io)
    tolerance = UINT8_TOLERANCE if io == "uint8" else ONNX_TOLERANCE
    tmp = out.with_name(out.name + ".tmp.onnx")
    try:
        with _exporter_output():
            program = torch.onnx.export(
                model,
                (_example(size, io=io),),
                dynamo=True,
                dynamic_shapes=_dims(g.generator, size, square=False, io=io) if dynamic else None,
                input_names=["image"],
                output_names=["output"],
                verbose=False,
            )
        try:
            program.save(str(tmp))
        except OSError as e:
            raise WriteError(e.errno, f"cannot write {out}: {e.strerror or e}; nothing was written there") from None
        sizes = [size] + ([size + size_multiple(g.generator)] if dynamic else [])
        diff = onnx_max_abs_diff(tmp, model, sizes, io)
        if not diff <= tolerance:
            raise ValueError(
                f"the ONNX export differs from PyTorch by {diff:.3g} (max abs, onnxruntime on sizes {sizes}), over "
                f"the tolerance {tolerance:g}; nothing written to {out}"
            )
        write_atomic(out, lambda f: f.write(tmp.read_bytes()))
    finally:
        tmp.unlink(missing_ok=True)
    return [out], diff


def export_pt2(g: GeneratorFile, out: str | os.PathLike, size: int, dynamic: bool, io: str = "float") -> list[Path]:
    """A torch.export ExportedProgram (dynamic H = W with `dynamic`), saved with torch.export.save."""
    with _exporter_output():
        program = torch.export.export(
            _model(g, io), (_example(size, io=io),),
            dynamic_shapes=_dims(g.generator, size, square=True, io=io) if dynamic else None,
        )  # fmt: skip
    write_bytes_atomic(out, lambda f: torch.export.save(program, f))
    return [Path(out)]


def export(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike, size: int = 256,
           dynamic: bool = False, overwrite: bool = False, io: str = "float") -> dict:  # fmt: skip
    """Exports the generator of `checkpoint` (any file `load_generator` reads) in format `fmt` (one of FORMATS) to
    `out`. Returns what was written: {"format", "files", "generator", "ngf", ...; onnx: "max_abs_diff"}.
    Bad input (an unknown format, a size the generator cannot take, an unwritable path, a file without a generator)
    raises a ValueError (FileNotFoundError for a missing checkpoint) with a one-line message; a bad flag value
    (format, size, an --out that is the input, its own sidecar, in a run folder, or an existing file without
    `overwrite`) is a UsageError. Nothing is written before every check has passed."""
    if fmt not in FORMATS:
        raise UsageError(f"format (--format) must be one of {FORMATS}, got {fmt!r}")
    if io not in IO_CHOICES:
        raise UsageError(f"io (--io) must be one of {IO_CHOICES}, got {io!r}")
    if io != "float" and fmt not in ("onnx", "pt2"):
        raise UsageError(f"--io {io} is for --format onnx or pt2 (a program with its input and output); --format "
                         f"{fmt} holds weights only")  # fmt: skip
    if not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be a bool, got {type(dynamic).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__}")
    _check_targets(checkpoint, fmt, Path(out), overwrite)
    g = read_generator(checkpoint)
    if fmt == "peer" and g.name not in ARCHITECTURES:
        raise UsageError(f"--format peer writes the peers' key layouts, which exist for the built-in generators only; "
                         f"{checkpoint} holds {g.label}: export pth, onnx or pt2")  # fmt: skip
    _check_size(g.generator, size)
    out = _check_out(out)
    result: dict = {"format": fmt, "checkpoint": str(checkpoint), "generator": g.name, "ngf": g.ngf,
                    "source": g.source} | ({"kwargs": g.kwargs} if g.kwargs else {})  # fmt: skip
    if fmt == "pth":
        files = export_pth(g, out)
    elif fmt == "peer":
        files = export_peer(g, out)
        result["layout"] = LAYOUT_NAMES[ARCHITECTURES[g.name].peer_layout]
    elif fmt == "onnx":
        files, result["max_abs_diff"] = export_onnx(g, out, size, dynamic, io)
    else:
        files = export_pt2(g, out, size, dynamic, io)
    if fmt in ("onnx", "pt2"):
        result |= {"size": size, "dynamic": dynamic, "io": io}
    result["files"] = [str(f) for f in files]
    return result
