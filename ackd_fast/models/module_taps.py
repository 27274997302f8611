"""Taps named by module path, for any image-to-image network (issue 30's groundwork): `ModuleTaps(model, taps)`
gives a model that is no `TappedGenerator` the interface the Distiller reads (`tap_names`, `tap_channels`,
`forward(x, taps=..., replace=...)`), through hooks registered once, on the model as it is given (resolve and wrap
before DDP or torch.compile wrap it: under DDP every path gains a `module.` prefix, and hooks added after compiling
are not traced).

A tap name is a path of `model.named_modules()` ("encoder.down.2"), or "re:" and a regular expression that must
match exactly one path in full. A suffix after "@" says what of that module is the tap: none, its output; "@input",
its first input; "@N", element N of a tuple or list output; "@KEY", entry KEY of a dict output.

Replacing a tap (`replace=`) takes one of two paths, `replace_path` says which:
- "hook": the whole forward runs with hooks swapping the tap's value in, so the layers before the tap run for
  nothing (a TappedGenerator starts at the tap). Works for any model and any tap.
- "split": a `torch.fx` trace of the model in which each tap module (part "" or "input") is one opaque call, the
  replaced values made inputs of the graph and all that the output no longer needs dropped: only what runs after
  the tap, and what it still reads from before it (a U-Net's earlier skips), runs. The same ops as the hook path's
  on what remains, so the same output and gradients. It needs a model that traces (no Python branches on tensor
  values) and replaced taps whose part is "" or "input". In train mode the layers before the tap do not run at all:
  their BatchNorm statistics stay as they are and their dropout draws nothing from the RNG (so later masks differ).
  In-place ops on a value the rest still reads are kept, as far as their names tell (a trailing "_", an `inplace`
  flag); one through a view of such a value, or by an op named otherwise, is lost: use "hook" for such a model.
- "auto" (default): the split where it applies, else the hook path; `replace_path_used` says which and why.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.fx
from torch import Tensor, nn

from ackd_fast.models.base import TappedGenerator

INPUT = "input"
T = TypeVar("T")
REPLACE_PATHS = ("auto", "hook", "split")


@dataclass(frozen=True)
class Tap:
    """A resolved tap: its name as given, the module path and what of the module it is ("" = its output)."""

    name: str
    path: str
    part: str = ""


def resolve_tap(model: nn.Module, name: str, size: int | None = None) -> Tap:
    """`name` resolved against `model.named_modules()`; ValueError naming the nearest paths when it fits none (with
    their output (C, H, W) for a `size` x `size` image when a size is given), and every match when a "re:" pattern
    matches more than one."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a tap name must be a non-empty str, got {name!r}")
    spec, _, part = name.partition("@")
    paths = [path for path, _ in model.named_modules() if path]
    if spec.startswith("re:"):
        try:
            pattern = re.compile(spec[3:])
        except re.error as e:
            raise ValueError(f"tap {name!r}: {spec[3:]!r} is not a regular expression ({e})") from None
        found = [p for p in paths if pattern.fullmatch(p)]
        if len(found) != 1:
            shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
            raise ValueError(f"tap {name!r} must match exactly one module path, and it matches "
                             f"{len(found) or 'none'}{': ' + shown if found else ''}")  # fmt: skip
        path = found[0]
    elif spec in paths:
        path = spec
    else:
        near = difflib.get_close_matches(spec, paths, n=5, cutoff=0.5) or paths[:5]
        shapes = _shapes_or_none(model, size) if size else {}
        shown = [f"{p} ({' x '.join(map(str, shapes[p]))})" if shapes.get(p) else p for p in near]
        raise ValueError(f"tap {name!r}: {type(model).__name__} has no module {spec!r}; nearest: {', '.join(shown)}")
    return Tap(name, path, part)


def _shapes_or_none(model: nn.Module, size: int) -> dict[str, tuple[int, int, int] | None]:
    """Each module's output (C, H, W) at `size` (module_table), or nothing when the model cannot be probed: only
    an error message's detail."""
    try:
        return {row.path: row.shape for row in module_table(model, size)}
    except ValueError:
        return {}


def _part_of(value, part: str, tap: Tap):
    if part in ("", INPUT):
        return value
    if isinstance(value, dict):
        if part not in value:
            raise ValueError(f"tap {tap.name!r}: the output of {tap.path!r} has no key {part!r} ({sorted(value)})")
        return value[part]
    if isinstance(value, (tuple, list)) and part.isdigit() and int(part) < len(value):
        return value[int(part)]
    raise ValueError(f"tap {tap.name!r}: the output of {tap.path!r} is a {type(value).__name__}, which has no "
                     f"element {part!r}")  # fmt: skip


def _with_part(value, part: str, new):
    """`value` with `part` (as _part_of reads it) replaced by `new`."""
    if part in ("", INPUT):
        return new
    if isinstance(value, dict):
        return {**value, part: new}
    items = list(value)
    items[int(part)] = new
    return type(value)(items) if isinstance(value, tuple) else items


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def on_copy(model: nn.Module, run: Callable[[nn.Module, Callable[..., Tensor]], T], train: bool = False) -> T:
    """`run(copy, example)` on a copy of `model` on the meta device (shapes only: nothing is allocated or computed),
    or, where its forward needs values that meta tensors do not have (`.item()`, a Python branch on a tensor), on a
    CPU copy; without gradients, `example(*shape)` giving an input on the copy's device (on the CPU random values
    from a fixed seed: the global RNG is left alone). What the CPU run raises, raises."""
    with torch.no_grad():
        try:
            return run(copy.deepcopy(model).to("meta").train(train), lambda *shape: torch.empty(shape, device="meta"))
        except Exception:  # the user's forward on meta tensors: whatever it raises, the CPU run tells for real
            pass
        seed = torch.Generator().manual_seed(0)
        return run(copy.deepcopy(model).to("cpu").train(train), lambda *shape: torch.randn(shape, generator=seed))


def _changes_live(root: nn.Module, node: torch.fx.Node) -> bool:
    """Whether `node` is an in-place op (by its name's trailing "_" or an `inplace` flag) on a value something else
    still reads: dead-code elimination would drop it once its own result is unused, and the value would change
    (the pix2pix U-Net's LeakyReLU(inplace=True) on a skip). Conservative: the other readers may die later."""
    if node.op == "call_module":
        inplace = getattr(root.get_submodule(node.target), "inplace", False) is True
    elif node.op in ("call_method", "call_function"):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        inplace = node.kwargs.get("inplace") is True or (name.endswith("_") and not name.endswith("__"))
    else:
        return False
    target = node.args[0] if node.args else None
    return inplace and isinstance(target, torch.fx.Node) and len(target.users) > 1


class _Root(nn.Module):
    """What is traced: the model called as ModuleTaps calls it, so its other arguments keep their defaults."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class _TapTracer(torch.fx.Tracer):
    """The default tracer, but the tap modules are single calls (the points the graph is cut at)."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


class ModuleTaps(TappedGenerator):
    """`model` with taps named by module path (module docstring). `model` itself is kept unchanged but for the
    hooks, which do nothing outside this wrapper's forward; `detach()` removes them and returns it.

    `replace_path` ("auto", "hook" or "split") picks how `replace=` runs (module docstring). A forced "split" on a
    model that does not trace is a ValueError here, one replacing a tap that cannot be split one at the call. A
    call that also reads taps it does not replace takes the hook path (the split graph outputs only the image).
    `size`: the image side a tap name that fits no module is reported at (the nearest paths with their shapes)."""

    def __init__(self, model: nn.Module, taps: Sequence[str], replace_path: str = "auto", size: int | None = None):
        nn.Module.__init__(self)  # a TappedGenerator without stages: the model is the whole network
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if replace_path not in REPLACE_PATHS:
            raise ValueError(f"replace_path must be one of {REPLACE_PATHS}, got {replace_path!r}")
        names = list(taps)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"taps must name one or more distinct taps, got {names}")
        self.model = model
        self.taps = {name: resolve_tap(model, name, size) for name in names}
        self.replace_path = replace_path
        # Split graphs by (replaced taps, model.training): a plain dict, not submodules, so that their (shared)
        # parameters are neither counted twice nor saved under a second name.
        self._graphs: dict[tuple[frozenset[str], bool], torch.fx.GraphModule] = {}
        # By model.training: (why the model does not trace, "" when it does; the module paths its trace calls).
        self._traced: dict[bool, tuple[str, set[str]]] = {}
        self._call: tuple[set[str], dict[str, Tensor], dict[str, Tensor]] | None = None  # (taps, replace, features)
        self._handles = []
        modules = dict(model.named_modules())
        for tap in self.taps.values():
            module = modules[tap.path]
            if tap.part == INPUT:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(tap)))
            else:
                self._handles.append(module.register_forward_hook(self._output_hook(tap)))
        self.shapes: dict[str, tuple[int, ...]] = {}  # each tap's (C, H, W) at the size of the last `probe`
        if replace_path == "split" and self._trace_check()[0]:
            raise ValueError(f"replace_path 'split': {self._trace_check()[0]}")

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(self.taps)

    def _check_names(self, arg: str, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self.taps]
        if unknown:
            raise ValueError(f"{arg} names unknown taps {unknown}; this ModuleTaps has taps {self.tap_names}")

    def _output_hook(self, tap: Tap):
        def hook(module, args, output):
            if self._call is None or (tap.name not in self._call[0] and tap.name not in self._call[1]):
                return None
            wanted, replace, features = self._call
            if tap.name in replace:
                output = _with_part(output, tap.part, replace[tap.name])
            if tap.name in wanted:
                features[tap.name] = _part_of(output, tap.part, tap)
            return output if tap.name in replace else None

        return hook

    def _input_hook(self, tap: Tap):
        def hook(module, args):
            if self._call is None or not args:
                return None
            wanted, replace, features = self._call
            if tap.name in replace:
                args = (replace[tap.name], *args[1:])
            if tap.name in wanted:
                features[tap.name] = args[0]
            return args if tap.name in replace else None

        return hook

    def forward(
        self, x: Tensor, taps: Iterable[str] = (), replace: Mapping[str, Tensor] | None = None
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The model's output, or (output, {tap: feature}) when `taps` names any; a replaced tap reports the map
        put in its place. A tap the forward never reached is a ValueError naming it."""
        taps, replace = tuple(taps), dict(replace or {})
        self._check_names("taps", taps)
        self._check_names("replace", replace)
        if replace and set(taps) <= set(replace) and self._splits(replace):
            names = tuple(n for n in self.taps if n in replace)  # the graph's inputs after x, in tap order
            out = self._split_graph(names)(x, *(replace[n] for n in names))
            return (out, {n: replace[n] for n in taps}) if taps else out
        features: dict[str, Tensor] = {}
        self._call = (set(taps), replace, features)
        try:
            out = self.model(x)
        finally:
            self._call = None
        missed = [name for name in taps if name not in features]
        if missed:
            raise ValueError(f"taps {missed} were not reached by the forward of {type(self.model).__name__}")
        return (out, features) if taps else out

    # ----------------------------------------------------------------------------------- the split at replaced taps

    @property
    def replace_path_used(self) -> str:
        """The path `replace=` takes: "hook", "split", or under "auto" "hook (why)" where the model does not trace
        and "split (hook for ...)" naming the taps that cannot be split; for a run's opening summary."""
        if self.replace_path == "hook":
            return "hook"
        why, _ = self._trace_check()
        if why:
            return f"hook ({why})"
        unsplit = [reason for reason in map(self._unsplittable, self.taps) if reason]
        return f"split (hook for {'; '.join(unsplit)})" if unsplit else "split"

    def _trace_check(self) -> tuple[str, set[str]]:
        """(why `model` does not trace, "" when it does; the module paths its trace calls), from one trace in each
        mode (a branch on `self.training` may trace in one and not the other)."""
        mode = self.model.training
        if mode not in self._traced:
            try:
                graph = self._trace()
                self._traced[mode] = ("", {n.target[len("model.") :] for n in graph.nodes if n.op == "call_module"})
            except Exception as e:  # tracing runs the user's forward: anything may stop it
                self._traced[mode] = (f"torch.fx cannot trace {type(self.model).__name__}: {_first_line(e)}", set())
        return self._traced[mode]

    def _unsplittable(self, name: str) -> str:
        """Why replacing tap `name` cannot take the split, or ""."""
        tap = self.taps[name]
        if tap.part not in ("", INPUT):
            return f"{name!r}: a split replaces a module's output or input, not part of it"
        if tap.path not in self._trace_check()[1]:
            return f"{name!r}: {tap.path!r} is no call of its own in the trace (inside another tap's module?)"
        return ""

    def _splits(self, replace: Mapping[str, Tensor]) -> bool:
        """Whether replacing these taps takes the split; a forced split that cannot is a ValueError."""
        if self.replace_path == "hook":
            return False
        why = self._trace_check()[0] or next(filter(None, map(self._unsplittable, replace)), "")
        if why and self.replace_path == "split":
            raise ValueError(f"replace_path 'split' cannot replace {sorted(replace)} in {type(self.model).__name__}: "
                             f"{why}")  # fmt: skip
        return not why

    def _trace(self) -> torch.fx.Graph:
        leaves = {f"model.{t.path}" for t in self.taps.values() if t.part in ("", INPUT)}
        return _TapTracer(leaves).trace(_Root(self.model))

    def _split_graph(self, names: tuple[str, ...]) -> torch.fx.GraphModule:
        """The model from the replaced taps `names` on, as a GraphModule taking (x, *their values). Cached by the
        taps and the mode, as the trace bakes in the Python branches on `self.training` (not by the taps a call
        reads: such calls take the hooks)."""
        key = (frozenset(names), self.model.training)
        if key not in self._graphs:
            graph = self._trace()
            # A node nothing reads is a statement (x.clamp_(...), say), kept as it may change what the output reads.
            statements = {n for n in graph.nodes if not n.users}
            first = next(n for n in graph.nodes if n.op != "placeholder")
            for i, name in enumerate(names):
                tap = self.taps[name]
                with graph.inserting_before(first):
                    value = graph.placeholder(f"replace_{i}")
                for node in [n for n in graph.nodes if n.op == "call_module" and n.target == f"model.{tap.path}"]:
                    if tap.part == INPUT:
                        node.args = (value, *node.args[1:])
                    else:
                        node.replace_all_uses_with(value)
            split = torch.fx.GraphModule(_Root(self.model), graph, class_name=f"{type(self.model).__name__}Split")

            def keep(node: torch.fx.Node) -> bool:  # what dead-code elimination must not drop, though nothing reads it
                return node in statements or node.is_impure() or _changes_live(split, node)

            split.graph.eliminate_dead_code(is_impure_node=keep)
            split.delete_all_unused_submodules()
            split.recompile()
            self._graphs[key] = split
        return self._graphs[key]

    def _apply(self, fn, recurse=True):
        # A GraphModule holds the buffers it reads (get_attr) as the tensors they were when it was built; a move or
        # cast swaps the model's for new ones, so the graphs are rebuilt on the next call. (Move the wrapper, not
        # the bare model, for this to happen.)
        self._graphs.clear()
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def probe(self, size: int, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
        """Each tap's (C, H, W) for a `size` x `size` image, from one forward of a copy (`on_copy`: on the meta
        device where the model allows); kept in `shapes`."""
        def run(model: nn.Module, example) -> dict[str, Tensor]:
            tapped = ModuleTaps(model, list(self.taps), replace_path="hook")
            return tapped(example(1, in_channels, size, size), taps=self.tap_names)[1]

        try:
            features = on_copy(self.model, run)
        except Exception as e:  # the user's forward: whatever it raises, in one line
            what = type(self.model).__name__
            raise ValueError(f"{what} cannot be probed at {size}x{size} ({_first_line(e)})") from None
        for name, feature in features.items():
            if not isinstance(feature, Tensor) or feature.dim() != 4:
                raise ValueError(f"tap {name!r} is not a (B, C, H, W) feature map: got {type(feature).__name__} "
                                 f"{tuple(getattr(feature, 'shape', ()))}")  # fmt: skip
        self.shapes = {name: tuple(f.shape[1:]) for name, f in features.items()}
        return self.shapes

    def tap_channels(self) -> dict[str, int]:
        """Channels of each tap's map, from `shapes` (a probe at 64 px first when there has been none)."""
        if not self.shapes:
            self.probe(64)
        return {name: shape[0] for name, shape in self.shapes.items()}

    def detach(self) -> nn.Module:
        """Removes the hooks and returns the model as it was given (what an export should see)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.model


@dataclass(frozen=True)
class ModuleRow:
    """One module of `module_table`: its path, class, output (C, H, W) (None when the output is no image-like map),
    stride (input side / output side) and MACs per image, its children's included."""

    path: str
    kind: str
    shape: tuple[int, int, int] | None
    stride: float | None
    macs: int


@torch.no_grad()
def _meta_forward(model: nn.Module, size: int, in_channels: int) -> tuple[list[tuple[str, nn.Module, object]], dict]:
    """(path, module, output) of every module in the order the forward finishes them, and the FLOPs by module, from
    one forward of a copy at `size` x `size` (`on_copy`)."""
    from ackd_fast.metrics import flop_counter

    def run(copied: nn.Module, example) -> tuple[list[tuple[str, nn.Module, object]], dict]:
        finished: list[tuple[str, nn.Module, object]] = []
        for path, m in copied.named_modules():
            if path:
                m.register_forward_hook(lambda mod, args, out, path=path: finished.append((path, mod, out)))
        with flop_counter("torchprofile") as counter:
            copied(example(1, in_channels, size, size))
        prefix = type(copied).__name__
        flops = {key[len(prefix) + 1 :]: sum(ops.values()) for key, ops in counter.get_flop_counts().items()
                 if key.startswith(prefix + ".")}  # fmt: skip
        return finished, flops

    try:
        return on_copy(model, run)
    except Exception as e:  # the user's forward: whatever it raises, in one line
        raise ValueError(f"{type(model).__name__} cannot be probed at {size}x{size} ({_first_line(e)})") from None


def module_table(model: nn.Module, size: int, in_channels: int = 3) -> list[ModuleRow]:
    """Every module of `model` in the order its forward finishes them, from one forward of a meta copy at `size` x
    `size` (shapes only, nothing allocated): what `ackd-fast taps` prints."""
    finished, flops = _meta_forward(model, size, in_channels)
    rows = []
    for path, module, out in finished:
        image = isinstance(out, Tensor) and out.dim() == 4
        rows.append(ModuleRow(path, type(module).__name__, tuple(out.shape[1:]) if image else None,
                              size / out.shape[-1] if image else None, flops.get(path, 0) // 2))  # fmt: skip
    return rows


def auto_taps(model: nn.Module, size: int, in_channels: int = 3) -> list[tuple[str, tuple[int, int, int]]]:
    """The taps "--taps auto" picks: the last feature map at each scale (a power of two of the input's side; a
    padding's few pixels do not change it) before the scale changes, as (module path, (C, H, W)) in forward order.
    Of the modules that finish on the same map (a block and its last layer) the outermost names it, and of a scale's
    maps the last of the shallowest paths (a block's output, not a layer inside the next block that still works at
    that scale); the output is no tap."""
    finished, _ = _meta_forward(model, size, in_channels)
    maps: list[tuple[str, Tensor]] = []
    for path, _, out in finished:
        if not (isinstance(out, Tensor) and out.dim() == 4):
            continue
        if maps and maps[-1][1] is out:  # the enclosing module returned its last child's map
            maps[-1] = (path, out)
        else:
            maps.append((path, out))
    runs: list[tuple[int, list[tuple[str, Tensor]]]] = []  # (scale, its consecutive maps)
    for path, out in maps:
        scale = round(math.log2(size / out.shape[-1]))
        if runs and runs[-1][0] == scale:
            runs[-1][1].append((path, out))
        else:
            runs.append((scale, [(path, out)]))
    picked = []
    for _, run in runs[:-1]:  # the last scale is the output's
        depth = min(path.count(".") for path, _ in run)
        path, out = [(p, o) for p, o in run if p.count(".") == depth][-1]
        picked.append((path, tuple(out.shape[1:])))
    return picked


def pair_taps(teacher: list[tuple[str, tuple[int, ...]]], student: list[tuple[str, tuple[int, ...]]]
              ) -> list[tuple[str, str]]:  # fmt: skip
    """Teacher and student taps (as auto_taps gives them) paired by resolution, in the teacher's order: each (H, W)
    both have, once (the student's first map at it)."""
    by_size: dict[tuple[int, ...], str] = {}
    for path, shape in student:
        by_size.setdefault(tuple(shape[1:]), path)
    pairs, used = [], set()
    for path, shape in teacher:
        match = by_size.get(tuple(shape[1:]))
        if match is not None and match not in used:
            pairs.append((path, match))
            used.add(match)
    return pairs


def tap_report(model: nn.Module, size: int, depth: int = 3, marked: Sequence[str] = ()) -> str:
    """`module_table` as text: one line a module down to `depth` levels of its path, the paths in `marked` (default
    taps) starred."""
    lines = [f"{'module path':<44} {'type':<22} {'C x H x W':>16} {'stride':>7} {'MMACs':>10}"]
    for row in module_table(model, size):
        if row.path.count(".") >= depth:
            continue
        shape = " x ".join(map(str, row.shape)) if row.shape else "-"
        stride = f"{row.stride:.3g}" if row.stride else "-"
        star = " *" if row.path in marked else ""
        lines.append(f"{row.path:<44} {row.kind:<22} {shape:>16} {stride:>7} {row.macs / 1e6:>10.2f}{star}")
    return "\n".join(lines)


def pairing_report(teacher: nn.Module, student: nn.Module, size: int) -> str:
    """The taps `auto_taps` suggests for a teacher and a student, paired by resolution, with the 1x1 connector each
    pair needs and a config snippet for `distill --config`; ValueError when fewer than two pairs are found (ACKD
    needs a source and a deep tap)."""
    teacher_maps, student_maps = auto_taps(teacher, size), auto_taps(student, size)
    pairs = pair_taps(teacher_maps, student_maps)
    if len(pairs) < 2:
        raise ValueError(f"at {size}x{size} the teacher and student share {len(pairs)} resolution(s) at their "
                         "scale changes; ACKD needs two or more tap pairs: name them with --taps / --student-taps")
    shapes_t, shapes_s = dict(teacher_maps), dict(student_maps)
    lines = [f"tap pairs at {size}x{size} (teacher <- student; the first is only a source):"]
    for t, s in pairs:
        (ct, h, w), cs = shapes_t[t], shapes_s[s][0]
        lines.append(f"  {t} ({ct} x {h} x {w}) <- {s} ({cs} ch): connector 1x1 conv {cs} -> {ct}")
    lines += ["", "# distill --config snippet: edit, save as taps.yaml, then ackd-fast distill --config taps.yaml ...",
              f"taps: {','.join(t for t, _ in pairs)}", f"student-taps: {','.join(s for _, s in pairs)}"]
    return "\n".join(lines)


__all__ = ["REPLACE_PATHS", "ModuleRow", "ModuleTaps", "Tap", "auto_taps", "module_table", "pair_taps",
           "pairing_report", "resolve_tap", "tap_report"]
