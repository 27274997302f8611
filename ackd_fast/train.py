"""The training loop: pix2pix / CycleGAN teachers and ACKD distillation, read top to bottom.

    ackd-fast train-teacher --dataroot DATA --model pix2pix ...       (one process)
    torchrun --nproc_per_node 8 -m ackd_fast.cli distill --teacher T.pt  (DDP; multi-node with torchrun's flags)

`train` reads top to bottom: set-up (processes, device, precision, seed), data, models and optimizers, resume, then
one loop that logs, samples, evaluates and checkpoints at fixed intervals (`*_every`; 0 turns each off). One step
(`train_step`): the generator side (an objective module from `losses` or the `Distiller`) with the discriminators
frozen, then the discriminators on the detached fakes. AMP (bf16, or fp16 with a gradient scaler), channels_last, TF32
and torch.compile (with its mode) are switches. Logged losses are averaged over the log interval and over the ranks.
Everything needed to continue lives in one checkpoint dict written atomically (temporary file, then rename); `resume`
continues bit for bit on CPU, data order included. The teacher may be a run checkpoint, an exported generator or a
peer's bare generator file (`peers.read_generator`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from ackd_fast import data as data_lib
from ackd_fast import losses
from ackd_fast.assembly import (
    CUDA_GRAPH_MODES,
    Config,
    build_dataset,
    build_optimizers,
    build_task,
    check_config,
    compile_task,
    read_teacher,
    resolve_teacher,
)
from ackd_fast.checkpoint import BEST, CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ackd_fast.evaluation import PeriodicEvaluation
from ackd_fast.losses import Critic
from ackd_fast.plots import plot_run


@dataclass
class Runtime:
    """Where and how this process trains: its rank, device and precision."""

    device: torch.device
    rank: int
    world: int
    ddp: bool  # started by torchrun with WORLD_SIZE > 1
    autocast: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler
    memory_format: torch.memory_format

    @property
    def master(self) -> bool:  # rank 0 logs, samples, evaluates and writes checkpoints
        return self.rank == 0


# How long a rank waits in a collective: rank 0 evaluates and writes checkpoints alone while the others wait in the
# next step's all-reduce, and an evaluation with FID can take far longer than NCCL's 10-minute default.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def auto_amp(device_type: str, capability: tuple[int, int] | None) -> str:
    """amp="auto": bf16 on a CUDA device that computes it natively (sm_80 and later; torch.cuda.is_bf16_supported
    also counts emulation), else none."""
    return "bf16" if device_type == "cuda" and capability is not None and tuple(capability) >= (8, 0) else "none"


def setup_runtime(cfg: Config) -> Runtime:
    """Picks the device, joins the process group under torchrun (NCCL on CUDA, bound to this rank's GPU; gloo on
    CPU) and picks the precision."""
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)  # before the process group, so NCCL binds this rank's GPU
    if ddp:
        options = {"device_id": device} if use_cuda else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT, **options)
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    if use_cuda and cfg.tf32:  # the fp32_precision API only: mixing in the legacy allow_tf32 makes torch raise
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    capability = torch.cuda.get_device_capability(device) if use_cuda else None
    amp = cfg.amp if cfg.amp != "auto" else auto_amp(device.type, capability)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    # channels_last pays on CUDA (tensor cores); on CPU the instance norms run several times slower in it.
    memory_format = torch.channels_last if cfg.channels_last and use_cuda else torch.contiguous_format
    return Runtime(device, rank, world, ddp, autocast, scaler, memory_format)


def seed_everything(seed: int) -> None:
    # The same seed on every rank: identical initial weights (DDP also broadcasts them); the sampler splits the data.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- data


def build_datasets(cfg: Config, rt: Runtime) -> tuple:
    """(training set, evaluation set or None, its split name). With select_on="val" the evaluation samples are held
    out of the training data (selecting on the test split, as the peers do, would report a best-of-many test score);
    otherwise, with eval_every > 0, the test split (else val, as edges2shoes and maps ship) is scored for the log
    only."""
    if rt.master and cfg.dataroot == "sample":
        build_dataset(cfg)  # rank 0 writes the sample set once; the others wait below
    if rt.ddp:
        dist.barrier()
    dataset = build_dataset(cfg)
    if cfg.select_on == "val":
        dataset, eval_set = dataset.split(cfg.val_size or max(1, min(200, len(dataset) // 10)), cfg.seed)
        return dataset, eval_set, "val"
    if cfg.eval_every > 0:
        root = Path(dataset.root)
        split = cfg.eval_split or data_lib.evaluation_phase(
            root, "aligned" if dataset.paired else "unaligned", cfg.direction
        )
        if rt.master:
            print(f"evaluating every {cfg.eval_every} steps on the {split} split of {root}")
        return dataset, build_dataset(cfg, split, train=False), split
    return dataset, None, ""


def training_batches(
    dataset, sampler: DistributedSampler, batch_size: int, start_step: int, workers: int, pin_memory: bool
) -> Iterator[dict]:
    """This rank's batches from step `start_step` on, epoch after epoch: each epoch a fixed permutation from the
    sampler, each sample's augmentation seeded by (epoch, index), so a resumed run sees what the full one saw."""
    steps_per_epoch = len(sampler) // batch_size
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        order = list(sampler)
        batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(skip, steps_per_epoch)]
        yield from DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory)
        epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------------------- optimisation


def wrap_ddp(module: nn.Module, rt: Runtime) -> nn.Module:
    """`module` in DistributedDataParallel under torchrun, else itself. Every parameter that trains is used by every
    step (--no-residual included), so DDP need not search for unused ones."""
    if not rt.ddp:
        return module
    return DDP(module, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)


# ----------------------------------------------------------------------------------------- the step


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


# ----------------------------------------------------------------------------------------- logging and state


def due(step: int, every: int, end: int) -> bool:
    """Whether a thing done every `every` steps (and at the last step) is due; every=0: never."""
    return every > 0 and (step % every == 0 or step == end)


class LossMeter:
    """Sums the steps' loss terms on the device (no host sync per step); `average` reads them once per log interval,
    averaged over its steps and over the ranks (one all_reduce of one small tensor; every rank must call it)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.images, self.start = 0, 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], images: int) -> None:
        self.sums = {k: self.sums.get(k, 0) + v.detach().float() for k, v in terms.items()}
        self.steps, self.images = self.steps + 1, self.images + images

    def average(self, world: int) -> tuple[dict[str, float], float]:
        """({term: mean over the interval and the ranks}, images per second over the interval); starts a new one."""
        total = torch.stack(list(self.sums.values()))
        if world > 1:
            dist.all_reduce(total)
            total /= world
        logs = {k: v / self.steps for k, v in zip(self.sums, total.tolist(), strict=True)}
        images_per_s = self.images / (time.perf_counter() - self.start)
        self.reset()
        return logs, images_per_s


class RunLog:
    """Rank 0's log.jsonl (appended to by a resumed run, started over by a fresh one) and progress bar; on the other
    ranks every method does nothing."""

    def __init__(self, cfg: Config, master: bool, step: int, end: int):
        self.file = open(Path(cfg.out_dir) / "log.jsonl", "a" if step else "w") if master else None  # noqa: SIM115
        self.bar = None
        if master and cfg.progress:
            from tqdm import tqdm

            desc = f"{cfg.job} {cfg.model if cfg.job == 'teacher' else cfg.recipe}"
            self.bar = tqdm(total=end, initial=step, desc=desc, mininterval=0.5)

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def show(self, logs: dict[str, float], images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()} | {"img/s": f"{images_per_s:.1f}"})

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for f in (self.bar, self.file):
            if f is not None:
                f.close()


def generator_state(cfg: Config, step: int, generator: nn.Module, spec: dict) -> dict:
    """What load_generator reads: the config, the step and the generator (architecture `spec` and weights)."""
    return {"config": asdict(cfg), "step": step, "generator": {**spec, "state": generator.state_dict()}}


def training_state(cfg: Config, step: int, stateful: dict, generator: nn.Module, spec: dict, evaluator) -> dict:
    """The checkpoint dict: the generator's state and everything `resume` needs (`stateful`: the models,
    optimizers, schedules and gradient scaler by checkpoint key; the RNGs; the evaluator's best step)."""
    return generator_state(cfg, step, generator, spec) | {
        **{key: obj.state_dict() for key, obj in stateful.items()},
        "rng": rng_state(),
        "evaluation": evaluator.state_dict() if evaluator is not None else {},
    }


def restore_training_state(ckpt: dict, stateful: dict, evaluator) -> int:
    """Loads what training_state saved into `stateful` and the RNGs; returns the step to continue from."""
    for key, obj in stateful.items():
        obj.load_state_dict(ckpt[key])
    set_rng_state(ckpt["rng"])
    if evaluator is not None:
        evaluator.load_state_dict(ckpt.get("evaluation", {}))
    return ckpt["step"]


# ----------------------------------------------------------------------------------------- the loop


def train(cfg: Config) -> dict:
    """Runs cfg.job; returns {"checkpoint": ckpt.pt (None with ckpt_every=0), "step", "wall_s", "logs": the last
    logged losses, averaged over their interval and the ranks}."""
    # --- set-up: processes, device, precision, seed
    check_config(cfg)
    teacher, teacher_note = None, ""
    if cfg.job == "distill":  # read once, before anything is written: a bad teacher file raises here
        teacher = read_teacher(cfg)
        cfg, teacher_note = resolve_teacher(cfg, teacher)
    rt = setup_runtime(cfg)
    out_dir = Path(cfg.out_dir)
    if rt.master:
        out_dir.mkdir(parents=True, exist_ok=True)
        if teacher_note:
            print(teacher_note)
    seed_everything(cfg.seed)

    # --- data: DistributedSampler splits each epoch's permutation between the ranks
    dataset, eval_set, eval_split = build_datasets(cfg, rt)
    batch_size = cfg.batch_size or (4 if dataset.paired else 1)
    sampler = DistributedSampler(dataset, rt.world, rt.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    if len(sampler) < batch_size:
        raise ValueError(
            f"dataset {cfg.dataroot} has {len(dataset)} samples: too few for batch_size={batch_size} "
            f"on {rt.world} processes"
        )

    # --- models, optimizers, schedules
    objective, critic, generator, spec = build_task(cfg, teacher)
    objective.to(rt.device, memory_format=rt.memory_format)
    critic.to(rt.device, memory_format=rt.memory_format)
    if cfg.compile:
        compile_task(objective, critic, mode=cfg.compile_mode)
    cuda_graphs = cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and rt.device.type == "cuda"
    g_opt, d_opt, g_sched, d_sched = build_optimizers(cfg, objective, critic)
    g_model, d_model = wrap_ddp(objective, rt), wrap_ddp(critic, rt)
    stateful = {"g": objective, "d": critic, "g_opt": g_opt, "d_opt": d_opt}  # by checkpoint key
    stateful |= {"g_sched": g_sched, "d_sched": d_sched, "scaler": rt.scaler}
    evaluator = None
    if rt.master and eval_set is not None:
        evaluator = PeriodicEvaluation(eval_set, eval_split, rt.device, cfg.inception_weights, cfg.select_on == "val")
        if evaluator.note:
            print(evaluator.note)

    # --- resume
    step = 0
    ckpt_path = out_dir / CHECKPOINT
    if cfg.resume and ckpt_path.is_file():
        step = restore_training_state(load_checkpoint(ckpt_path), stateful, evaluator)
        if rt.master:
            print(f"resumed {ckpt_path} at step {step}")

    # --- the loop
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.steps
    batches = training_batches(dataset, sampler, batch_size, step, cfg.workers, rt.device.type == "cuda")
    log, meter, logs = RunLog(cfg, rt.master, step, end), LossMeter(), {}
    start_time = time.perf_counter()
    g_model.train()
    d_model.train()
    while step < end:
        batch = next(batches)
        a = batch["A"].to(rt.device, non_blocking=True).contiguous(memory_format=rt.memory_format)
        b = batch["B"].to(rt.device, non_blocking=True).contiguous(memory_format=rt.memory_format)
        if cuda_graphs:  # the previous step's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        out, d_loss = train_step(g_model, d_model, critic, g_opt, d_opt, rt.scaler, rt.autocast, a, b)
        g_sched.step()
        d_sched.step()
        step += 1

        meter.add({"g_loss": out.loss, "d_loss": d_loss, **out.logs}, a.shape[0] * rt.world)
        if due(step, cfg.log_every, end):
            logs, images_per_s = meter.average(rt.world)  # on every rank: an all_reduce
            log.write({"step": step, "lr": g_sched.get_last_lr()[0], **logs, "img_per_s": images_per_s})
            log.show(logs, images_per_s)
        if rt.master and cfg.job == "distill" and cfg.diag_every > 0 and (step == 1 or due(step, cfg.diag_every, end)):
            diag = objective.diagnostics(a[:1])  # the refiners, on this batch's first image
            if diag:
                log.write({"step": step, "diag": diag})
        if rt.master and due(step, cfg.sample_every, end):  # input / (teacher, when distilling) / output / target
            columns = [a, *out.extra.values(), out.fake, b]
            save_grid(out_dir / "samples" / f"step_{step:07d}.png", columns, rows=min(4, a.shape[0]))
        if evaluator is not None and due(step, cfg.eval_every, end):
            scores, best = evaluator(generator, step)
            log.write({"step": step, "eval": eval_split, **scores})
            if best:  # the generator alone, loadable by load_generator like ckpt.pt
                state = generator_state(cfg, step, generator, spec) | {"selection": evaluator.best}
                save_checkpoint(state, out_dir / BEST)
        if rt.master and due(step, cfg.ckpt_every, end):
            save_checkpoint(training_state(cfg, step, stateful, generator, spec, evaluator), ckpt_path)
        log.advance()

    log.close()
    if rt.master and cfg.log_every > 0:
        plot_run(out_dir / "log.jsonl", out_dir / "losses.png")
    if rt.ddp:
        dist.barrier()
        dist.destroy_process_group()
    checkpoint = str(ckpt_path) if cfg.ckpt_every > 0 else None
    return {"checkpoint": checkpoint, "step": step, "wall_s": time.perf_counter() - start_time, "logs": logs}


def save_grid(path: str | os.PathLike, columns: list[torch.Tensor], rows: int) -> None:
    """A PNG whose row i shows image i of every tensor in `columns` ([-1, 1] images), side by side."""
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tiles = torch.stack([c[:rows].detach().float().cpu() for c in columns], 1).flatten(0, 1)
    save_image(tiles, path, nrow=len(columns), normalize=True, value_range=(-1, 1), padding=2)
