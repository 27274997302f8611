"""Assembling a training job from its Config: the models, taps, refiners, losses, data and optimizers.

`train.py` runs the loop; this module says what it trains. `build_task(cfg, teacher)` gives the objective (a
teacher objective from `losses`, or the `Distiller`), the critic and the generator to evaluate; a distill job's
teacher file is read once (`read_teacher`) and handed to everything that needs it. `ackd_fast.study` builds its arms
from the same Config.

Loss weights of distillation come from per-task presets (LOSS_PRESETS, GAN Compression's scripts), picked by the
data folder's name unless given; an explicit --lambda-* wins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from ackd_fast import data as data_lib
from ackd_fast.distill import Distiller
from ackd_fast.losses import Critic, CycleGAN, Pix2Pix
from ackd_fast.models import DEFAULT_TAPS, build_discriminator, build_generator
from ackd_fast.peers import GeneratorFile, load_discriminator, read_generator

OBJECTIVES = ("pix2pix", "cyclegan")
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


@dataclass
class Config:
    # what to train
    job: str = "teacher"  # "teacher" or "distill"
    model: str = "pix2pix"  # teacher objective, "pix2pix" or "cyclegan" (distill: the teacher checkpoint's)
    out_dir: str = "runs/train"
    # data
    dataroot: str = "sample"  # a folder, or "sample": the built-in edges->photo set, built under out_dir/data
    dataset_mode: str = "auto"  # "aligned", "unaligned", or "auto": aligned when paired (pix2pix)
    direction: str = "AtoB"
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True
    batch_size: int = 0  # per process; 0: 4 when paired, 1 when unpaired (the peers' defaults)
    workers: int = 2
    # teacher models (distill from a bare generator file: its architecture, "auto" / 0 = what its tensors imply)
    generator: str = "resnet_9blocks"
    ngf: int = 64
    discriminator: str = "n_layers"
    ndf: int = 64
    n_layers_d: int = 3
    # distillation
    teacher: str = ""  # teacher: a train-teacher checkpoint, an exported generator, or a peer's generator file
    teacher_d: str = ""  # the student's starting discriminator (a peer's latest_net_D.pth); "": the teacher run's
    recipe: str = "compress"  # "compress": mobile_resnet_9blocks at student_ngf; "self": the teacher's architecture
    student_ngf: int = 16
    taps: str = ""  # comma-separated teacher taps; "" = the generator's default (stem,block3,block6,block9)
    student_taps: str = ""  # comma-separated student taps; "" = its default
    kd: str = "ackd"  # feature distillation: "ackd", "plain" (GAN Compression's, no refiners) or "none"
    mode: str = "both"  # the refiners: "attention", "fusion" or "both"
    composition: str = "parallel"  # mode "both": "parallel" or "chained" (modules.ACKRefiner)
    residual: bool = True  # ACK-F's deep-stage residual; False: the paper's ablation
    refiner_init: str = "default"  # "default", "identity" or "normal" (modules.ACKRefiner)
    ack_train: str = "teacher-path"  # how the refiners learn: "teacher-path", "joint" or "masked" (distill.py)
    mask_ratio: float = 0.5  # ack_train="masked": the share of the deep map's pixels zeroed
    kv_stride: int = 1
    heads: int = 4
    loss_preset: str = "auto"  # the per-task loss weights (LOSS_PRESETS); "auto": from the data folder's name
    lambda_recon: float | None = None  # None: the preset's
    lambda_gan: float | None = None
    lambda_feat: float | None = None
    diag_every: int = 100  # steps between the refiners' diagnostics in log.jsonl (ACKD; also at step 1); 0: never
    # optimisation
    steps: int = 1000
    decay_steps: int = -1  # the last decay_steps steps decay the lr linearly to 0; -1: steps // 2
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # system
    device: str = "auto"
    amp: str = "auto"  # "auto": bf16 on a CUDA device that has it, none on CPU
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode; "reduce-overhead" captures each step in CUDA graphs
    channels_last: bool = True  # on CUDA only
    tf32: bool = True
    seed: int = 0
    log_every: int = 10
    sample_every: int = 200
    ckpt_every: int = 200
    resume: bool = False
    stop_at: int = 0  # stop (with a checkpoint) after this step although `steps` sets the schedule; 0: run to the end
    progress: bool = True
    # evaluation
    eval_every: int = 0  # steps between evaluations (PSNR/SSIM; FID/KID when Inception weights are there); 0: none
    select_on: str = "none"  # "val": hold out val_size training samples and keep the best step on them (best.pt)
    val_size: int = 0  # with select_on="val"; 0: a tenth of the training samples, at least 1 and at most 200
    eval_split: str = ""  # the split --eval-every scores ("test", "val"); "": test, else val
    inception_weights: str = ""  # pytorch-fid's pt_inception file; "": the torch hub cache (training never downloads)


def config_from_dict(d: dict) -> Config:
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}")
    return Config(**d)


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
        raise ValueError(f"generator {generator_name!r} has no default taps; name them with --taps / --student-taps")
    return DEFAULT_TAPS[generator_name]


def build_task(cfg: Config, teacher: GeneratorFile | None = None) -> tuple[nn.Module, Critic, nn.Module, dict]:
    """(objective, critic, generator to evaluate, generator spec) for the job. Distillation takes the teacher's
    architecture and weights, and its discriminator's, from `teacher` (cfg.teacher read by `read_teacher`; read
    here when not given)."""
    if cfg.job == "teacher":
        if cfg.model not in OBJECTIVES:
            raise ValueError(f"model must be one of {OBJECTIVES}, got {cfg.model!r}")
        g = build_generator(cfg.generator, cfg.ngf)
        if cfg.model == "pix2pix":
            objective: nn.Module = Pix2Pix(g)
            discs = [build_discriminator(cfg.discriminator, 6, cfg.ndf, cfg.n_layers_d)]
        else:
            objective = CycleGAN(g, build_generator(cfg.generator, cfg.ngf))
            discs = [build_discriminator(cfg.discriminator, 3, cfg.ndf, cfg.n_layers_d) for _ in range(2)]
        return objective, Critic(discs, objective.gan_mode), g, {"name": cfg.generator, "ngf": cfg.ngf}
    if cfg.job != "distill":
        raise ValueError(f"job must be 'teacher' or 'distill', got {cfg.job!r}")
    tfile = teacher if teacher is not None else read_teacher(cfg)
    if cfg.recipe == "compress":
        spec = {"name": "mobile_resnet_9blocks", "ngf": cfg.student_ngf}
    elif cfg.recipe == "self":
        spec = {"name": tfile.name, "ngf": tfile.ngf}
    else:
        raise ValueError(f"recipe must be one of {RECIPES}, got {cfg.recipe!r}")
    student = build_generator(spec["name"], spec["ngf"])
    paired = (tfile.objective or cfg.model) == "pix2pix"
    gan_mode = Pix2Pix.gan_mode if paired else CycleGAN.gan_mode
    disc = teacher_discriminator(cfg, tfile, paired)
    distiller = build_distiller(cfg, tfile.generator, tfile.name, student, spec["name"], paired)
    return distiller, Critic([disc], gan_mode), student, spec


def read_teacher(cfg: Config) -> GeneratorFile:
    """The teacher generator of a distill config: cfg.teacher read by `peers.read_generator`. A bare generator file
    must be the cfg.generator / cfg.ngf architecture ("auto" / 0: whatever its tensors imply); a run checkpoint or an
    exported generator says its own."""
    if not cfg.teacher:
        raise ValueError("distill needs --teacher, the checkpoint of a train-teacher run")
    tfile = read_generator(cfg.teacher)
    if tfile.config is None and not tfile.info:
        name = None if cfg.generator in ("", "auto") else cfg.generator
        if (name or tfile.name) != tfile.name or (cfg.ngf or tfile.ngf) != tfile.ngf:
            raise ValueError(
                f"teacher {cfg.teacher} is a {tfile.name} ngf {tfile.ngf} generator ({tfile.source}), not the "
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
        tcfg = config_from_dict(tfile.config)
        disc = build_discriminator(tcfg.discriminator, channels, tcfg.ndf, tcfg.n_layers_d)
        prefix = "discriminators.0."
        disc.load_state_dict({k[len(prefix) :]: v for k, v in tfile.discriminators.items() if k.startswith(prefix)})
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
    note = (f"teacher {cfg.teacher}: {tfile.name} ngf {tfile.ngf} ({tfile.source}); objective {model}, direction "
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
    """The Distiller the config asks for (taps, ACKD switches, loss weights); `backend` goes to every refiner."""
    return Distiller(
        teacher,
        student,
        _taps(cfg.taps, teacher_name),
        _taps(cfg.student_taps, student_name),
        paired=paired,
        gan_mode=Pix2Pix.gan_mode if paired else CycleGAN.gan_mode,
        kd=cfg.kd,
        mode=cfg.mode,
        composition=cfg.composition,
        residual=cfg.residual,
        refiner_init=cfg.refiner_init,
        ack_train=cfg.ack_train,
        mask_ratio=cfg.mask_ratio,
        kv_stride=cfg.kv_stride,
        heads=cfg.heads,
        backend=backend,
        **loss_weights(cfg),
    )


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


def check_config(cfg: Config) -> None:
    """The checks that need no file: a bad value fails before any process group, model or data is built."""
    if cfg.job not in ("teacher", "distill"):
        raise ValueError(f"job must be 'teacher' or 'distill', got {cfg.job!r}")
    if cfg.job == "distill" and not cfg.teacher:
        raise ValueError("distill needs --teacher, the checkpoint of a train-teacher run")
    if cfg.amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {cfg.amp!r}")
    if cfg.compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {cfg.compile_mode!r}")
    if cfg.loss_preset != "auto" and cfg.loss_preset not in LOSS_PRESETS:
        raise ValueError(f"loss_preset must be 'auto' or one of {tuple(LOSS_PRESETS)}, got {cfg.loss_preset!r}")
    for name in ("log_every", "sample_every", "ckpt_every", "eval_every", "diag_every"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0: never), got {getattr(cfg, name)}")
    if cfg.select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {cfg.select_on!r}")
    if cfg.select_on == "val" and cfg.eval_every <= 0:
        raise ValueError(f"select_on='val' needs eval_every > 0 (steps between evaluations), got {cfg.eval_every}")
    if cfg.stop_at > 0 and cfg.ckpt_every == 0:
        raise ValueError("stop_at > 0 stops with a checkpoint to resume from, and ckpt_every=0 writes none")


def lr_factor(step: int, hold: int, decay: int) -> float:
    """Constant for `hold` steps, then linear to 0 over the last `decay` steps (the peers' rule)."""
    return 1.0 if step < hold else max(0.0, 1.0 - (step - hold + 1) / (decay + 1))


def build_optimizers(cfg: Config, objective: nn.Module, critic: Critic) -> tuple:
    """(g_opt, d_opt, g_sched, d_sched): Adam for the objective's trainable parameters and for the critic."""
    g_params = [p for p in objective.parameters() if p.requires_grad]
    g_opt = torch.optim.Adam(g_params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    d_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    decay = cfg.steps // 2 if cfg.decay_steps < 0 else cfg.decay_steps
    schedule = functools.partial(lr_factor, hold=cfg.steps - decay, decay=decay)
    g_sched = torch.optim.lr_scheduler.LambdaLR(g_opt, schedule)
    d_sched = torch.optim.lr_scheduler.LambdaLR(d_opt, schedule)
    return g_opt, d_opt, g_sched, d_sched
