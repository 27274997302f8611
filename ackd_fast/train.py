"""The training loop: pix2pix / CycleGAN teachers and ACKD distillation, read top to bottom.

    ackd-fast train-teacher --dataroot DATA --model pix2pix ...       (one process)
    torchrun --nproc_per_node 8 -m ackd_fast.cli distill --teacher T.pt  (DDP; multi-node with torchrun's flags)

One step: the generator side (an objective module from `losses` or the `Distiller`) with the discriminators frozen,
then the discriminators on the detached fakes. AMP (bf16, or fp16 with a gradient scaler), channels_last, TF32 and
torch.compile are switches. Everything needed to continue lives in one checkpoint dict written atomically
(temporary file, then rename); `resume` continues bit for bit on CPU, data order included.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from ackd_fast import data as data_lib
from ackd_fast import losses
from ackd_fast.distill import Distiller
from ackd_fast.evaluation import PeriodicEvaluation
from ackd_fast.losses import Critic, CycleGAN, Pix2Pix
from ackd_fast.models import DEFAULT_TAPS, build_discriminator, build_generator

OBJECTIVES = ("pix2pix", "cyclegan")
AMP_MODES = ("auto", "none", "bf16", "fp16")
SELECT_ON = ("none", "val")
CHECKPOINT = "ckpt.pt"
BEST = "best.pt"  # the generator of the best evaluation on the validation split (select_on="val")


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
    # teacher models
    generator: str = "resnet_9blocks"
    ngf: int = 64
    discriminator: str = "n_layers"
    ndf: int = 64
    n_layers_d: int = 3
    # distillation
    teacher: str = ""  # teacher checkpoint (of a train-teacher run)
    recipe: str = "compress"  # "compress": mobile_resnet_9blocks at student_ngf; "self": the teacher's architecture
    student_ngf: int = 16
    taps: str = ""  # comma-separated teacher taps; "" = the generator's default (stem,block3,block6,block9)
    student_taps: str = ""  # comma-separated student taps; "" = its default
    ackd: bool = True  # False: the baseline student (no refiners, connectors or feature loss); the alias of kd="none"
    kd: str = "ackd"  # feature distillation: "ackd", "plain" (GAN Compression's, no refiners) or "none"
    mode: str = "both"
    residual: bool = True
    ack_train: str = "teacher-path"
    kv_stride: int = 1
    heads: int = 4
    lambda_recon: float = 100.0
    lambda_gan: float = 1.0
    lambda_feat: float = 1.0
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
    inception_weights: str = ""  # pytorch-fid's pt_inception file; "": the torch hub cache (training never downloads)


def config_from_dict(d: dict) -> Config:
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}")
    return Config(**d)


# ----------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Writes `state` to path.tmp, syncs it, then renames over `path`: a crash at any moment leaves either the
    previous checkpoint or the new one, never half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # Checkpoints hold RNG states and the config besides tensors: only load files you wrote.
    return torch.load(path, map_location="cpu", weights_only=False)


def load_generator(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The generator a checkpoint trained (the teacher's A->B generator, or the distilled student) and its config."""
    ckpt = load_checkpoint(path)
    spec = ckpt["generator"]
    g = build_generator(spec["name"], spec["ngf"])
    g.load_state_dict(spec["state"])
    return g.eval(), ckpt["config"]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------- models


def _taps(spec: str, generator_name: str) -> tuple[str, ...]:
    if spec:
        return tuple(t.strip() for t in spec.split(",") if t.strip())
    if generator_name not in DEFAULT_TAPS:
        raise ValueError(f"generator {generator_name!r} has no default taps; name them with --taps / --student-taps")
    return DEFAULT_TAPS[generator_name]


def build_task(cfg: Config) -> tuple[nn.Module, Critic, nn.Module, dict]:
    """(objective, critic, generator to evaluate, generator spec) for the job. Distillation reads the teacher's
    architecture and weights, and its discriminator's, from cfg.teacher."""
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
    if not cfg.teacher:
        raise ValueError("distill needs --teacher, the checkpoint of a train-teacher run")
    ckpt = load_checkpoint(cfg.teacher)
    tcfg = config_from_dict(ckpt["config"])
    teacher = build_generator(tcfg.generator, tcfg.ngf)
    teacher.load_state_dict(ckpt["generator"]["state"])
    if cfg.recipe == "compress":
        spec = {"name": "mobile_resnet_9blocks", "ngf": cfg.student_ngf}
    elif cfg.recipe == "self":
        spec = {"name": tcfg.generator, "ngf": tcfg.ngf}
    else:
        raise ValueError(f"recipe must be 'compress' or 'self', got {cfg.recipe!r}")
    student = build_generator(spec["name"], spec["ngf"])
    paired = tcfg.model == "pix2pix"
    gan_mode = Pix2Pix.gan_mode if paired else CycleGAN.gan_mode
    # The student's discriminator starts as the teacher's (its first one: the judge of domain B).
    disc = build_discriminator(tcfg.discriminator, 6 if paired else 3, tcfg.ndf, tcfg.n_layers_d)
    disc.load_state_dict({k.split(".", 2)[2]: v for k, v in ckpt["d"].items() if k.startswith("discriminators.0.")})
    distiller = build_distiller(cfg, teacher, tcfg.generator, student, spec["name"], paired)
    return distiller, Critic([disc], gan_mode), student, spec


def kd_of(cfg: Config) -> str:
    """The feature distillation the config asks for: cfg.kd, or "none" when cfg.ackd is False (--no-ackd)."""
    if not cfg.ackd and cfg.kd not in ("ackd", "none"):
        raise ValueError(f"ackd=False (--no-ackd) means kd='none', but kd={cfg.kd!r}; give one of the two")
    return cfg.kd if cfg.ackd else "none"


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
        kd=kd_of(cfg),
        mode=cfg.mode,
        residual=cfg.residual,
        ack_train=cfg.ack_train,
        kv_stride=cfg.kv_stride,
        heads=cfg.heads,
        lambda_recon=cfg.lambda_recon,
        lambda_gan=cfg.lambda_gan,
        lambda_feat=cfg.lambda_feat,
        backend=backend,
    )


def compile_task(objective: nn.Module, critic: Critic, **options) -> None:
    """What --compile compiles, in place: the objective's child modules and every discriminator (`options` go to
    torch.compile; the loop uses its defaults). A ModuleList (the refiners, the connectors) is never called itself,
    so its members are compiled one by one."""
    modules = [*critic.discriminators]
    for m in objective.children():
        modules += list(m) if isinstance(m, nn.ModuleList) else [m]
    for m in modules:
        m.compile(**options)


def _paired(cfg: Config) -> bool:
    if cfg.job == "distill":
        return config_from_dict(load_checkpoint(cfg.teacher)["config"]).model == "pix2pix"
    return cfg.model == "pix2pix"


def build_dataset(cfg: Config, phase: str = "train", train: bool = True):
    paired = _paired(cfg)
    mode = cfg.dataset_mode if cfg.dataset_mode != "auto" else ("aligned" if paired else "unaligned")
    root = cfg.dataroot
    if root == "sample":
        root = data_lib.build_sample_set(Path(cfg.out_dir) / "data", unpaired=mode == "unaligned", seed=cfg.seed)
    return data_lib.make_dataset(
        root, mode, phase, train, cfg.direction, cfg.load_size, cfg.crop_size, cfg.seed, cfg.flip
    )


# ----------------------------------------------------------------------------------------- the loop


def train_step(
    g_model: nn.Module,
    d_model: nn.Module,
    critic: Critic,
    g_opt: torch.optim.Optimizer,
    d_opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast: contextlib.AbstractContextManager,
    a: torch.Tensor,
    b: torch.Tensor,
) -> tuple[losses.Step, torch.Tensor]:
    """One optimisation step on the batch (a, b): the generator side (`g_model`, the objective, perhaps DDP-wrapped)
    with the discriminators frozen, then the discriminators (`d_model`, the critic, perhaps wrapped) on the detached
    fakes. Returns the generator side's Step and the discriminator loss; the schedules are the caller's.
    (benchmarks/bench_train_step.py times this function.)"""
    # generator side, discriminators frozen
    critic.requires_grad_(False)
    with autocast:
        out = g_model(a, b, critic)
    g_opt.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    scaler.step(g_opt)
    # discriminator side, on the detached fakes
    critic.requires_grad_(True)
    with autocast:
        d_loss = d_model(out.d_pairs)
    d_opt.zero_grad(set_to_none=True)
    scaler.scale(d_loss).backward()
    scaler.step(d_opt)
    scaler.update()
    return out, d_loss


def train(cfg: Config) -> dict:
    # --- set-up: processes, device, precision, seed
    if cfg.job not in ("teacher", "distill"):
        raise ValueError(f"job must be 'teacher' or 'distill', got {cfg.job!r}")
    if cfg.job == "distill" and not cfg.teacher:
        raise ValueError("distill needs --teacher, the checkpoint of a train-teacher run")
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if ddp:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world, local_rank = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    else:
        rank, world, local_rank = 0, 1, 0
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        if cfg.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    if cfg.amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {cfg.amp!r}")
    if cfg.select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {cfg.select_on!r}")
    if cfg.select_on == "val" and cfg.eval_every <= 0:
        raise ValueError(f"select_on='val' needs eval_every > 0 (steps between evaluations), got {cfg.eval_every}")
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if use_cuda and torch.cuda.is_bf16_supported() else "none")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    # channels_last pays on CUDA (tensor cores); on CPU the instance norms run several times slower in it.
    memory_format = torch.channels_last if cfg.channels_last and use_cuda else torch.contiguous_format
    master = rank == 0
    out_dir = Path(cfg.out_dir)
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    # The same seed on every rank: identical initial weights (DDP also broadcasts them); the sampler splits the data.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # --- data: a fixed permutation per epoch from the sampler; each sample's augmentation seeded by (epoch, index)
    if master and cfg.dataroot == "sample":
        build_dataset(cfg)  # rank 0 writes the sample set once; the others wait below
    if ddp:
        dist.barrier()
    dataset = build_dataset(cfg)
    # Evaluation data: with select_on="val", samples held out of the training data (selecting on the test split,
    # as the peers do, would report a best-of-many test score); otherwise the test split, for the log only.
    eval_set, eval_split = None, ""
    if cfg.select_on == "val":
        dataset, eval_set = dataset.split(cfg.val_size or max(1, min(200, len(dataset) // 10)), cfg.seed)
        eval_split = "val"
    elif cfg.eval_every > 0:
        try:
            eval_set, eval_split = build_dataset(cfg, "test", train=False), "test"
        except (FileNotFoundError, ValueError) as e:
            if master:
                print(f"eval_every={cfg.eval_every} but no test split to evaluate on: {e}")
    batch_size = cfg.batch_size or (4 if dataset.paired else 1)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"dataset {cfg.dataroot} has {len(dataset)} samples: too few for batch_size={batch_size} "
            f"on {world} processes"
        )

    def epoch_loader(epoch: int, skip: int) -> DataLoader:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        order = list(sampler)
        batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(skip, steps_per_epoch)]
        return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers, pin_memory=use_cuda)

    # --- models, optimizers, schedules
    objective, critic, generator, spec = build_task(cfg)
    objective.to(device, memory_format=memory_format)
    critic.to(device, memory_format=memory_format)
    if cfg.compile:
        compile_task(objective, critic)
    g_params = [p for p in objective.parameters() if p.requires_grad]
    g_opt = torch.optim.Adam(g_params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    d_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    decay = cfg.steps // 2 if cfg.decay_steps < 0 else cfg.decay_steps
    hold = cfg.steps - decay

    def lr_lambda(step: int) -> float:  # constant, then linear to 0 over the last `decay` steps (the peers' rule)
        return 1.0 if step < hold else max(0.0, 1.0 - (step - hold + 1) / (decay + 1))

    g_sched = torch.optim.lr_scheduler.LambdaLR(g_opt, lr_lambda)
    d_sched = torch.optim.lr_scheduler.LambdaLR(d_opt, lr_lambda)
    # Without residuals, ACK-F in "both" mode ignores ACK-A's output: DDP must then expect unused parameters.
    unused = cfg.job == "distill" and cfg.ackd and cfg.mode == "both" and not cfg.residual
    g_model = (
        DDP(objective, device_ids=[local_rank] if use_cuda else None, find_unused_parameters=unused)
        if ddp
        else objective
    )
    d_model = DDP(critic, device_ids=[local_rank] if use_cuda else None) if ddp else critic
    evaluator = None
    if master and eval_set is not None:
        evaluator = PeriodicEvaluation(eval_set, eval_split, device, cfg.inception_weights, cfg.select_on == "val")
        if evaluator.note:
            print(evaluator.note)

    # --- resume
    step = 0
    ckpt_path = out_dir / CHECKPOINT
    if cfg.resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        objective.load_state_dict(ckpt["g"])
        critic.load_state_dict(ckpt["d"])
        g_opt.load_state_dict(ckpt["g_opt"])
        d_opt.load_state_dict(ckpt["d_opt"])
        g_sched.load_state_dict(ckpt["g_sched"])
        d_sched.load_state_dict(ckpt["d_sched"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        step = ckpt["step"]
        if evaluator is not None:
            evaluator.load_state_dict(ckpt.get("evaluation", {}))
        if master:
            print(f"resumed {ckpt_path} at step {step}")

    def checkpoint() -> None:
        if master:
            state = {
                "config": asdict(cfg),
                "step": step,
                "g": objective.state_dict(),
                "d": critic.state_dict(),
                "g_opt": g_opt.state_dict(),
                "d_opt": d_opt.state_dict(),
                "g_sched": g_sched.state_dict(),
                "d_sched": d_sched.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "generator": {**spec, "state": generator.state_dict()},
                "evaluation": evaluator.state_dict() if evaluator is not None else {},
            }
            save_checkpoint(state, ckpt_path)

    # --- the loop
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.steps
    epoch, skip = divmod(step, steps_per_epoch)
    batches = iter(epoch_loader(epoch, skip))
    # a resumed run appends to its log; a fresh one starts it over
    log_file = open(out_dir / "log.jsonl", "a" if step else "w") if master else None  # noqa: SIM115 (closed below)
    bar = None
    if master and cfg.progress:
        from tqdm import tqdm

        desc = f"{cfg.job} {cfg.model if cfg.job == 'teacher' else cfg.recipe}"
        bar = tqdm(total=end, initial=step, desc=desc, mininterval=0.5)
    t0, images, start_time = time.perf_counter(), 0, time.perf_counter()
    logs: dict[str, float] = {}
    sums: dict[str, torch.Tensor] = {}
    g_model.train()
    d_model.train()
    while step < end:
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            batches = iter(epoch_loader(epoch, 0))
            continue
        a = batch["A"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        b = batch["B"].to(device, non_blocking=True).contiguous(memory_format=memory_format)

        out, d_loss = train_step(g_model, d_model, critic, g_opt, d_opt, scaler, autocast, a, b)
        g_sched.step()
        d_sched.step()
        step += 1
        images += a.shape[0] * world

        # Losses are summed on the device and read once per log interval (one sync), then averaged over it.
        terms = {"g_loss": out.loss, "d_loss": d_loss, **out.logs}
        sums = {k: sums.get(k, 0) + v.detach().float() for k, v in terms.items()}
        if master and (step % cfg.log_every == 0 or step == end):
            elapsed, n = time.perf_counter() - t0, images // (a.shape[0] * world)
            logs = {k: v.item() / n for k, v in sums.items()}
            record = {"step": step, "lr": g_sched.get_last_lr()[0], **logs, "img_per_s": images / elapsed}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if bar is not None:
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()} | {"img/s": f"{images / elapsed:.1f}"})
            t0, images, sums = time.perf_counter(), 0, {}
        if master and cfg.sample_every > 0 and (step % cfg.sample_every == 0 or step == end):
            # input / (teacher, when distilling) / output / target
            columns = [a, *out.extra.values(), out.fake, b]
            save_grid(out_dir / "samples" / f"step_{step:07d}.png", columns, rows=min(4, a.shape[0]))
        if evaluator is not None and (step % cfg.eval_every == 0 or step == end):
            scores, best = evaluator(generator, step)
            log_file.write(json.dumps({"step": step, "eval": eval_split, **scores}) + "\n")
            log_file.flush()
            if best:  # the generator alone, loadable by load_generator like ckpt.pt
                state = {
                    "config": asdict(cfg),
                    "step": step,
                    "selection": evaluator.best,
                    "generator": {**spec, "state": generator.state_dict()},
                }
                save_checkpoint(state, out_dir / BEST)
        if step % cfg.ckpt_every == 0 or step == end:
            checkpoint()
        if bar is not None:
            bar.update(1)

    if bar is not None:
        bar.close()
    if log_file is not None:
        log_file.close()
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return {"checkpoint": str(ckpt_path), "step": step, "wall_s": time.perf_counter() - start_time, "logs": logs}


def save_grid(path: str | os.PathLike, columns: list[torch.Tensor], rows: int) -> None:
    """A PNG whose row i shows image i of every tensor in `columns` ([-1, 1] images), side by side."""
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tiles = torch.stack([c[:rows].detach().float().cpu() for c in columns], 1).flatten(0, 1)
    save_image(tiles, path, nrow=len(columns), normalize=True, value_range=(-1, 1), padding=2)
