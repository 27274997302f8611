"""The training loop: pix2pix / CycleGAN teachers and ACKD distillation, read top to bottom.

    ackd-fast train-teacher --dataroot DATA --model pix2pix ...       (one process)
    torchrun --nproc_per_node 8 -m ackd_fast.cli distill --teacher T.pt  (DDP; multi-node with torchrun's flags)

`train` reads top to bottom: set-up (processes, device, precision, seed), data, models and optimizers, resume, then
one loop that logs, samples, evaluates and checkpoints at fixed intervals (`*_every`; 0 turns each off). One step
(`train_step`): the generator side (an objective module from `losses` or the `Distiller`) with the discriminators
frozen, then the discriminators on the detached fakes. AMP (bf16, or fp16 with a gradient scaler), channels_last, TF32
and torch.compile (with its mode) are switches. Logged losses are averaged over the log interval and over the ranks.
Everything needed to continue lives in one checkpoint dict written atomically (temporary file, then rename); `resume`
continues bit for bit on CPU, data order included.

Nothing is lost (`rundir.py`): every value, image and network is checked before anything is written; a lock keeps a
second run out of the folder, and a folder holding a run takes only --resume or --overwrite; resume refuses another
run's checkpoint, flags or data and cuts the log back to the checkpoint; SIGINT/SIGTERM/SIGHUP end the step, write a
checkpoint and raise RunInterrupted; a non-finite loss stops the run before anything keeps it.

The teacher may be a run checkpoint, an exported generator or a peer's bare generator file (`peers.read_generator`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Iterator
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
from ackd_fast.assembly import (
    COMMAND_DEFAULTS,
    COMMANDS,
    CUDA_GRAPH_MODES,
    Config,
    build_dataset,
    build_optimizers,
    build_task,
    check_config,
    check_crop,
    compile_task,
    decay_steps,
    read_teacher,
    resolve_teacher,
)
from ackd_fast.checkpoint import (
    BEST,
    CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_atomic,
    write_bytes_atomic,
)
from ackd_fast.config_file import run_config
from ackd_fast.errors import RunInterrupted, UsageError
from ackd_fast.evaluation import PeriodicEvaluation
from ackd_fast.flags import flag_name as _flag
from ackd_fast.loggers import Loggers, check_loggers, open_loggers, parse_loggers, write_metrics_csv
from ackd_fast.losses import Critic
from ackd_fast.metrics import count_params
from ackd_fast.models import GeneratorSpec
from ackd_fast.plots import plot_run, read_log
from ackd_fast.rundir import (
    LOG,
    METRICS_CSV,
    RUN_CONFIG,
    STOP_SIGNALS,
    RecordLog,
    RunLock,
    StopSignals,
    check_free_space,
    check_out_dir,
    clear_run,
    trim_log,
)


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
    precision: str  # what the summary prints: "fp32", "bf16 autocast", ...

    @property
    def master(self) -> bool:  # rank 0 logs, samples, evaluates and writes checkpoints
        return self.rank == 0


# How long a rank waits in a collective: rank 0 evaluates and writes checkpoints alone while the others wait in the
# next step's all-reduce, and an evaluation with FID can take far longer than NCCL's 10-minute default.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
# How long a rank waits for the others to join: torchrun starts them together, so minutes mean a missing peer (or
# WORLD_SIZE/RANK/MASTER_* left over from another job). The variable sets it, in seconds.
RENDEZVOUS_TIMEOUT_VARIABLE, RENDEZVOUS_TIMEOUT_S = "ACKD_RENDEZVOUS_TIMEOUT", 120.0
# Seconds a rank blocked in a collective gets to notice a stop signal before it ends without a checkpoint.
BLOCKED_STOP_GRACE_S = 5.0


def _env_int(name: str, default: int | None = None, low: int = 0, high: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise UsageError(f"environment variable {name} is not set; torchrun sets it for every process")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        top = f" and <= {high}" if high is not None else ""
        raise UsageError(f"environment variable {name} must be >= {low}{top}, got {value}")
    return value


@dataclass
class Launch:
    """The processes of the run as torchrun's variables describe them (one process when WORLD_SIZE is unset or 1)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1  # processes on this node (torchrun's --nproc_per_node)
    address: str = ""  # MASTER_ADDR:MASTER_PORT

    @property
    def ddp(self) -> bool:
        return self.world > 1


def read_launch() -> Launch:
    """torchrun's variables, checked before anything is written (UsageError naming the variable: a leftover
    RANK >= WORLD_SIZE would wait for peers that can never come)."""
    world = _env_int("WORLD_SIZE", 1, low=1)
    if world == 1:
        return Launch()
    rank = _env_int("RANK", high=world - 1)
    local_world = _env_int("LOCAL_WORLD_SIZE", world, low=1)
    addr = os.environ.get("MASTER_ADDR", "")
    if not addr:
        raise UsageError("environment variable MASTER_ADDR is not set; torchrun sets it for every process")
    port = _env_int("MASTER_PORT", low=1, high=65535)
    return Launch(rank, world, local_world, f"{addr}:{port}")


def _rendezvous_timeout() -> float:
    raw = os.environ.get(RENDEZVOUS_TIMEOUT_VARIABLE, "")
    try:
        seconds = float(raw) if raw else RENDEZVOUS_TIMEOUT_S
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise UsageError(f"environment variable {RENDEZVOUS_TIMEOUT_VARIABLE} must be seconds > 0, got {raw!r}")
    return seconds


def join_process_group(launch: Launch, backend: str, options: dict) -> None:
    """init_process_group, saying what it waits for and where, with a short rendezvous timeout (then the long
    COLLECTIVE_TIMEOUT for the collectives); RuntimeError in one line when the others do not come."""
    seconds = _rendezvous_timeout()
    print(f"rank {launch.rank} of {launch.world}: waiting for the other {launch.world - 1} process(es) at "
          f"{launch.address} (at most {seconds:g} s; {RENDEZVOUS_TIMEOUT_VARIABLE} sets it)", flush=True)  # fmt: skip
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds), **options)
    except (RuntimeError, TimeoutError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RuntimeError(
            f"rank {launch.rank}: the {launch.world} processes did not all join at {launch.address} within "
            f"{seconds:g} s ({first}); start every rank (torchrun), or unset WORLD_SIZE, RANK, MASTER_ADDR and "
            "MASTER_PORT if they are left over from another job"
        ) from None
    dist.set_timeout(COLLECTIVE_TIMEOUT)


def auto_amp(device_type: str, capability: tuple[int, int] | None) -> str:
    """amp="auto": bf16 on a CUDA device that computes it natively (sm_80 and later; torch.cuda.is_bf16_supported
    also counts emulation), else none."""
    return "bf16" if device_type == "cuda" and capability is not None and tuple(capability) >= (8, 0) else "none"


def setup_runtime(cfg: Config, launch: Launch) -> Runtime:
    """Picks the device, joins the process group under torchrun (NCCL on CUDA, bound to this rank's GPU; gloo on
    CPU) and picks the precision."""
    ddp = launch.ddp
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{_env_int('LOCAL_RANK', 0)}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)  # before the process group, so NCCL binds this rank's GPU
    if ddp:
        join_process_group(launch, "nccl" if use_cuda else "gloo", {"device_id": device} if use_cuda else {})
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
    tf32 = use_cuda and cfg.tf32
    precision = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with a gradient scaler"}.get(amp, "fp32")
    precision += " (TF32 matmuls and convolutions)" if tf32 else ""
    return Runtime(device, rank, world, ddp, autocast, scaler, memory_format, precision)


def seed_everything(seed: int) -> None:
    # The same seed on every rank: identical initial weights (DDP also broadcasts them); the sampler splits the data.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- data


def build_datasets(cfg: Config, rt: Runtime) -> tuple:
    """(training set, evaluation set or None, its split name), every image of them opened first (`checked_images`).
    With select_on="val" the evaluation samples are held out of the training data (selecting on the test split, as
    the peers do, would report a best-of-many test score); otherwise, with eval_every > 0, the test split (else val,
    as edges2shoes and maps ship) is scored for the log only."""
    if rt.master and cfg.dataroot == "sample":
        build_dataset(cfg)  # rank 0 writes the sample set once; the others wait below
    if rt.ddp:
        dist.barrier()
    dataset = checked_images(build_dataset(cfg), "train", cfg, rt.master and cfg.progress)
    if cfg.select_on == "val":
        dataset, eval_set = dataset.split(cfg.val_size or max(1, min(200, len(dataset) // 10)), cfg.seed)
        return dataset, eval_set, "val"
    if cfg.eval_every > 0:
        root = Path(dataset.root)
        split = cfg.eval_split or data_lib.evaluation_phase(
            root, "aligned" if dataset.paired else "unaligned", cfg.direction
        )
        return dataset, checked_images(build_dataset(cfg, split, train=False), split, cfg, False), split
    return dataset, None, ""


def ignore_stop_signals(worker_id: int) -> None:
    """In a data worker: SIGINT, SIGTERM and SIGHUP (sent to the whole process group by a terminal's Ctrl-C or a
    scheduler) are the training process's to handle; a worker killed by one would end the run before its
    checkpoint."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


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
        loader = iter(DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                                 worker_init_fn=ignore_stop_signals if workers else None))  # fmt: skip
        try:
            yield from loader
        except Exception as e:  # a worker's error comes as its whole traceback: keep the reason, its last line
            lines = str(e).strip().splitlines()
            if workers and len(lines) > 1 and "DataLoader worker" in lines[0]:
                raise ValueError(lines[-1].split(": ", 1)[-1]) from None
            raise
        finally:
            # The workers ignore the stop signals, and an iterator kept alive by the error's traceback would leave
            # them to multiprocessing's exit handler, which SIGTERMs and then waits for them forever: end them here.
            shutdown = getattr(loader, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------------------- optimisation


def wrap_ddp(module: nn.Module, rt: Runtime) -> nn.Module:
    """`module` in DistributedDataParallel under torchrun, else itself. Every parameter that trains is used by every
    step (--no-residual included), except the refiners between the teacher-path steps of --ack-path-every N > 1,
    which DDP is then told to look for."""
    if not rt.ddp:
        return module
    unused = getattr(module, "ack_path_every", 1) > 1
    return DDP(module, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
               find_unused_parameters=unused)  # fmt: skip


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


class Progress:
    """Rank 0's progress: a bar on a terminal (with --progress), else a status line every `log_every` steps, at most
    one every LINE_SECONDS (and the last), so a log file holds no carriage-return frames; an estimate of the whole
    run's time once, after the first steps. On the other ranks every method does nothing."""

    LINE_SECONDS = 30.0
    ESTIMATE_AFTER = 5  # steps timed for the estimate, after the first (which compiles and warms caches)

    def __init__(self, cfg: Config, master: bool, step: int, end: int):
        self.master, self.start_step, self.end, self.desc = master, step, end, COMMANDS[cfg.job]
        self.bar, self.last_line, self.timer = None, 0.0, None
        if master and cfg.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=end, initial=step, desc=self.desc, mininterval=0.5)

    def print(self, text: str) -> None:
        if not self.master:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def step(self, step: int, logs: dict[str, float] | None, images_per_s: float) -> None:
        """After `step`; `logs` when a log record was written at it."""
        if not self.master:
            return
        now = time.perf_counter()
        if step == self.start_step + 1:
            self.timer = (step, now)
        elif self.timer is not None and step == self.timer[0] + self.ESTIMATE_AFTER:
            per_step = (now - self.timer[1]) / (step - self.timer[0])
            left = per_step * (self.end - step)
            self.print(f"estimate: {per_step:.3g} s a step; about {_duration(left)} for the {self.end - step} steps "
                       f"left (done about {time.strftime('%H:%M', time.localtime(time.time() + left))})")  # fmt: skip
            self.timer = None
        if self.bar is not None:
            if logs:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()} | {"img/s": f"{images_per_s:.1f}"})
            self.bar.update(1)
        elif logs is not None and (now - self.last_line >= self.LINE_SECONDS or step == self.end):
            self.last_line = now
            terms = " ".join(f"{k} {v:.3g}" for k, v in logs.items() if not k.startswith(("w", "share")))
            print(f"{self.desc} step {step}/{self.end} ({100 * step // self.end}%): {terms} "
                  f"({images_per_s:.1f} img/s)", flush=True)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class FiniteGuard:
    """Watches every step's loss terms for NaN/inf on the device (no host sync per step): `first_bad` reads, at the
    points where the loop would keep something (log, samples, evaluation, checkpoint, the end), the first step whose
    terms were not all finite and those terms, after which the run stops without writing its weights."""

    def __init__(self, device: torch.device):
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.terms: torch.Tensor | None = None
        self.names: list[str] = []

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        if self.terms is None:
            self.names, self.terms = list(terms), torch.zeros_like(values)
        new = ~torch.isfinite(values).all() & (self.step < 0)
        self.step = torch.where(new, torch.full_like(self.step, step), self.step)
        self.terms = torch.where(new, values, self.terms)

    def first_bad(self, ddp: bool) -> tuple[int, dict[str, float]] | None:
        step = self.step.clone()
        if ddp:
            dist.all_reduce(step, op=dist.ReduceOp.MAX)
        if int(step) < 0:
            return None
        return int(step), dict(zip(self.names, self.terms.tolist(), strict=True))


# Flags that say how to start, not what the run is: never compared on resume, never in the resume command.
START_FLAGS = ("job", "resume", "overwrite", "allow_world_change")
# Flags naming files: compared as the paths they resolve to ("./DATA", "DATA/" and an absolute path are one).
PATH_FLAGS = ("dataroot", "teacher", "teacher_d")


def generator_state(cfg: Config, step: int, generator: nn.Module, spec: GeneratorSpec) -> dict:
    """What load_generator reads: the config, the step and the generator (architecture `spec` and weights)."""
    return {"config": asdict(cfg), "step": step, "generator": {**spec.record(), "state": generator.state_dict()}}


def training_state(cfg: Config, step: int, stateful: dict, generator: nn.Module, spec: GeneratorSpec,
                   evaluator) -> dict:  # fmt: skip
    """The checkpoint dict: the generator's state and everything `resume` needs (`stateful`: the models,
    optimizers, schedules and gradient scaler by checkpoint key; the RNGs; the evaluator's best step)."""
    return generator_state(cfg, step, generator, spec) | {
        **{key: obj.state_dict() for key, obj in stateful.items()},
        "rng": rng_state(),
        "evaluation": evaluator.state_dict() if evaluator is not None else {},
    }


def restore_training_state(ckpt: dict, stateful: dict, evaluator, path: Path) -> int:
    """Loads what training_state saved into `stateful` and the RNGs; returns the step to continue from. ValueError
    naming `path` and the entry when it does not hold a whole training state of this run's models."""
    entry = "step"
    try:
        for entry, obj in stateful.items():
            obj.load_state_dict(ckpt[entry])
        entry = "rng"
        set_rng_state(ckpt["rng"])
        entry = "evaluation"
        if evaluator is not None:
            evaluator.load_state_dict(ckpt.get("evaluation", {}))
        entry = "step"
        step = ckpt["step"]
    except KeyError:
        raise ValueError(f"{path} is not a whole training state: it has no {entry!r} entry") from None
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{path} is not a whole training state: its {entry!r} entry does not load ({first})") from None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{path} is not a whole training state: its step is {step!r}")
    return step


def resume_run(cfg: Config, launch: Launch, data: dict, stateful: dict, evaluator, out_dir: Path):
    """--resume: loads the newest checkpoint of out_dir that loads, ckpt.pt, else ckpt.prev.pt (with a notice
    saying why), after `check_resume`. Returns (step, changed flags, the file resumed from or None when out_dir holds
    none, the notice). ValueError naming every file when none loads."""
    newest, previous = out_dir / CHECKPOINT, out_dir / PREVIOUS_CHECKPOINT
    if not newest.is_file() and not previous.is_file():
        return 0, {}, None, ""  # check_out_dir has refused a folder that holds a run without a checkpoint
    failures = [] if newest.is_file() else [f"{newest} is missing"]
    for path in (p for p in (newest, previous) if p.is_file()):
        try:
            ckpt = load_checkpoint(path)
            changed = check_resume(ckpt, cfg, data, path, launch)
            step = restore_training_state(ckpt, stateful, evaluator, path)
        except UsageError:
            raise  # the run's own checkpoint, and another run's flags or data: an older file would say the same
        except ValueError as e:
            failures.append(str(e))
            continue
        notice = f"notice: {'; '.join(failures)}: resuming from {path}, the previous checkpoint" if failures else ""
        return step, changed, path, notice
    raise ValueError(f"--resume: no checkpoint in {out_dir} loads: {'; '.join(failures)}")


# ----------------------------------------------------------------------------------------- resume

# Flags a resumed run may change (each change is printed and recorded in log.jsonl); any other difference from the
# checkpoint's config is refused, since the run would no longer be the one it continues.
RESUME_MAY_CHANGE = ("steps", "stop_at", "log_every", "sample_every", "ckpt_every", "eval_every", "diag_every",
                     "progress", "workers", "device", "compile", "compile_mode", "inception_weights",
                     "inception_sha256", "skip_bad_images", "logger")  # fmt: skip


def resume_command(cfg: Config, world: int = 1, local_world: int = 1) -> str:
    """The command that continues cfg's run: its job's command (under torchrun for `world` processes,
    `local_world` a node), every flag that differs from that command's default, and --resume."""
    args = ["ackd-fast", COMMANDS[cfg.job]]
    if world > 1:
        nodes = [f"--nnodes={world // local_world}", "<your rendezvous flags>"] if world > local_world else []
        args = ["torchrun", *nodes, f"--nproc_per_node={local_world}", "-m", "ackd_fast.cli", COMMANDS[cfg.job]]
    for f in fields(Config):
        if f.name in START_FLAGS or f.metadata.get("only") not in ("", cfg.job):
            continue
        value, default = getattr(cfg, f.name), COMMAND_DEFAULTS[cfg.job].get(f.name, f.default)
        if value == default and f.name != "out_dir":
            continue
        if isinstance(value, bool):
            args.append(_flag(f.name, negative=not value))
        else:
            args += [_flag(f.name), str(value)]
    return shlex.join([*args, "--resume"])


def _same(name: str, old: object, new: object) -> bool:
    if old == new:
        return True
    if name in PATH_FLAGS and isinstance(old, str) and isinstance(new, str) and old and new:
        return Path(old).resolve() == Path(new).resolve()
    return False


def check_resume(ckpt: dict, cfg: Config, data: dict, path: Path, launch: Launch) -> dict[str, list]:
    """UsageError when the checkpoint at `path` is not this command's run: another job's, written with other flags
    (named with both values), beyond --steps, over other training images (`data`: count and digest of the file
    names), or by another number of processes (unless --allow-world-change). --out-dir is where the run is now,
    wherever it was written. Returns the flags that may change on resume and did ({flag: [checkpoint's, now]})."""
    stored = ckpt.get("config") or {}
    if stored.get("job") != cfg.job:
        kind = {"teacher": "a train-teacher run", "distill": "a distill run"}.get(stored.get("job"), "no run we know")
        raise UsageError(
            f"--resume: {path} is the checkpoint of {kind}, not of a {COMMANDS[cfg.job]} run; choose another "
            "--out-dir, or replace it with --overwrite"
        )
    if not isinstance(stored, dict):
        raise ValueError(f"{path} is not a whole training state: its config is a {type(stored).__name__}")
    refused, changed = [], {}
    takes = {f.name for f in fields(Config) if f.metadata.get("only") in ("", cfg.job)}  # the job's own flags
    takes -= {*START_FLAGS, "out_dir"}
    for name, old in stored.items():
        if name not in takes or _same(name, old, getattr(cfg, name)):
            continue
        if name in RESUME_MAY_CHANGE:
            changed[name] = [old, getattr(cfg, name)]
        else:
            refused.append(f"{_flag(name)} {old!r} in the checkpoint, {getattr(cfg, name)!r} now")
    if refused:
        raise UsageError(
            f"--resume: {path} was written with other flags ({'; '.join(refused)}); give the run's own flags "
            "(its config is in the checkpoint), or start afresh with --overwrite"
        )
    written_by = ckpt.get("world")  # absent before the world size was recorded
    if isinstance(written_by, int) and written_by != launch.world and not cfg.allow_world_change:
        raise UsageError(
            f"--resume: {path} was written by {written_by} process(es) and this run has {launch.world}: the global "
            "batch and each process's share of the data would change, so the run would not continue exactly; "
            f"resume it as it ran ({resume_command(cfg, written_by, ckpt.get('world_per_node', written_by))}), or add "
            "--allow-world-change"
        )
    if isinstance(ckpt.get("step"), int) and cfg.steps < ckpt["step"]:
        raise UsageError(f"--resume: {path} is at step {ckpt['step']}, beyond --steps {cfg.steps}")
    seen = ckpt.get("data")
    if seen and seen != data:
        raise UsageError(
            f"--resume: the training images changed since {path} was written ({seen['files']} files then, "
            f"{data['files']} now, or other names): the data order would no longer be the run's; restore them, or "
            "start afresh with --overwrite"
        )
    return changed


# ----------------------------------------------------------------------------------------- the summary


def opening_summary(cfg: Config, rt: Runtime, objective: nn.Module, critic: Critic, generator: nn.Module,
                    spec: GeneratorSpec,
                    data: dict, macs: dict[str, int], batch_size: int, step: int, end: int,
                    teacher_name: str = "") -> str:  # fmt: skip
    """What the run will do, printed before its first step: task, models (params, and `macs` at the crop size by
    label, from `check_crop`), data, device and precision, steps, and what it writes where."""

    def model(label: str, module: nn.Module, name: str) -> str:
        return (f"  {label}: {name}, {count_params(module) / 1e6:.3f} M params, {macs[label] / 1e9:.3g} GMACs at "
                f"{cfg.crop_size}x{cfg.crop_size}")  # fmt: skip

    lines = []
    if cfg.job == "teacher":
        lines.append(f"{COMMANDS[cfg.job]}: {cfg.model} teacher")
        lines.append(model("generator", generator, spec.label))
    else:
        kd = {"ackd": f"ACKD (refiners: {cfg.mode}, {cfg.composition}, {cfg.ack_train}, init {cfg.refiner_init})",
              "plain": "plain feature distillation (GAN Compression's)", "none": "no feature distillation"}[cfg.kd]
        lines.append(f"{COMMANDS[cfg.job]}: {cfg.model} student by {kd}, teacher {cfg.teacher}")
        teacher = objective.teacher
        lines.append(model("teacher", teacher, teacher_name or type(teacher).__name__))
        lines.append(model("student", generator, spec.label))
        extra = sum(p.numel() for p in objective.parameters() if p.requires_grad) - count_params(generator)
        if extra:
            lines.append(f"  refiners and connectors: {extra / 1e6:.3f} M params (trained, not deployed)")
        if objective.kd != "none":
            pairs = getattr(objective, "tap_plan", None) or [
                f"{t} <- {s}" for t, s in zip(objective.teacher_taps, objective.student_taps, strict=True)]
            lines.append(f"  taps (teacher <- student) at {cfg.crop_size}x{cfg.crop_size}: {', '.join(pairs)}")
            if objective.kd == "ackd":
                used = getattr(teacher, "replace_path_used", "its stages from the tap on")
                lines.append(f"  teacher path (a decode from each refined tap, --replace-path): {used}")
    discs = critic.discriminators
    lines.append(f"  discriminator{'s' if len(discs) > 1 else ''}: {len(discs)} x "
                 f"{count_params(discs[0]) / 1e6:.3f} M params")  # fmt: skip
    lines.append(f"  data: {data['root']} ({data['mode']}, {cfg.direction}): {data['train']} training samples"
                 + (f"; evaluating every {cfg.eval_every} steps on the {data['eval_split']} split ({data['eval']} "
                    "samples)" if data["eval"] else ""))  # fmt: skip
    where = (torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda"
             else f"{torch.get_num_threads()} threads")  # fmt: skip
    lines.append(f"  device: {rt.device} ({where}) x {rt.world} process(es); precision {rt.precision}")
    lines.append(f"  steps: {step + 1}..{end} of {cfg.steps}, batch {batch_size} per process, lr {cfg.lr:g} "
                 f"(linear decay over the last {decay_steps(cfg)})")  # fmt: skip
    every = lambda n: f"every {n} steps" if n else "never"
    lines.append(f"  output: {cfg.out_dir}/: ckpt.pt {every(cfg.ckpt_every)}, log.jsonl (metrics.csv) and "
                 f"losses.png {every(cfg.log_every)}, samples/ {every(cfg.sample_every)}"
                 + (f"; loggers: {cfg.logger}" if parse_loggers(cfg.logger) else ""))  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- the loop


def checked_images(dataset, split: str, cfg: Config, show_progress: bool):
    """`dataset` after every image it reads has been opened (`data.check_images`): ValueError listing the bad files
    by name and reason, or with cfg.skip_bad_images the dataset without them and a warning."""
    files = dataset.image_files()
    bad = data_lib.check_images(files, pair=isinstance(dataset, data_lib.AlignedDataset), progress=show_progress)
    if not bad:
        return dataset
    listed = "; ".join(f"{path} {reason}" for path, reason in bad[:20])
    listed += f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
    if not cfg.skip_bad_images:
        raise ValueError(
            f"{len(bad)} of the {len(files)} images of the {split} split cannot be used: {listed} (remove or replace "
            "them, or leave them out with --skip-bad-images)"
        )
    print(f"warning: leaving out {len(bad)} of the {len(files)} images of the {split} split: {listed}",
          file=sys.stderr)  # fmt: skip
    return dataset.without({path for path, _ in bad})


def train(cfg: Config, modules: dict[str, nn.Module] | None = None) -> dict:
    """Runs cfg.job; `modules`: models already built, which the config's flags name ("generator" for a teacher job;
    "teacher" (a GeneratorFile) and "student" for distill; `ackd_fast.api` passes them). Returns {"checkpoint":
    ckpt.pt (None with ckpt_every=0), "step", "wall_s", "logs": the last logged losses, averaged over their interval
    and the ranks}. Raises UsageError for a value, folder or resume
    target it cannot take (before writing anything), RunInterrupted after a signal (the checkpoint written),
    FloatingPointError at a non-finite loss (the last good checkpoint kept)."""
    # --- checks that need no data: every value, the teacher file, the run folder
    check_config(cfg)
    modules = modules or {}
    teacher, teacher_note = None, ""
    if cfg.job == "distill":  # read once, before anything is written: a bad teacher file raises here
        teacher = modules["teacher"] if "teacher" in modules else read_teacher(cfg)
        cfg, teacher_note = resolve_teacher(cfg, teacher)
    launch = read_launch()
    if launch.rank == 0:  # the one process that logs: its logger packages are there, or nothing starts
        check_loggers(cfg.logger)
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir, cfg.resume, cfg.overwrite, {"--teacher": cfg.teacher, "--teacher-d": cfg.teacher_d},
                  data_folders(cfg))  # fmt: skip
    rt = setup_runtime(cfg, launch)
    lock = RunLock(out_dir) if rt.master else None  # a second run into out_dir is refused from here on
    try:
        return _train(cfg, rt, launch, teacher, teacher_note, out_dir, modules.get("student", modules.get("generator")))
    finally:
        if lock is not None:
            lock.release()
        if rt.ddp and dist.is_initialized():
            dist.destroy_process_group()


def data_folders(cfg: Config) -> dict[str, str]:
    """The split folders of cfg.dataroot that a run may read ({what: folder}): an --out-dir inside one would feed
    the run's own images back to it."""
    if cfg.dataroot == "sample":  # built inside the run's own folder
        return {}
    root = Path(cfg.dataroot)
    splits = ("train", *data_lib.EVAL_PHASES)
    names = [*splits, *(f"{split}{side}" for split in splits for side in "AB")]
    return {f"the {name} split of --dataroot": str(root / name) for name in names if (root / name).is_dir()}


def _train(cfg: Config, rt: Runtime, launch: Launch, teacher, teacher_note: str, out_dir: Path,
           model: nn.Module | None = None) -> dict:  # fmt: skip
    seed_everything(cfg.seed)

    # --- data: every image opened first; DistributedSampler splits each epoch's permutation between the ranks
    dataset, eval_set, eval_split = build_datasets(cfg, rt)
    batch_size = cfg.batch_size or (4 if dataset.paired else 1)
    sampler = DistributedSampler(dataset, rt.world, rt.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    if len(sampler) < batch_size:
        raise UsageError(
            f"--batch-size {batch_size}: the training set of {cfg.dataroot} has {len(dataset)} samples, too few "
            f"for a batch of {batch_size} on each of {rt.world} process(es)"
        )
    files = dataset.image_files()
    data_record = {"files": len(files), "digest": data_lib.names_digest(files, dataset.root)}

    # --- models, optimizers, schedules; each network checked against the crop size on the meta device
    objective, critic, generator, spec = build_task(cfg, teacher, model)
    label = "student" if cfg.job == "distill" else "generator"
    macs = {label: check_crop(generator, 3, cfg.crop_size, f"{spec.name} generator", same_size=True)}
    if cfg.job == "distill":
        macs["teacher"] = check_crop(objective.teacher, 3, cfg.crop_size, "teacher generator", same_size=True)
    for i, disc in enumerate(critic.discriminators):
        channels = 6 if dataset.paired else 3
        check_crop(disc, channels, cfg.crop_size, f"discriminator{f' {i}' if i else ''} (--n-layers-d, --ndf)")
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
        evaluator = PeriodicEvaluation(
            eval_set, eval_split, rt.device, cfg.inception_weights, cfg.select_on == "val",
            inception_sha256=cfg.inception_sha256,
        )

    # --- resume: the checkpoint must be this command's run (kind, flags, training images, processes)
    step, changed, resumed_from, resume_notice = 0, {}, None, ""
    ckpt_path, previous_path = out_dir / CHECKPOINT, out_dir / PREVIOUS_CHECKPOINT
    if cfg.resume:
        step, changed, resumed_from, resume_notice = resume_run(cfg, launch, data_record, stateful, evaluator, out_dir)
    # where each checkpoint write moves the one it replaces; not a ckpt.pt that did not load over a good ckpt.prev.pt
    keep_previous = None if resumed_from == previous_path else previous_path
    world = {"world": launch.world, "world_per_node": launch.local_world}

    # --- every check has passed: from here on the run writes into out_dir
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.steps
    saved_step = step if step else None  # the step of the checkpoint on disk, when it is this run's
    if rt.master:
        if cfg.overwrite:
            clear_run(out_dir)
        write_atomic(out_dir / RUN_CONFIG, lambda f: f.write(run_config(cfg).encode()))  # `--config` reads it back
        if teacher_note:
            print(teacher_note)
        if evaluator is not None and evaluator.note:
            print(evaluator.note)
        data = {"root": dataset.root, "mode": "aligned" if dataset.paired else "unaligned",
                "train": len(dataset), "eval": len(eval_set) if eval_set is not None else 0, "eval_split": eval_split}
        teacher_name = teacher.label if teacher is not None else ""
        print(opening_summary(cfg, rt, objective, critic, generator, spec, data, macs, batch_size, step, end,
                              teacher_name), flush=True)  # fmt: skip
        if resume_notice:
            print(resume_notice)
        if resumed_from is not None:
            print(f"resumed {resumed_from} at step {step}")
        elif cfg.resume:
            print(f"--resume: no checkpoint in {out_dir}: starting at step 1")
        for name, (old, new) in changed.items():
            print(f"notice: --resume with {_flag(name)} {new!r} (the checkpoint's: {old!r})")
        state_bytes = sum(t.numel() * t.element_size() for m in (objective, critic) for t in m.state_dict().values())
        check_free_space(out_dir, 3 * 4 * state_bytes if cfg.ckpt_every else 0,
                         "a checkpoint (weights and Adam's moments) three times over (the newest, the previous, "
                         "the one being written)")  # fmt: skip
        trim_log(out_dir / LOG, step)
    log = RecordLog(out_dir / LOG, fresh=step == 0) if rt.master else None
    if log is not None and changed:
        log.write({"step": step, "resumed": True, "changed": changed})
    grid = sample_batch(eval_set if eval_set is not None else dataset) if rt.master and cfg.sample_every else None

    # --- the loop
    batches = training_batches(dataset, sampler, batch_size, step, cfg.workers, rt.device.type == "cuda")
    meter, guard, logs = LossMeter(), FiniteGuard(rt.device), {}
    progress = Progress(cfg, rt.master, step, end)
    start_time = time.perf_counter()
    g_model.train()
    d_model.train()

    def keep_checkpoint() -> None:  # the state after `step`, atomically; the previous file stays on a failure
        nonlocal saved_step, keep_previous
        if rt.master:  # every rank records it: their messages say what rank 0 wrote
            state = training_state(cfg, step, stateful, generator, spec, evaluator) | {"data": data_record, **world}
            save_checkpoint(state, ckpt_path, keep_previous)
        saved_step, keep_previous = step, previous_path

    def blocked_exit(signum: int) -> None:  # from StopSignals' watcher: the main thread is stuck in a collective
        kept = f"the last is {ckpt_path} (step {saved_step})" if saved_step else "none of this run was written"
        print(f"{signal.Signals(signum).name}: rank {rt.rank} is blocked waiting for another process (stopped, hung "
              f"or gone) and cannot finish its step: ended without a checkpoint ({kept}); continue with: "
              f"{resume_command(cfg, launch.world, launch.local_world)}", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(128 + signum)

    settings = asdict(cfg) | {"batch_size": batch_size, "world": launch.world, "start_step": step, "end_step": end}
    loggers = open_loggers(cfg.logger, out_dir, settings) if rt.master else Loggers([])
    stopped_by = None
    try:
        with StopSignals(blocked_exit if rt.ddp else None, BLOCKED_STOP_GRACE_S) as signals:
            while step < end:
                step_start = time.perf_counter()
                try:
                    batch = next(batches)
                except (ValueError, OSError) as e:  # an image that broke after the check: keep the steps done
                    if rt.master and cfg.ckpt_every and step and saved_step != step:
                        keep_checkpoint()
                    raise ValueError(f"step {step + 1}: {e}") from None
                a = batch["A"].to(rt.device, non_blocking=True).contiguous(memory_format=rt.memory_format)
                b = batch["B"].to(rt.device, non_blocking=True).contiguous(memory_format=rt.memory_format)
                if cuda_graphs:  # the previous step's graph outputs may be overwritten from here on
                    torch.compiler.cudagraph_mark_step_begin()
                out, d_loss = train_step(g_model, d_model, critic, g_opt, d_opt, rt.scaler, rt.autocast, a, b)
                g_sched.step()
                d_sched.step()
                step += 1

                terms = {"g_loss": out.loss, "d_loss": d_loss, **out.logs}
                meter.add(terms, a.shape[0] * rt.world)
                guard.add(step, terms)
                stopping = stop_requested(signals, rt)
                signals.note_step(time.perf_counter() - step_start)
                if stopping:
                    signals.acknowledge()
                keeps = [due(step, every, end) for every in (cfg.log_every, cfg.sample_every, cfg.eval_every)]
                keeps.append(due(step, cfg.ckpt_every, end) or (stopping and cfg.ckpt_every > 0))
                if any(keeps) or step == end:
                    bad = guard.first_bad(rt.ddp)
                    if bad is not None:
                        raise FloatingPointError(non_finite_message(*bad, ckpt_path, saved_step))
                record = None
                if keeps[0]:
                    logs, images_per_s = meter.average(rt.world)  # on every rank: an all_reduce
                    record = {"step": step, "lr": g_sched.get_last_lr()[0], **logs, "img_per_s": images_per_s}
                    if log is not None:
                        log.write(record)
                        loggers.scalars(step, {k: v for k, v in record.items() if k != "step"}, "train")
                diag_due = step == 1 or due(step, cfg.diag_every, end)
                if rt.master and cfg.job == "distill" and cfg.diag_every > 0 and diag_due:
                    diag = objective.diagnostics(a[:1])  # the refiners, on this batch's first image
                    if diag:
                        log.write({"step": step, "diag": diag})
                        loggers.scalars(step, diag, "diag")
                if grid is not None and keeps[1]:
                    grid_path = out_dir / "samples" / f"step_{step:07d}.png"
                    save_grid(grid_path, sample_columns(objective, generator, grid, cfg.job, rt))
                    loggers.picture(step, "samples", grid_path)
                if evaluator is not None and keeps[2]:
                    scores, best = evaluator(generator, step)
                    log.write({"step": step, "eval": eval_split, **scores})
                    loggers.scalars(step, scores, f"eval_{eval_split}")
                    if best:  # the generator alone, loadable by load_generator like ckpt.pt
                        state = generator_state(cfg, step, generator, spec) | {"selection": evaluator.best}
                        save_checkpoint(state, out_dir / BEST)
                if keeps[3]:
                    keep_checkpoint()
                progress.step(step, logs if record else None, record["img_per_s"] if record else 0.0)
                if stopping:
                    stopped_by = signals.requested or signal.SIGTERM
                    break
    finally:
        # the data workers ignore the stop signals: shut them down here (multiprocessing's exit handler would
        # SIGTERM them and wait forever)
        batches.close()
        progress.close()
        loggers.close()
        if log is not None:
            log.close()
            if cfg.log_every > 0:
                plot_run(out_dir / LOG, out_dir / "losses.png")
            write_metrics_csv(read_log(out_dir / LOG), out_dir / METRICS_CSV)
    if rt.ddp:
        dist.barrier()
    if stopped_by is not None:
        name = signal.Signals(stopped_by).name
        kept = f"checkpoint {ckpt_path} (step {step}) written" if saved_step == step else "no checkpoint written"
        raise RunInterrupted(stopped_by, f"{name}: stopped after step {step}; {kept}; continue with: "
                                         f"{resume_command(cfg, launch.world, launch.local_world)}")  # fmt: skip
    checkpoint = str(ckpt_path) if cfg.ckpt_every > 0 else None
    return {"checkpoint": checkpoint, "step": step, "wall_s": time.perf_counter() - start_time, "logs": logs}


def stop_requested(signals: StopSignals, rt: Runtime) -> bool:
    """Whether a stop signal arrived (on any rank: torchrun forwards signals, but not at the same step)."""
    flag = signals.requested is not None
    if rt.ddp:
        t = torch.tensor([int(flag)], device=rt.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = bool(t.item())
    return flag


def non_finite_message(step: int, terms: dict[str, float], ckpt_path: Path, saved_step: int | None) -> str:
    shown = ", ".join(f"{k} {v:.4g}" for k, v in terms.items())
    kept = (f"the last good checkpoint {ckpt_path} (step {saved_step}) is kept" if saved_step is not None
            else "no checkpoint of this run was written")  # fmt: skip
    return (f"step {step}: non-finite loss ({shown}); stopped without saving these weights: {kept}. Lower --lr or "
            "check the --lambda-* values")


def sample_batch(dataset, rows: int = 4) -> dict:
    """The sample grids' images: the first `rows` samples of `dataset` seen whole (resized to the crop size, no
    augmentation)."""
    view = dataset.as_evaluation()
    samples = [view[i] for i in range(min(rows, len(view)))]
    return {k: torch.stack([s[k] for s in samples]) for k in ("A", "B") if k in samples[0]}


@torch.no_grad()
def sample_columns(objective: nn.Module, generator: nn.Module, grid: dict, job: str, rt: Runtime) -> dict:
    """{column title: images} of a sample grid: input, the teacher's output (distill), the generator's, and the
    target where the data is paired (an unpaired B image is not this input's target). Eager forwards in eval mode."""
    a = grid["A"].to(rt.device).contiguous(memory_format=rt.memory_format)
    was_training = generator.training
    generator.eval()
    try:
        with rt.autocast:
            columns = {"input": a}
            if job == "distill":
                columns["teacher"] = objective.teacher.forward(a)
            columns["student" if job == "distill" else "output"] = generator.forward(a)
    finally:
        generator.train(was_training)
    if getattr(objective, "paired", False) and "B" in grid:
        columns["target"] = grid["B"]
    return columns


def save_grid(path: str | os.PathLike, columns: dict[str, torch.Tensor], rows: int = 0) -> None:
    """A PNG whose row i shows image i of every tensor in `columns` ([-1, 1] images) side by side, under a header
    with each column's title; written atomically."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    rows = rows or min(c.shape[0] for c in columns.values())
    tiles = torch.stack([c[:rows].detach().float().cpu() for c in columns.values()], 1).flatten(0, 1)
    body = make_grid(tiles, nrow=len(columns), normalize=True, value_range=(-1, 1), padding=2, pad_value=1.0)
    body = (body.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    header = 14
    image = Image.new("RGB", (body.shape[1], body.shape[0] + header), "white")
    image.paste(Image.fromarray(body), (0, header))
    draw, width = ImageDraw.Draw(image), tiles.shape[-1] + 2
    for i, title in enumerate(columns):
        draw.text((2 + i * width + 2, 1), title[: max(1, width // 6)], fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, lambda f: image.save(f, format="PNG"))
