"""Reading generators from any file: our run checkpoints, our exported generators, and the bare state dicts that
GAN Compression, OMGD and pytorch-CycleGAN-and-pix2pix save (`latest_net_G.pth`, `latest_net_G_A.pth`,
`best_net_G16.pth`, ...), with one key mapping between their layouts and ours, used both ways (`peer_keys`).

The peers' layouts, read from their model code (the networks are ours, module for module):
- ResNet generators: one `nn.Sequential` named `model`: `model.1/4/7` the stem's convs, `model.10` .. `model.18` the
  residual blocks, `model.19/22` the transposed convs, `model.26` the last conv. A block's convs are `conv_block.1`
  and `conv_block.6` in GAN Compression and OMGD (a Dropout sits at 4 even at rate 0), `conv_block.1` and
  `conv_block.5` in pytorch-CycleGAN-and-pix2pix (no dropout, as its CycleGAN and ResNet pix2pix run). Mobile blocks
  (GAN Compression, OMGD) are `conv_block.{1,6}.conv.{0,2}`: depthwise 3x3, pointwise 1x1.
- U-Nets (pytorch-CycleGAN-and-pix2pix, OMGD): nested blocks, `model.model.` the outermost, `1.model.` the next,
  then `3.model.` for each deeper one; in a block `1` is the down conv, `2` its norm, `5` the up conv, `6` its norm
  (the innermost: `1`, `3`, `4`; the outermost: `0`, `3`).
- Old pytorch-CycleGAN-and-pix2pix files carry `running_mean`/`running_var`/`num_batches_tracked` of instance
  norms that use no running statistics (117 tensors instead of 48): they are dropped.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ackd_fast.checkpoint import load_tensors
from ackd_fast.data import DIRECTIONS
from ackd_fast.losses import OBJECTIVES
from ackd_fast.models import ARCHITECTURES, GENERATORS, GeneratorSpec, NLayerDiscriminator, build_generator
from ackd_fast.models.architectures import GAN_COMPRESSION, LAYOUT_NAMES, OURS
from ackd_fast.models.by_path import is_import_path, parse_kwargs

SIDECAR_FORMAT = "ackd_fast.generator"  # the "format" of an exported generator's JSON sidecar
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside an exported generator file: `g.pth` -> `g.json`."""
    return Path(path).with_suffix(".json")


# ----------------------------------------------------------------------------------------- the key mapping


def _resnet_key(key: str, layout: str, n_blocks: int) -> str:
    """One of our ResNet / mobile ResNet keys in a peer's `model.N` layout."""
    parts = key.split(".")
    if parts[0] == "head":  # head.i -> after the stem (10 modules) and the blocks
        return ".".join(["model", str(10 + n_blocks + int(parts[1])), *parts[2:]])
    if parts[1] == "stem":  # stages.stem.i -> model.i
        return ".".join(["model", *parts[2:]])
    # stages.blockT.j.body.k... -> model.(10 + block).conv_block.k'...
    per_tap = n_blocks // 3
    block = (int(parts[1][len("block") :]) // per_tap - 1) * per_tap + int(parts[2])
    k = int(parts[4])
    if layout == GAN_COMPRESSION and k >= 4:  # their Dropout at 4 shifts the second half by one
        k += 1
    rest = parts[5:]
    if rest and rest[0].isdigit():  # a separable conv: body.k.i -> conv_block.k'.conv.i
        rest = ["conv", *rest]
    return ".".join(["model", str(10 + block), "conv_block", str(k), *rest])


def _unet_key(key: str, num_downs: int) -> str:
    """One of our U-Net keys in the nested layout of pytorch-CycleGAN-and-pix2pix and OMGD."""
    parts = key.split(".")
    if parts[0] == "head":  # the outermost block's up part
        kind, level, index, rest = "dec", 1, int(parts[1]), parts[2:]
    else:  # stages.enc3.i / stages.dec3.i: level 3
        kind, level, index, rest = parts[1][:3], int(parts[1][3:]), int(parts[2]), parts[3:]
    prefix = "model.model." + "1.model." * (level >= 2) + "3.model." * max(0, level - 2)
    if level == 1:  # outermost: [conv, inner, relu, upconv, tanh]
        peer_index = {("enc", 0): 0, ("dec", 1): 3}[(kind, index)]
    elif level == num_downs:  # innermost: [lrelu, conv, relu, upconv, norm]
        peer_index = {("enc", 1): 1, ("dec", 1): 3, ("dec", 2): 4}[(kind, index)]
    else:  # [lrelu, conv, norm, inner, relu, upconv, norm, (dropout)]
        peer_index = {("enc", 1): 1, ("enc", 2): 2, ("dec", 1): 5, ("dec", 2): 6}[(kind, index)]
    return prefix + ".".join([str(peer_index), *rest])


def peer_keys(generator: nn.Module, name: str, layout: str) -> dict[str, str]:
    """{our state-dict key: the key in `layout`} for `generator` (built by `name`): the one mapping, both ways."""
    layouts = ARCHITECTURES[name].layouts if name in ARCHITECTURES else ()
    if layout not in layouts:
        raise ValueError(f"generator {name!r} has no {layout!r} layout; it has {layouts}")
    keys = list(generator.state_dict())
    if layout == OURS:
        return {k: k for k in keys}
    if ARCHITECTURES[name].family == "unet":
        return {k: _unet_key(k, generator.num_downs) for k in keys}
    n_blocks = sum(len(generator.stages[t]) for t in generator.stages if t != "stem")
    return {k: _resnet_key(k, layout, n_blocks) for k in keys}


def to_peer_state_dict(generator: nn.Module, name: str, layout: str | None = None) -> dict[str, Tensor]:
    """Our generator's state dict in a peer's key layout (default: the architecture's peer_layout), tensors shared;
    ValueError for a generator that is no built-in (the peers have no layout for it)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"{name} is no built-in generator: the peers' key layouts exist for {', '.join(GENERATORS)} "
                         "only")  # fmt: skip
    mapping = peer_keys(generator, name, layout or ARCHITECTURES[name].peer_layout)
    state = generator.state_dict()
    return {mapping[k]: v for k, v in state.items()}


# ----------------------------------------------------------------------------------------- matching a file


@dataclass
class _Fit:
    name: str
    layout: str
    ngf: int | None = None
    state: dict | None = None  # our keys, when it fits
    overlap: int = 0  # how many of the candidate's keys the file has: the closest candidate is reported
    problem: str = ""


def _try(state: dict[str, Tensor], name: str, layout: str, ngf: int | None) -> _Fit:
    fit = _Fit(name, layout)
    with torch.device("meta"):
        mapping = peer_keys(build_generator(name, 1), name, layout)
    first = mapping[ARCHITECTURES[name].first_conv]
    fit.overlap = sum(k in state for k in mapping.values())
    if first not in state:
        fit.problem = f"has no key {first!r}"
        return fit
    implied = int(state[first].shape[0])
    if ngf is not None and ngf != implied:  # compared before anything of that width is built
        fit.problem = (f"key {first!r} has shape {tuple(state[first].shape)}: {implied} output channels, not the "
                       f"ngf {ngf} asked for")  # fmt: skip
        return fit
    ngf = fit.ngf = implied
    with torch.device("meta"):
        expected = build_generator(name, ngf, init="default").state_dict()
    ours = {}
    for our_key, peer_key in mapping.items():
        if peer_key not in state:
            fit.problem = f"has no key {peer_key!r}"
            return fit
        got, want = tuple(state[peer_key].shape), tuple(expected[our_key].shape)
        if got != want:
            fit.problem = f"key {peer_key!r} has shape {got}, expected {want} (ngf {ngf})"
            return fit
        ours[our_key] = state[peer_key]
    known = set(mapping.values())
    for k in state:
        # instance norms without running statistics: old files carry them anyway
        if k not in known and not (k.rsplit(".", 1)[-1] in RUNNING_STATS and layout != OURS):
            fit.problem = f"has unexpected key {k!r}"
            return fit
    fit.state = ours
    return fit


def _match(path: Path, state: dict, name: str | None, ngf: int | None, layouts: tuple[str, ...] | None = None) -> _Fit:
    """The first (generator, layout) the tensors fit exactly; ValueError naming the file, the first key or shape
    that did not fit the closest candidate, and every candidate tried."""
    if name is not None and name not in GENERATORS:
        raise ValueError(f"name must be one of {tuple(GENERATORS)} or None, got {name!r}")
    if ngf is not None and (isinstance(ngf, bool) or not isinstance(ngf, int) or ngf < 1):
        raise ValueError(f"ngf must be a positive int or None, got {ngf!r}")
    names = [name] if name else list(GENERATORS)
    fits = []
    for n in names:
        for layout in ARCHITECTURES[n].layouts:
            if layouts is not None and layout not in layouts:
                continue
            fit = _try(state, n, layout, ngf)
            if fit.state is not None:
                return fit
            fits.append(fit)
    closest = max(fits, key=lambda f: f.overlap)
    tried = ", ".join(f"{f.name} ({LAYOUT_NAMES[f.layout]})" for f in fits)
    wanted = f" ngf {ngf}" if ngf else ""
    raise ValueError(
        f"{path} fits no known generator{wanted}: as {closest.name} ({LAYOUT_NAMES[closest.layout]}) it "
        f"{closest.problem}; tried {tried}"
    )


def _tensor_dict(path: Path, obj: object, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a {what} state dict: it holds a {type(obj).__name__}")
    if not obj:
        raise ValueError(f"{path} is not a {what} state dict: it is an empty dict")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise ValueError(f"{path} is not a {what} state dict: key {k!r} holds a {type(v).__name__}")
    if all(k.startswith("module.") for k in obj):  # saved from a DataParallel wrapper
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------- the public readers


@dataclass
class GeneratorFile:
    """A generator read from a file, and what the file says about it.

    generator: in eval mode, on the CPU. name, ngf, kwargs: its architecture (`spec`): a built-in and its width, or
    an import path (ngf None) and its keyword arguments. source: what the file was (a run checkpoint, an exported
    generator, or a peer's layout). config: the run's config (run checkpoints and exported generators carry it),
    else None. step, selection: a run checkpoint's step and (best.pt) how it was selected."""

    generator: nn.Module
    name: str
    ngf: int | None
    source: str
    config: dict | None = None
    step: int | None = None
    selection: dict | None = None
    info: dict = field(default_factory=dict)  # an exported generator's sidecar
    discriminators: dict | None = None  # a run checkpoint's discriminator states (its "d" entry), read in the same go
    kwargs: dict = field(default_factory=dict)

    @property
    def spec(self) -> GeneratorSpec:
        return GeneratorSpec(self.name, self.ngf, self.kwargs)

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def direction(self) -> str | None:
        return (self.config or {}).get("direction") or self.info.get("direction")

    @property
    def objective(self) -> str | None:
        """The objective, "pix2pix" or "cyclegan", when the file says; else None (a bare generator)."""
        return (self.config or {}).get("model") or self.info.get("model")


def _check_sidecar(side: Path, info: dict) -> None:
    """ValueError naming the sidecar when a value it gives is not one a generator can have (the run config in it is
    checked where it is used: assembly.file_config)."""
    name = info.get("name")
    if name is not None and name not in GENERATORS and not is_import_path(name):
        raise ValueError(f"{side}: 'name' must be one of {', '.join(GENERATORS)} or package.module:callable, got "
                         f"{name!r}")  # fmt: skip
    allowed = {"direction": (*DIRECTIONS, None), "model": (*OBJECTIVES, None)}
    for key, values in allowed.items():
        if info.get(key) not in values:
            raise ValueError(f"{side}: {key!r} must be one of {', '.join(map(str, values))}, got {info.get(key)!r}")
    ngf = info.get("ngf")
    if ngf is not None and (isinstance(ngf, bool) or not isinstance(ngf, int) or ngf < 1):
        raise ValueError(f"{side}: 'ngf' must be a positive int, got {ngf!r}")
    if not isinstance(info.get("kwargs", {}), dict):
        raise ValueError(f"{side}: 'kwargs' must be a JSON object, got {info.get('kwargs')!r}")


def load_into(model: nn.Module, state: dict[str, Tensor], path: str | os.PathLike, label: str) -> nn.Module:
    """`state` loaded into `model` (every key, every shape); ValueError naming the file and the first key that
    does not fit."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ValueError(f"{path} does not fit {label}: it has no key {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{path} does not fit {label}: key {key!r} has shape {tuple(state[key].shape)}, the "
                             f"model's {tuple(value.shape)}")  # fmt: skip
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(f"{path} does not fit {label}: unexpected key {extra[0]!r} ({len(extra)} in all)")
    model.load_state_dict(state, strict=True)
    return model


def read_generator(path: str | os.PathLike, name: str | None = None, ngf: int | None = None,
                   kwargs: dict | str | None = None, model: nn.Module | None = None) -> GeneratorFile:  # fmt: skip
    """The generator in `path` with what the file says about it; `name`/`ngf`: the built-in architecture it must
    have (None: what the file says or its tensors imply), or `name` "package.module:callable" and its `kwargs`;
    `model`: a module to load the weights into instead (one the file cannot rebuild). Nothing in the file runs
    (weights_only=True; an import path the file names is called only when it builds modules: models/by_path.py),
    nothing is written, and a file that fits no known generator raises a ValueError naming the file."""
    path = Path(path)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    if name is not None and name not in GENERATORS and not is_import_path(name):
        raise ValueError(f"name must be one of {GENERATORS}, package.module:callable or None, got {name!r}")
    kwargs = parse_kwargs(kwargs, "kwargs")
    obj = load_tensors(path)
    config, step, selection, info, discriminators = None, None, None, {}, None
    named_in: Path | None = None  # the file, when the architecture is the file's word rather than the caller's
    if isinstance(obj, dict) and "generator" in obj and isinstance(obj["generator"], dict):  # a run checkpoint
        entry = obj["generator"]
        if not isinstance(entry.get("name"), str) or "state" not in entry:
            raise ValueError(f"{path} is a checkpoint whose generator entry is not ours (keys {sorted(entry)})")
        recorded = GeneratorSpec.from_record(entry, path)
        if (name is not None and name != recorded.name) or (ngf is not None and ngf != recorded.ngf):
            asked = GeneratorSpec(name or recorded.name, ngf or recorded.ngf, kwargs or recorded.kwargs)
            raise ValueError(f"{path} holds a {recorded.label} generator, not the {asked.label} asked for")
        named_in = None if name is not None else path  # a name given is the caller's word for what the file holds
        name, ngf, kwargs = recorded.name, recorded.ngf, recorded.kwargs
        source = "run checkpoint"
        state = _tensor_dict(path, entry["state"], "generator")
        config, step, selection = obj.get("config"), obj.get("step"), obj.get("selection")
        discriminators = obj.get("d") if isinstance(obj.get("d"), dict) else None
        layouts: tuple[str, ...] | None = (OURS,)
    elif isinstance(obj, dict) and {"config", "step"} & set(obj):
        raise ValueError(f"{path} is a checkpoint without a generator (it holds {sorted(obj)})")
    else:
        state = _tensor_dict(path, obj, "generator")
        layouts, source = None, ""
        side = sidecar_path(path)
        if side.is_file():
            try:
                info = json.loads(side.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot read {side}, the sidecar of {path}: {e}") from None
            if not isinstance(info, dict) or info.get("format") != SIDECAR_FORMAT:
                info = {}  # some other JSON beside the file: not ours
            else:
                _check_sidecar(side, info)
                if name is None and info.get("name") is not None:
                    name, kwargs, named_in = info["name"], info.get("kwargs") or {}, side
                ngf = ngf or info.get("ngf")
                config = info.get("config")
                if config is not None and not isinstance(config, dict):
                    got = f"{type(config).__name__} {str(config)[:40]!r}"
                    raise ValueError(f"{side}, the sidecar of {path}: 'config' must be a JSON object (the run's "
                                     f"config) or absent, got {got}")  # fmt: skip
                source = "exported generator"
    if model is not None or (name is not None and name not in GENERATORS):
        spec = GeneratorSpec(name, None, kwargs or {}) if name is not None else None
        label = spec.label if spec else type(model).__name__
        generator = model if model is not None else spec.build(named_in=named_in)
        load_into(generator, state, path, label)
        name = name or GeneratorSpec.of_module(model).name
        return GeneratorFile(generator.eval(), name, None, source or "state dict", config, step, selection, info,
                             discriminators, dict(kwargs or {}))  # fmt: skip
    fit = _match(path, state, name, ngf, layouts)
    generator = build_generator(fit.name, fit.ngf, init="default")  # the file overwrites every weight
    generator.load_state_dict(fit.state, strict=True)
    source = source or f"{LAYOUT_NAMES[fit.layout]} layout"
    return GeneratorFile(generator.eval(), fit.name, fit.ngf, source, config, step, selection, info, discriminators)


def load_generator(path: str | os.PathLike, name: str | None = None, ngf: int | None = None,
                   kwargs: dict | str | None = None, model: nn.Module | None = None) -> nn.Module:  # fmt: skip
    """The generator in `path`, in eval mode on the CPU, from any of: our run checkpoints (`ckpt.pt`, `best.pt`),
    our exported generators (`ackd-fast export --format pth`), and the bare state dicts that GAN Compression, OMGD
    and pytorch-CycleGAN-and-pix2pix save (ResNet, mobile ResNet and U-Net generators). `name` and `ngf` are
    inferred from the tensors when not given. A generator of your own comes back as the checkpoint or sidecar
    records it (its import path and keyword arguments), or give `name="package.module:callable"` and `kwargs`, or
    the `model` to load the weights into. Nothing in the file runs; a file that fits no known generator raises a
    ValueError naming the file, the first key or shape that did not fit and the generators tried.

    >>> import ackd_fast, torch
    >>> from ackd_fast.models import build_generator
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "g.pth")
    >>> torch.save(build_generator("mobile_resnet_9blocks", 8).state_dict(), path)
    >>> g = ackd_fast.load_generator(path)
    >>> g(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 3, 64, 64])
    """
    return read_generator(path, name, ngf, kwargs, model).generator


_CONV = re.compile(r"^model\.(\d+)\.(weight|bias)$")


def load_discriminator(path: str | os.PathLike) -> NLayerDiscriminator:
    """A PatchGAN discriminator from a state dict in the pix2pix `NLayerDiscriminator` layout (GAN Compression's and
    pytorch-CycleGAN-and-pix2pix's `latest_net_D.pth` with instance norm, whose keys are ours); input channels, ndf
    and the layer count come from the tensors. ValueError naming the file when it is not such a discriminator."""
    path = Path(path)
    return discriminator_from_state(_tensor_dict(path, load_tensors(path), "discriminator"), str(path))


def discriminator_from_state(state: dict[str, Tensor], path: str) -> NLayerDiscriminator:
    """load_discriminator's network from a state dict already read (`path` names where it came from)."""
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in RUNNING_STATS}
    convs = sorted({int(m.group(1)) for k in state if (m := _CONV.match(k))})
    first = state.get("model.0.weight")
    if first is None or first.dim() != 4 or len(convs) < 3:
        raise ValueError(f"{path} is not a PatchGAN (n_layers) discriminator: it has no 4-d 'model.0.weight' "
                         f"and at least 3 convs (keys {sorted(state)[:6]}...)")  # fmt: skip
    d = NLayerDiscriminator(int(first.shape[1]), int(first.shape[0]), len(convs) - 2)
    expected = d.state_dict()
    for k, v in expected.items():
        if k not in state:
            raise ValueError(f"{path} is not a {len(convs) - 2}-layer PatchGAN discriminator: it has no key {k!r}")
        if state[k].shape != v.shape:
            raise ValueError(f"{path}: key {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)} "
                             "(a PatchGAN with batch norm, or another discriminator?)")  # fmt: skip
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ValueError(f"{path} is not a PatchGAN (n_layers) discriminator with instance norm: unexpected key "
                         f"{extra[0]!r}")  # fmt: skip
    d.load_state_dict(state)
    return d


def export_sidecar(g: GeneratorFile) -> dict:
    """The JSON sidecar of an exported generator: architecture (name and ngf, or import path and kwargs), its stage
    taps (a built-in's; none for a generator of your own), direction, objective, the run's config."""
    taps = list(getattr(g.generator, "tap_names", ()))
    return {"format": SIDECAR_FORMAT, "version": 1, **g.spec.record(), "taps": taps, "direction": g.direction,
            "model": g.objective, "config": g.config}  # fmt: skip


__all__ = [
    "GeneratorFile",
    "discriminator_from_state",
    "export_sidecar",
    "load_discriminator",
    "load_generator",
    "load_into",
    "peer_keys",
    "read_generator",
    "sidecar_path",
    "to_peer_state_dict",
]
