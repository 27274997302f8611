"""Assembling a training job from its Config: the models, taps, refiners, losses, data and optimizers.

`train.py` runs the loop; this module says what it trains. `build_task(cfg, teacher)` gives the objective (a
teacher objective from `losses`, or the `Distiller`), the critic and the generator to evaluate; a distill job's
teacher file is read once (`read_teacher`) and handed to everything that needs it. `ackd_fast.study` builds its arms
from the same Config.

Loss weights of distillation come from per-task presets (LOSS_PRESETS, GAN Compression's scripts), picked by the
data folder's name unless given; an explicit --lambda-* wins.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from ackd_fast import data as data_lib
from ackd_fast.distill import ACK_TRAIN, KD_MODES, Distiller, DistillSettings
from ackd_fast.errors import UsageError
from ackd_fast.flags import flag
from ackd_fast.flags import flag_name as _flag
from ackd_fast.loggers import parse_loggers
from ackd_fast.losses import OBJECTIVES, Critic, CycleGAN, Pix2Pix
from ackd_fast.metrics import INCEPTION_SHA256, INCEPTION_SHA256_HELP, check_sha256, count_macs
from ackd_fast.models import (
    DEFAULT_TAPS,
    DISCRIMINATORS,
    GENERATORS,
    GeneratorSpec,
    ModuleTaps,
    TappedGenerator,
    build_discriminator,
)
from ackd_fast.models.by_path import is_import_path, parse_kwargs
from ackd_fast.models.module_taps import REPLACE_PATHS, auto_taps, on_copy, pair_taps
from ackd_fast.modules import COMPOSITIONS, REFINER_INITS, REFINER_MODES
from ackd_fast.peers import GeneratorFile, discriminator_from_state, load_discriminator, read_generator

AMP_MODES = ("auto", "none", "bf16", "fp16")
SELECT_ON = ("none", "val")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that capture CUDA graphs
RECIPES = ("compress", "self")  # compress: mobile_resnet_9blocks at student_ngf; self: the teacher's architecture

# Distillation's loss weights per task, from GAN Compression's scripts (distillers/base_resnet_distiller.py defaults:
# recon 100, distill 1, gan 1; map2sat and horse2zebra's distill.sh: --lambda_recon 10 --lambda_distill 0.01).
# "sample" is the built-in sets (a paired sketch task, pix2pix's defaults). Keyed by the data folder's name.
LOSS_PRESETS = {
    "edges2shoes": {"lambda_recon": 100.0, "lambda_gan": 1.0, "lambda_feat": 1.0},
    "map2sat": {"lambda_recon": 10.0, "lambda_gan": 1.0, "lambda_feat": 0.01},
    "cityscapes": {"lambda_recon": 100.0, "lambda_gan": 1.0, "lambda_feat": 1.0},
    "horse2zebra": {"lambda_recon": 10.0, "lambda_gan": 1.0, "lambda_feat": 0.01},
    "sample": {"lambda_recon": 100.0, "lambda_gan": 1.0, "lambda_feat": 1.0},
}
# Data folder names (lower case) that select a preset; anything else takes "sample"'s, pix2pix's defaults.
PRESET_FOLDERS = {
    "edges2shoes": "edges2shoes", "edges2shoes-r": "edges2shoes", "maps": "map2sat", "map2sat": "map2sat",
    "sat2map": "map2sat", "cityscapes": "cityscapes", "horse2zebra": "horse2zebra",
}  # fmt: skip


# What differs from the Config defaults in each training command's flags: the run folder, and distill's bare-teacher
# architecture, inferred from the file.
COMMAND_DEFAULTS = {
    "teacher": {"out_dir": "runs/teacher"},
    "distill": {"out_dir": "runs/distill", "generator": "auto", "ngf": 0},
}
COMMANDS = {"teacher": "train-teacher", "distill": "distill"}


@dataclass
class Config:
    """A training job. Every field but `job` is a flag of `ackd-fast train-teacher` / `distill` (cli.py builds
    them from the metadata here: the help and the job that takes it)."""

    # what to train
    job: str = "teacher"  # "teacher" or "distill"
    model: str = flag(
        "pix2pix",
        "teacher objective: pix2pix (hinge GAN + L1 x100, paired) or cyclegan (LSGAN + cycle x10 + identity "
        "x0.5); distill: used for a bare generator teacher (a run or an export says its own)",
    )
    out_dir: str = flag("runs/train", "run folder: ckpt.pt, log.jsonl, samples/")
    # data
    dataroot: str = flag(
        "sample",
        "dataset folder (aligned: DIR/train/ with A|B side by side; unaligned: DIR/trainA, DIR/trainB; images "
        ".jpg .jpeg .png .ppm .bmp .tif .tiff .webp, any case, in sub-folders too), or 'sample' for the built-in "
        "edges->photo set (built under OUT_DIR/data)",
    )
    dataset_mode: str = flag("auto", "aligned, unaligned, or auto (aligned when the objective is paired)")
    direction: str = flag("AtoB", "AtoB or BtoA: which half (aligned) or folder (unaligned) is the input")
    load_size: int = flag(286, "training images are resized to this square size before cropping")
    crop_size: int = flag(256, "random square crop for training; evaluation resizes to this size")
    flip: bool = flag(True, "random horizontal flips in training")
    batch_size: int = flag(0, "images per process and step; 0 = 4 when paired, 1 when unpaired")
    workers: int = flag(2, "data-loading worker processes per training process")
    # teacher models (distill from a bare generator file: its architecture, "auto" / 0 = what its tensors imply)
    generator: str = flag(
        "resnet_9blocks",
        "teacher generator: resnet_9blocks, mobile_resnet_9blocks, unet_256 or unet_256_bn (pix2pix's "
        "BatchNorm + dropout U-Net), or your own as package.module:callable (a class or factory returning an "
        "nn.Module that maps a (B, 3, H, W) image in [-1, 1] to one of the same size; the module is imported, so "
        "it must be on the Python path); distill: a bare generator teacher's, auto = what its tensors imply",
    )
    ngf: int = flag(
        64,
        "teacher generator width (channels of its first conv) of a built-in --generator; distill: 0 = what the "
        "teacher file implies",
    )
    generator_kwargs: str = flag(
        "",
        "--generator package.module:callable's keyword arguments as a JSON object, e.g. '{\"width\": 32}' (the "
        "checkpoint records them, so later commands rebuild the model from it alone)",
    )
    discriminator: str = flag("n_layers", "n_layers (PatchGAN) or multi_scale (PatchGANs at 1x, 1/2x)", only="teacher")
    ndf: int = flag(64, "discriminator width", only="teacher")
    n_layers_d: int = flag(3, "PatchGAN layers (3: the 70x70 PatchGAN)", only="teacher")
    # distillation
    teacher: str = flag(
        "",
        "the teacher: ckpt.pt of a train-teacher run (its discriminator starts the student's), an exported "
        "generator, or GAN Compression's / OMGD's / pytorch-CycleGAN-and-pix2pix's latest_net_G.pth",
        only="distill",
    )
    teacher_d: str = flag(
        "",
        "the student's starting discriminator: a PatchGAN state dict such as GAN Compression's "
        "latest_net_D.pth; empty = the teacher run's, or a fresh one for a bare generator teacher",
        only="distill",
    )
    recipe: str = flag(
        "compress",
        "compress: student mobile_resnet_9blocks at --student-ngf; self: the teacher's own architecture",
        only="distill",
    )
    student_ngf: int = flag(
        16,
        "student width for --recipe compress or a built-in --student (16: 0.137 M params, 1.41 GMACs at 256x256)",
        only="distill",
    )
    student: str = flag(
        "",
        "the student generator: a built-in name (at --student-ngf) or package.module:callable (--student-kwargs); "
        "empty = what --recipe says",
        only="distill",
    )
    student_kwargs: str = flag(
        "",
        "--student package.module:callable's keyword arguments as a JSON object",
        only="distill",
    )
    taps: str = flag(
        "",
        "comma-separated teacher taps, shallow to deep (default stem,block3,block6,block9); the first is only "
        "a source. Stage names, or module paths of the generator (stages.block3.1, re:REGEX matching one path, "
        "PATH@input, PATH@N for an element of a tuple output); auto: the last map of each scale of the teacher "
        "and the student, paired by resolution (the opening summary prints the pairs)",
        only="distill",
    )
    student_taps: str = flag(
        "",
        "comma-separated student taps matching --taps (default: the student's stem,block3,block6,block9); stage "
        "names or module paths, as --taps",
        only="distill",
    )
    replace_path: str = flag(
        "auto",
        "how the teacher path replaces a tap named by module path: split (a torch.fx split of the teacher that runs "
        "only what follows the tap), hook (the whole forward with the tap's value swapped in by a hook: any model), "
        "or auto (the split where the teacher traces, else the hook; the opening summary says which)",
        only="distill",
    )
    kd: str = flag(
        "ackd",
        "feature distillation: ackd (refiners over the teacher's taps), plain (GAN Compression's: the "
        "student's taps through 1x1 connectors pulled by MSE to the teacher's own taps, no refiners) or none "
        "(the baseline; --no-ackd is its alias)",
        only="distill",
    )
    mode: str = flag("both", "ACK refiner: attention (ACK-A), fusion (ACK-F) or both", only="distill")
    composition: str = flag(
        "parallel",
        "with --mode both: parallel (T* = ACK-A(F) + ConvBlock(acc(sources))) or chained (T* = F + "
        "ConvBlock(ACK-A branch))",
        only="distill",
    )
    residual: bool = flag(
        True,
        "ACK-F's deep-stage residual (the F + of T*); --no-residual is the paper's ablation 'w/o ACK-F "
        "residual'",
        only="distill",
    )
    refiner_init: str = flag(
        "default",
        "how the refiners start: default (PyTorch's), identity (T* == F at step 0) or normal (GAN "
        "Compression's normal(0, 0.02))",
        only="distill",
    )
    ack_train: str = flag(
        "teacher-path",
        "teacher-path: refiners learn by decoding through the frozen teacher, the student sees the refined "
        "features detached; joint: the feature loss also trains the refiners; masked: the teacher path "
        "decodes T* refined from a masked deep map, so the sources are needed",
        only="distill",
    )
    mask_ratio: float = flag(0.5, "--ack-train masked: the share of the deep map's pixels zeroed", only="distill")
    ack_path_every: int = flag(
        1,
        "run the refiners' teacher path (the decodes through the teacher's tail) every N-th step only, the targets "
        "coming from a forward without gradient in between; 1 = every step, as the paper (a speed switch that "
        "changes the training: README)",
        only="distill",
    )
    kv_stride: int = flag(
        1,
        "ACK-A average-pools the sources by this stride before keys/values (fewer tokens, faster)",
        only="distill",
    )
    heads: int = flag(4, "ACK-A attention heads (must divide the teacher's tap channels)", only="distill")
    loss_preset: str = flag(
        "auto",
        "per-task loss weights from GAN Compression's scripts: edges2shoes, map2sat, cityscapes, horse2zebra, "
        "sample; auto = by the data folder's name (any other folder: sample's)",
        only="distill",
    )
    lambda_recon: float | None = flag(
        None,
        "weight of the L1 to the ground truth (paired) or to the teacher's output (unpaired); default: the "
        "preset's",
        only="distill",
    )
    lambda_gan: float | None = flag(None, "weight of the student's GAN loss; default: the preset's", only="distill")
    lambda_feat: float | None = flag(
        None,
        "weight of the feature MSE (ACKD and plain KD); default: the preset's",
        only="distill",
    )
    diag_every: int = flag(
        100,
        "steps between the refiners' diagnostics in log.jsonl (ACKD; also at step 1); 0 = none",
        only="distill",
    )
    # optimisation
    steps: int = flag(1000, "training steps (the learning-rate schedule spans them)")
    decay_steps: int = flag(-1, "the last DECAY_STEPS steps decay the learning rate linearly to 0; -1 = steps // 2")
    lr: float = flag(2e-4, "Adam learning rate (generator and discriminator)")
    beta1: float = flag(0.5, "Adam beta1")
    beta2: float = flag(0.999, "Adam beta2")
    # system
    device: str = flag("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    amp: str = flag(
        "auto",
        "mixed precision: auto (bf16 on CUDA, none on CPU), none, bf16, or fp16 (with a gradient scaler)",
    )
    compile: bool = flag(False, "torch.compile the generators and discriminators")
    compile_mode: str = flag(
        "default",
        "torch.compile mode with --compile: default, reduce-overhead (CUDA graphs), max-autotune or "
        "max-autotune-no-cudagraphs",
    )
    channels_last: bool = flag(True, "channels_last memory format for images and weights (CUDA only: slower on CPU)")
    tf32: bool = flag(True, "TF32 matmuls and convolutions on CUDA")
    seed: int = flag(0, "random seed (weights, data order, augmentation)")
    log_every: int = flag(
        10,
        "steps between log.jsonl loss records (averaged over the steps and the processes) and progress-bar "
        "updates; 0 = none",
    )
    sample_every: int = flag(200, "steps between sample grids (input / output / target) in OUT_DIR/samples; 0 = none")
    logger: str = flag(
        "none",
        "comma-separated among tensorboard, wandb, trackio: they get the losses, scores, diagnostics, sample grids "
        "and settings too (rank 0; W&B offline unless logged in or WANDB_MODE says); none = log.jsonl alone",
    )
    ckpt_every: int = flag(
        200,
        "steps between checkpoints (OUT_DIR/ckpt.pt, written atomically; also at the last step); 0 = none",
    )
    resume: bool = flag(
        False,
        "continue the run in OUT_DIR from its ckpt.pt (weights, optimizers, schedules, RNG, data order), or from "
        "ckpt.prev.pt when ckpt.pt does not load; a folder holding a run without either is refused",
    )
    allow_world_change: bool = flag(
        False,
        "--resume a checkpoint written by another number of processes (the global batch and the data split change: "
        "the run does not continue exactly)",
    )
    stop_at: int = flag(
        0,
        "stop after this step with a checkpoint (the schedule still spans --steps); 0 = run to the end",
    )
    progress: bool = flag(
        True,
        "a progress bar on a terminal; off (or when output is not a terminal): a status line every "
        "--log-every steps, at most one every 30 s",
    )
    # evaluation
    eval_every: int = flag(
        0,
        "steps between evaluations logged to log.jsonl (PSNR/SSIM; FID/KID when the Inception weights are "
        "there); 0 = none",
    )
    select_on: str = flag(
        "none",
        "none, or val: hold out --val-size training samples, evaluate on them every --eval-every steps and "
        "keep the best generator in OUT_DIR/best.pt (the peers select on the test split)",
    )
    val_size: int = flag(
        0,
        "samples held out for --select-on val; 0 = a tenth of the training samples, at least 1 and at most "
        "200",
    )
    eval_split: str = flag("", "the split --eval-every scores (test, val); empty = test, else val")
    inception_weights: str = flag(
        "",
        "pytorch-fid's pt_inception-2015-12-05 weights file for FID/KID; empty = the torch hub cache "
        "(training never downloads)",
    )
    inception_sha256: str = flag(INCEPTION_SHA256, INCEPTION_SHA256_HELP)
    # run safety (issue 21)
    overwrite: bool = flag(
        False,
        "start afresh in an OUT_DIR that holds a run (its checkpoints, best.pt, log.jsonl, metrics.csv, losses.png, "
        "tensorboard/events.* and "
        "samples/step_*.png are removed, nothing else); without it such a folder is refused unless --resume",
    )
    skip_bad_images: bool = flag(
        False,
        "leave out the images that cannot be read (named in a warning) instead of stopping before the first step",
    )


def config_from_dict(d: dict) -> Config:
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}")
    return Config(**d)


def file_config(path: str | os.PathLike, config: object) -> Config | None:
    """The run config a checkpoint or an export sidecar carries (None: none), checked as the flags are (the
    machine's devices aside): a file is input like a flag, and its values size what a command allocates. A bad one
    raises a ValueError naming the file."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"{path} carries a config that is a {type(config).__name__}, not a dict of flag values")
    try:
        cfg = config_from_dict(config)
        check_values(cfg)
    except (UsageError, ValueError, TypeError) as e:
        raise ValueError(f"{path} carries a run config that is not valid: {e}") from None
    return cfg


# ----------------------------------------------------------------------------------------- models


def loss_weights(cfg: Config) -> dict[str, float]:
    """{lambda_recon, lambda_gan, lambda_feat}: the ones cfg gives, the rest from its preset (cfg.loss_preset, or
    with "auto" the preset of the data folder's name; "sample" for any other folder)."""
    preset = cfg.loss_preset
    if preset == "auto":
        preset = PRESET_FOLDERS.get(Path(cfg.dataroot).name.lower(), "sample")
    if preset not in LOSS_PRESETS:
        raise ValueError(f"loss_preset must be 'auto' or one of {tuple(LOSS_PRESETS)}, got {cfg.loss_preset!r}")
    given = {k: getattr(cfg, k) for k in LOSS_PRESETS[preset] if getattr(cfg, k) is not None}
    return LOSS_PRESETS[preset] | given


def _taps(spec: str, generator_name: str) -> tuple[str, ...]:
    if spec:
        return tuple(t.strip() for t in spec.split(",") if t.strip())
    if generator_name not in DEFAULT_TAPS:
        raise UsageError(f"generator {generator_name} has no default taps: name them with --taps and --student-taps "
                         "(module paths; `ackd-fast taps MODEL` lists them), or give --taps auto")  # fmt: skip
    return DEFAULT_TAPS[generator_name]


def auto_tap_pairs(cfg: Config, teacher: nn.Module, student: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--taps auto: the last map of each scale of the teacher and of the student at the crop size, paired by
    resolution (module_taps.pair_taps); UsageError unless --student-taps is auto or empty too, and when fewer than
    two pairs come out."""
    if cfg.taps != "auto" or cfg.student_taps not in ("", "auto"):
        raise UsageError(f"--taps auto pairs the student's taps too: give --taps auto with --student-taps empty or "
                         f"auto, got --taps {cfg.taps!r} --student-taps {cfg.student_taps!r}")  # fmt: skip
    pairs = pair_taps(auto_taps(teacher, cfg.crop_size), auto_taps(student, cfg.crop_size))
    if len(pairs) < 2:
        raise UsageError(f"--taps auto found {len(pairs)} pair(s) of teacher and student maps of one resolution at "
                         f"--crop-size {cfg.crop_size}; ACKD needs two or more: name them with --taps and "
                         "--student-taps (ackd-fast taps lists the modules)")  # fmt: skip
    return tuple(t for t, _ in pairs), tuple(s for _, s in pairs)


def tapped(generator: nn.Module, taps: tuple[str, ...], flag_name: str = "taps", replace_path: str = "auto",
           size: int | None = None) -> nn.Module:  # fmt: skip
    """What the Distiller reads `taps` of: the generator itself when they are its stage taps ("stem", "block3"),
    else the generator with taps named by module path (ModuleTaps: "stages.block3.1", "re:...", "...@input"),
    replacing them as `replace_path` says. A tap that does not resolve is a UsageError naming `flag_name` (and the
    nearest module paths with their shapes at `size`)."""
    if isinstance(generator, TappedGenerator) and all(name in generator.tap_names for name in taps):
        return generator
    try:
        return ModuleTaps(generator, taps, replace_path=replace_path, size=size)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{flag_name}: {e}") from None


def build_task(cfg: Config, teacher: GeneratorFile | None = None, model: nn.Module | None = None
               ) -> tuple[nn.Module, Critic, nn.Module, GeneratorSpec]:  # fmt: skip
    """(objective, critic, generator to evaluate, its GeneratorSpec) for the job; `model`: the generator to train
    (teacher job) or the student (distill) as a module already built, which cfg's --generator / --student name
    (`api` sets them from the module's class). Distillation takes the teacher's
    architecture and weights, and its discriminator's, from `teacher` (cfg.teacher read by `read_teacher`; read
    here when not given)."""
    if cfg.job == "teacher":
        if cfg.model not in OBJECTIVES:
            raise ValueError(f"model must be one of {OBJECTIVES}, got {cfg.model!r}")
        spec = teacher_spec(cfg)
        g = model if model is not None else _build(spec, "--generator")
        if cfg.model == "pix2pix":
            objective: nn.Module = Pix2Pix(g)
            discs = [build_discriminator(cfg.discriminator, 6, cfg.ndf, cfg.n_layers_d)]
        else:
            objective = CycleGAN(g, fresh_copy(g) if model is not None else spec.build())
            discs = [build_discriminator(cfg.discriminator, 3, cfg.ndf, cfg.n_layers_d) for _ in range(2)]
        return objective, Critic(discs, objective.gan_mode), g, spec
    if cfg.job != "distill":
        raise ValueError(f"job must be 'teacher' or 'distill', got {cfg.job!r}")
    tfile = teacher if teacher is not None else read_teacher(cfg)
    spec = student_spec(cfg, tfile)
    if model is not None:
        student = model
    else:
        student = _build(spec, "--student") if cfg.student else spec.build(named_in=cfg.teacher)
    paired = (tfile.objective or cfg.model) == "pix2pix"
    gan_mode = Pix2Pix.gan_mode if paired else CycleGAN.gan_mode
    disc = teacher_discriminator(cfg, tfile, paired)
    distiller = build_distiller(cfg, tfile.generator, tfile.name, student, spec.name, paired)
    return distiller, Critic([disc], gan_mode), student, spec


@torch.no_grad()
def fresh_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every layer that can re-initialise itself (reset_parameters) re-initialised: the
    second generator of a CycleGAN built from a module given."""
    copied = copy.deepcopy(model)
    for m in copied.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return copied


def _build(spec: GeneratorSpec, flag_name: str) -> nn.Module:
    """The model a flag names; what goes wrong (an import, the kwargs) is a UsageError naming the flag."""
    try:
        return spec.build()
    except ValueError as e:
        raise UsageError(f"{flag_name} {e}") from None


def teacher_spec(cfg: Config) -> GeneratorSpec:
    """The generator a train-teacher config asks for: --generator at --ngf, or an import path and its kwargs."""
    return GeneratorSpec(cfg.generator, cfg.ngf if cfg.generator in GENERATORS else None, cfg.generator_kwargs)


def student_spec(cfg: Config, tfile: GeneratorFile) -> GeneratorSpec:
    """The student a distill config asks for: --student (a built-in at --student-ngf, or an import path and its
    kwargs), else --recipe's (compress: mobile_resnet_9blocks at --student-ngf; self: the teacher's own)."""
    if cfg.student:
        builtin = cfg.student in GENERATORS
        return GeneratorSpec(cfg.student, cfg.student_ngf if builtin else None, cfg.student_kwargs)
    if cfg.recipe == "compress":
        return GeneratorSpec("mobile_resnet_9blocks", cfg.student_ngf)
    if cfg.recipe == "self":
        return tfile.spec
    raise ValueError(f"recipe must be one of {RECIPES}, got {cfg.recipe!r}")


def read_teacher(cfg: Config) -> GeneratorFile:
    """The teacher generator of a distill config: cfg.teacher read by `peers.read_generator`. A bare generator file
    must be the cfg.generator / cfg.ngf architecture ("auto" / 0: whatever its tensors imply); a run checkpoint or an
    exported generator says its own."""
    if not cfg.teacher:
        raise ValueError("distill needs --teacher, the checkpoint of a train-teacher run")
    if is_import_path(cfg.generator):  # the user says what the file holds: a generator of their own
        tfile = read_generator(cfg.teacher, cfg.generator, kwargs=cfg.generator_kwargs)
    else:
        tfile = read_generator(cfg.teacher)
    file_config(cfg.teacher, tfile.config)
    if tfile.config is None and not tfile.info and tfile.ngf is not None:
        name = None if cfg.generator in ("", "auto") else cfg.generator
        if (name or tfile.name) != tfile.name or (cfg.ngf or tfile.ngf) != tfile.ngf:
            raise ValueError(
                f"teacher {cfg.teacher} is a {tfile.label} generator ({tfile.source}), not the "
                f"{cfg.generator} ngf {cfg.ngf} that generator/ngf ask for (--generator auto --ngf 0: what the file "
                "implies)"
            )
    return tfile


def teacher_discriminator(cfg: Config, tfile: GeneratorFile, paired: bool) -> nn.Module:
    """The student's starting discriminator: cfg.teacher_d when given (a peer's latest_net_D.pth), else the teacher
    run's (its first one: the judge of domain B), else a fresh one (cfg.discriminator, ndf, n_layers_d)."""
    channels = 6 if paired else 3
    if cfg.teacher_d:
        disc = load_discriminator(cfg.teacher_d)
        got = disc.model[0].in_channels
        if got != channels:
            raise ValueError(
                f"--teacher-d {cfg.teacher_d} takes {got}-channel input; a {'paired' if paired else 'unpaired'} "
                f"objective's discriminator takes {channels} (pix2pix: input and output; cyclegan: one image)"
            )
        return disc
    if tfile.source == "run checkpoint" and tfile.discriminators is not None:
        # Its widths come from the tensors: a distill run's config records distill's --ndf, not the discriminator
        # it inherited from its own teacher, so a student used as a teacher would not fit its config.
        prefix = "discriminators.0."
        state = {k[len(prefix) :]: v for k, v in tfile.discriminators.items() if k.startswith(prefix)}
        tcfg = config_from_dict(tfile.config)
        if tcfg.discriminator == "n_layers":
            disc = discriminator_from_state(state, f"the discriminator in {cfg.teacher}")
        else:
            disc = build_discriminator(tcfg.discriminator, channels, tcfg.ndf, tcfg.n_layers_d)
            try:
                disc.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"the discriminator in {cfg.teacher} does not fit its run's config "
                                 f"({str(e).strip().splitlines()[-1].strip()[:200]})") from None  # fmt: skip
        got = disc.model[0].in_channels
        if got != channels:
            raise ValueError(
                f"the discriminator in {cfg.teacher} takes {got}-channel input; a "
                f"{'paired' if paired else 'unpaired'} objective's takes {channels}"
            )
        return disc
    return build_discriminator(cfg.discriminator, channels, cfg.ndf, cfg.n_layers_d)


def resolve_teacher(cfg: Config, tfile: GeneratorFile) -> tuple[Config, str]:
    """A distill config with the objective and direction the teacher file carries (its run's config or export
    sidecar; a bare generator keeps cfg's), and a line saying where they and the discriminator come from."""
    model, direction = tfile.objective or cfg.model, tfile.direction or cfg.direction
    origin = "the teacher's file" if tfile.objective else "the flags"
    if cfg.teacher_d:
        disc = f"starts from --teacher-d {cfg.teacher_d}"
    elif tfile.source == "run checkpoint":
        disc = "starts from the teacher run's"
    else:
        disc = f"starts fresh ({cfg.discriminator}, ndf {cfg.ndf}; --teacher-d PATH loads one)"
    note = (f"teacher {cfg.teacher}: {tfile.label} ({tfile.source}); objective {model}, direction "
            f"{direction} from {origin}; the discriminator {disc}")  # fmt: skip
    return replace(cfg, model=model, direction=direction), note


def build_distiller(
    cfg: Config,
    teacher: nn.Module,
    teacher_name: str,
    student: nn.Module,
    student_name: str,
    paired: bool,
    backend: str = "auto",
) -> Distiller:
    """The Distiller the config asks for (taps, ACKD switches, loss weights); `backend` goes to every refiner. The
    taps are resolved and hooked on the models as given (before any DDP or torch.compile wrapper), and their shapes
    at the crop size probed and checked pair by pair (`tap_pairs_plan`)."""
    if "auto" in (cfg.taps, cfg.student_taps):
        teacher_taps, student_taps = auto_tap_pairs(cfg, teacher, student)
    else:
        teacher_taps, student_taps = _taps(cfg.taps, teacher_name), _taps(cfg.student_taps, student_name)
    if len(teacher_taps) != len(student_taps) or len(teacher_taps) < 2:
        raise UsageError(f"--taps names {len(teacher_taps)} tap(s) and --student-taps {len(student_taps)}: give the "
                         "same number, two or more (the first is only a source)")  # fmt: skip
    t_model = tapped(teacher, teacher_taps, "--taps", cfg.replace_path, cfg.crop_size)
    s_model = tapped(student, student_taps, "--student-taps", size=cfg.crop_size)
    settings = distill_settings(cfg, backend)
    plan = tap_pairs_plan(cfg, t_model, teacher_taps, s_model, student_taps, settings) if settings.kd != "none" else []
    distiller = Distiller(t_model, s_model, teacher_taps, student_taps, paired=paired,
                          gan_mode=Pix2Pix.gan_mode if paired else CycleGAN.gan_mode, settings=settings)  # fmt: skip
    distiller.tap_plan = plan  # what the opening summary prints
    return distiller


def tap_shapes(model: nn.Module, taps: tuple[str, ...], size: int) -> dict[str, tuple[int, ...]]:
    """Each tap's (C, H, W) for a `size` x `size` image, from one forward of a copy (`on_copy`: meta where it can)."""
    if isinstance(model, ModuleTaps):
        return model.probe(size)
    _, features = on_copy(model, lambda copied, example: copied(example(1, 3, size, size), taps=taps))
    return {name: tuple(f.shape[1:]) for name, f in features.items()}


def tap_pairs_plan(cfg: Config, teacher: nn.Module, teacher_taps: tuple[str, ...], student: nn.Module,
                   student_taps: tuple[str, ...], settings: DistillSettings) -> list[str]:  # fmt: skip
    """One line per tap pair for the opening summary, "T (C x H x W) <- S (C x H x W)" at the crop size, from one
    probe of each model: the 1x1 connectors map the student's channels to the teacher's, and a student map of
    another resolution is resized (bilinear) to the teacher's, which the line says. UsageError in one line when a
    tap is no (B, C, H, W) map, the taps are not in the order the forward reaches them (shallow to deep: the sources
    of a refined tap are the taps before it) or ACK-A's heads do not divide a refined tap's channels."""
    try:
        t_shapes = tap_shapes(teacher, teacher_taps, cfg.crop_size)
        s_shapes = tap_shapes(student, student_taps, cfg.crop_size)
    except ValueError as e:
        raise UsageError(f"--taps / --student-taps at --crop-size {cfg.crop_size}: {e}") from None
    for flag_name, given, shapes in (("--taps", teacher_taps, t_shapes), ("--student-taps", student_taps, s_shapes)):
        reached = [name for name in shapes if name in given]  # the probe's features, in the order the forward made them
        if reached != list(given):
            raise UsageError(f"{flag_name} must name the taps shallow to deep, in the order the forward reaches them: "
                             f"{','.join(reached)}; got {','.join(given)}")  # fmt: skip
    if settings.kd == "ackd" and settings.mode != "fusion":
        for t in teacher_taps[1:]:
            if t_shapes[t][0] % settings.heads:
                raise UsageError(f"--heads {settings.heads} must divide the channels of every refined teacher tap; "
                                 f"{t} has {t_shapes[t][0]}")  # fmt: skip
    lines = []
    for t, s in zip(teacher_taps, student_taps, strict=True):
        line = f"{t} ({' x '.join(map(str, t_shapes[t]))}) <- {s} ({' x '.join(map(str, s_shapes[s]))}"
        lines.append(line + (", resized)" if t_shapes[t][1:] != s_shapes[s][1:] else ")"))
    return lines


def distill_settings(cfg: Config, backend: str = "auto") -> DistillSettings:
    """The Distiller's switches from the flags of the same names, the loss weights by `loss_weights`."""
    switches = {f.name: getattr(cfg, f.name) for f in fields(DistillSettings) if hasattr(cfg, f.name)}
    return DistillSettings(**switches | loss_weights(cfg) | {"backend": backend})


def compile_task(objective: nn.Module, critic: Critic, **options) -> None:
    """What --compile compiles, in place: the objective's child modules and every discriminator (`options` go to
    torch.compile; the loop passes mode=--compile-mode). A ModuleList (the refiners, the connectors) is never called
    itself, so its members are compiled one by one."""
    modules = [*critic.discriminators]
    for m in objective.children():
        modules += list(m) if isinstance(m, nn.ModuleList) else [m]
    for m in modules:
        m.compile(**options)


def build_dataset(cfg: Config, phase: str = "train", train: bool = True):
    """The data of a config whose cfg.model is settled (a distill config after `resolve_teacher`)."""
    paired = cfg.model == "pix2pix"
    mode = cfg.dataset_mode if cfg.dataset_mode != "auto" else ("aligned" if paired else "unaligned")
    root = cfg.dataroot
    if root == "sample":
        root = data_lib.build_sample_set(Path(cfg.out_dir) / "data", unpaired=mode == "unaligned", seed=cfg.seed)
    return data_lib.make_dataset(
        root, mode, phase, train, cfg.direction, cfg.load_size, cfg.crop_size, cfg.seed, cfg.flip
    )


# ----------------------------------------------------------------------------------------- checks and optimizers


def _one_of(cfg: Config, name: str, allowed: tuple) -> None:
    if getattr(cfg, name) not in allowed:
        raise UsageError(f"{_flag(name)} must be one of {', '.join(map(str, allowed))}; got {getattr(cfg, name)!r}")


def _in_range(cfg: Config, name: str, low: float, high: float = math.inf, what: str = "", closed_high=True) -> None:
    """`low <= value <= high` (`< high` when not closed_high), a finite number; `what` says what an edge means."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{_flag(name)} must be a number; got {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"{_flag(name)} must be a finite number; got {value}")
    if not (low <= value and (value <= high if closed_high else value < high)):
        top = "" if high == math.inf else (f" and <= {high}" if closed_high else f" and < {high}")
        raise UsageError(f"{_flag(name)} must be >= {low}{top}{what}; got {value}")


def check_device(device: str, flag_name: str = "--device") -> None:
    """auto, cpu, cuda or cuda:N of a GPU this machine has; UsageError otherwise (a run never falls back to the CPU
    silently)."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device in ("auto", "cpu"):
        return
    if match is None:
        raise UsageError(f"{flag_name} must be auto, cpu, cuda or cuda:N; got {device!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"{flag_name} {device}: this machine has no CUDA device (torch.cuda.is_available() is False)")
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"{flag_name} {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")


def check_config(cfg: Config) -> None:
    """Every value checked before any file, process group, model or data is touched: a bad one raises UsageError
    naming the flag, what it got and what it takes (the command exits 2)."""
    check_values(cfg)
    check_device(cfg.device)


def check_values(cfg: Config) -> None:
    """check_config's checks that do not depend on this machine (what a run config read from a file must pass)."""
    if cfg.job not in ("teacher", "distill"):
        raise UsageError(f"job must be 'teacher' or 'distill', got {cfg.job!r}")
    distill = cfg.job == "distill"
    if distill and not cfg.teacher:
        raise UsageError("distill needs --teacher, the checkpoint of a train-teacher run")
    _one_of(cfg, "model", OBJECTIVES)
    _one_of(cfg, "dataset_mode", ("auto", "aligned", "unaligned"))
    _one_of(cfg, "direction", data_lib.DIRECTIONS)
    parse_loggers(cfg.logger)
    _in_range(cfg, "crop_size", data_lib.SIZE_MULTIPLE, data_lib.MAX_SIZE)
    if cfg.crop_size % data_lib.SIZE_MULTIPLE:
        raise UsageError(
            f"--crop-size must be a multiple of {data_lib.SIZE_MULTIPLE} (the generators halve the resolution twice "
            f"and double it back); got {cfg.crop_size}"
        )
    _in_range(cfg, "load_size", cfg.crop_size, data_lib.MAX_SIZE,
              what=" (--crop-size: the crop is cut from the resized image)")  # fmt: skip
    _in_range(cfg, "batch_size", 0, what=" (0: 4 when paired, 1 when unpaired)")
    _in_range(cfg, "workers", 0, what=" (0: load in the training process)")
    _model_flags(cfg, "generator", "auto" if distill else None)
    _in_range(cfg, "ngf", 0 if distill else 1, what=" (distill: 0 = what the teacher file implies)" if distill else "")
    _one_of(cfg, "discriminator", DISCRIMINATORS)
    _in_range(cfg, "ndf", 1)
    _in_range(cfg, "n_layers_d", 1)
    if distill:
        _one_of(cfg, "recipe", RECIPES)
        _in_range(cfg, "student_ngf", 1)
        if cfg.student:
            _model_flags(cfg, "student")
        elif cfg.student_kwargs:
            raise UsageError("--student-kwargs is for --student package.module:callable, and --student is not given")
        _one_of(cfg, "kd", KD_MODES)
        _one_of(cfg, "mode", REFINER_MODES)
        _one_of(cfg, "composition", COMPOSITIONS)
        _one_of(cfg, "refiner_init", REFINER_INITS)
        _one_of(cfg, "ack_train", ACK_TRAIN)
        _one_of(cfg, "replace_path", REPLACE_PATHS)
        _in_range(cfg, "mask_ratio", 0, 1, closed_high=False)
        _in_range(cfg, "ack_path_every", 1)
        if cfg.ack_path_every > 1 and cfg.ack_train == "joint":
            raise UsageError("--ack-path-every > 1 needs --ack-train teacher-path or masked (joint trains the refiners "
                             "through the feature loss every step)")  # fmt: skip
        _in_range(cfg, "kv_stride", 1)
        _in_range(cfg, "heads", 1)
        if cfg.loss_preset != "auto":
            _one_of(cfg, "loss_preset", tuple(LOSS_PRESETS))
        for name in ("lambda_recon", "lambda_gan", "lambda_feat"):
            if getattr(cfg, name) is not None:
                _in_range(cfg, name, 0)
    _in_range(cfg, "steps", 1)
    _in_range(cfg, "decay_steps", -1, cfg.steps, what=" (--steps; -1: steps // 2)")
    _in_range(cfg, "lr", 0)
    if cfg.lr == 0:
        raise UsageError("--lr must be > 0; got 0")
    _in_range(cfg, "beta1", 0, 1, closed_high=False)
    _in_range(cfg, "beta2", 0, 1, closed_high=False)
    check_sha256(cfg.inception_sha256)
    _one_of(cfg, "amp", AMP_MODES)
    _one_of(cfg, "compile_mode", COMPILE_MODES)
    _in_range(cfg, "seed", 0, 2**63 - 1)
    for name in ("log_every", "sample_every", "ckpt_every", "eval_every", "diag_every", "stop_at", "val_size"):
        _in_range(cfg, name, 0, what=" (0: never)" if name.endswith("every") else "")
    _one_of(cfg, "select_on", SELECT_ON)
    _one_of(cfg, "eval_split", ("", *data_lib.EVAL_PHASES))
    if cfg.select_on == "val" and cfg.eval_every <= 0:
        raise UsageError(f"--select-on val needs --eval-every > 0 (steps between evaluations), got {cfg.eval_every}")
    if cfg.stop_at > 0 and cfg.ckpt_every == 0:
        raise UsageError("--stop-at > 0 stops with a checkpoint to resume from, and --ckpt-every 0 writes none")
    if cfg.resume and cfg.overwrite:
        raise UsageError("--resume continues the run in --out-dir and --overwrite starts it afresh: give one")


def _model_flags(cfg: Config, name: str, extra: str | None = None) -> None:
    """--NAME (a built-in, `extra`, or package.module:callable) and --NAME-kwargs (a JSON object, for an import path
    only); nothing is imported here: a run config read from a file passes these checks too."""
    value, kwargs = getattr(cfg, name), getattr(cfg, f"{name}_kwargs")
    if not isinstance(value, str) or not (value in GENERATORS or value == extra or is_import_path(value)):
        shown = ", ".join([*GENERATORS, *([extra] if extra else [])])
        raise UsageError(f"{_flag(name)} must be one of {shown}, or package.module:callable for a generator of your "
                         f"own; got {value!r}")  # fmt: skip
    if not isinstance(kwargs, str):
        raise UsageError(f"{_flag(name + '_kwargs')} must be JSON text; got {type(kwargs).__name__}")
    try:
        parse_kwargs(kwargs, _flag(name + "_kwargs"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if kwargs and not is_import_path(value):
        width = "--ngf" if name == "generator" else "--student-ngf"
        raise UsageError(f"{_flag(name + '_kwargs')} is for {_flag(name)} package.module:callable; {_flag(name)} "
                         f"{value} is built-in (its width: {width})")  # fmt: skip


def check_crop(module: nn.Module, channels: int, crop: int, what: str, same_size: bool = False) -> int:
    """UsageError when `module` cannot take a training batch of `crop`-px images (a U-Net below 256 px, a PatchGAN
    deeper than the crop allows): a forward of a copy in training mode (`on_copy`: on the meta device, which computes
    shapes only, where the model allows). Returns its MACs per image at that size (torchprofile's convention),
    counted on the same copy."""
    def run(copied: nn.Module, example) -> tuple[object, int]:
        x = example(2, channels, crop, crop)
        return copied(x), count_macs(copied, x[:1])

    try:
        y, macs = on_copy(module, run, train=True)
    except Exception as e:  # a user's generator runs here first: whatever its forward raises, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--crop-size {crop}: the {what} cannot take {crop}x{crop} images ({first})") from None
    if same_size:  # a generator: an image of its input's size and channels
        if not isinstance(y, torch.Tensor) or y.dim() != 4:
            got = f"a {y.dim()}-d tensor" if isinstance(y, torch.Tensor) else f"a {type(y).__name__}"
            raise UsageError(f"the {what} returns {got}; a generator returns a (B, {channels}, H, W) image")
        if y.shape[-2:] != (crop, crop):
            raise UsageError(
                f"--crop-size {crop}: the {what} turns {crop}x{crop} images into {y.shape[-1]}x{y.shape[-2]} ones"
            )
        if y.shape[1] != channels:
            raise UsageError(f"the {what} turns {channels}-channel images into {y.shape[1]}-channel ones; a "
                             f"generator returns an RGB image ({channels} channels)")  # fmt: skip
    return macs


def decay_steps(cfg: Config) -> int:
    """The steps over which the learning rate decays linearly to 0 (the last ones): --decay-steps, -1 = steps // 2."""
    return cfg.steps // 2 if cfg.decay_steps < 0 else cfg.decay_steps


def lr_factor(step: int, hold: int, decay: int) -> float:
    """Constant for `hold` steps, then linear to 0 over the last `decay` steps (the peers' rule)."""
    return 1.0 if step < hold else max(0.0, 1.0 - (step - hold + 1) / (decay + 1))


def build_optimizers(cfg: Config, objective: nn.Module, critic: Critic) -> tuple:
    """(g_opt, d_opt, g_sched, d_sched): Adam for the objective's trainable parameters and for the critic."""
    g_params = [p for p in objective.parameters() if p.requires_grad]
    g_opt = torch.optim.Adam(g_params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    d_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    decay = decay_steps(cfg)
    schedule = functools.partial(lr_factor, hold=cfg.steps - decay, decay=decay)
    g_sched = torch.optim.lr_scheduler.LambdaLR(g_opt, schedule)
    d_sched = torch.optim.lr_scheduler.LambdaLR(d_opt, schedule)
    return g_opt, d_opt, g_sched, d_sched
