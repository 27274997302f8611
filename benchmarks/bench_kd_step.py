"""What ACKD costs over plain KD: one distillation step (`train.train_step`) per feature distillation, at three scales.

Arms (the same teacher, student, discriminator and batch; `--kd`, `--ack-path-every`):
  ackd        ACKD as the paper trains it: the refiners' teacher path every step
  ackd-every4 / ackd-every8   the teacher path every 4th / 8th step (a speed switch that changes the training)
  plain       GAN Compression's feature distillation on the same taps
  none        no feature distillation

Settings (CPU, fp32; the loop's defaults otherwise):
  demo        the demo's scale: 64x64, batch 4, teacher resnet_9blocks ngf 32, student ngf 16, PatchGAN ndf 32
  paper64     the paper's models at 64x64, batch 4: teacher ngf 64, student ngf 16, ndf 64
  paper256    the paper's models at 256x256, batch 4 (edges->shoes' step)

Each benchmark times its own arm; before the first arm of a setting, every arm of that setting is also timed in
turns (`ALTERNATED_ROUNDS` rounds of `STEPS_PER_TURN` steps each), so that the machine's load falls on all of them
alike, and each arm's extra_info holds that median and its ratio to plain KD (`over_plain`), the issue's figure.
Beside it, `flops_over_plain`: the arm's FLOPs per step over plain KD's (convolutions, matmuls and the fused
attention, forward and backward, counted by `metrics.flop_counter` over one rhythm of the arm's teacher path). The
time ratio cannot go below it unless the arm's extra work runs faster per FLOP than plain KD's own.

    pytest benchmarks/bench_kd_step.py --benchmark-json=out.json    # about 10 minutes on 2 cores
    ACKD_BENCH_SMOKE=1 pytest benchmarks/bench_kd_step.py --benchmark-disable   # CI: tiny
"""

from __future__ import annotations

import contextlib
import os
import time

import pytest
import torch

from ackd_fast import metrics
from ackd_fast.assembly import Config, build_distiller
from ackd_fast.losses import Critic, Pix2Pix
from ackd_fast.models import build_discriminator, build_generator
from ackd_fast.train import train_step

SMOKE = os.environ.get("ACKD_BENCH_SMOKE") == "1"
# name: (image size, batch, teacher ngf, student ngf, ndf)
SETTINGS = {"demo": (64, 4, 32, 16, 32), "paper64": (64, 4, 64, 16, 64), "paper256": (256, 4, 64, 16, 64)}
if SMOKE:
    SETTINGS = {"smoke": (32, 1, 4, 4, 8)}
ARMS = {"ackd": ("ackd", 1), "ackd-every4": ("ackd", 4), "ackd-every8": ("ackd", 8), "plain": ("plain", 1),
        "none": ("none", 1)}  # fmt: skip
STEPS_PER_TURN = 1 if SMOKE else 8  # a multiple of 8: every arm's turn holds whole teacher-path cycles
ALTERNATED_ROUNDS = 1 if SMOKE else 3
BIG = {"paper256"}  # seconds a step: 2 alternated rounds and 1 timed round (8 steps each) of every arm
TEACHER, STUDENT = "resnet_9blocks", "mobile_resnet_9blocks"


class Step:
    """One arm's distillation task, its optimizers and a fixed batch: `()` runs one training step."""

    def __init__(self, setting: str, arm: str):
        size, batch, ngf, student_ngf, ndf = SETTINGS[setting]
        kd, every = ARMS[arm]
        torch.manual_seed(0)
        cfg = Config(job="distill", kd=kd, ack_path_every=every, ndf=ndf)
        teacher, student = build_generator(TEACHER, ngf), build_generator(STUDENT, student_ngf)
        self.objective = build_distiller(cfg, teacher, TEACHER, student, STUDENT, paired=True).train()
        self.critic = Critic([build_discriminator(cfg.discriminator, 6, ndf, cfg.n_layers_d)], Pix2Pix.gan_mode)
        self.g_opt = torch.optim.Adam([p for p in self.objective.parameters() if p.requires_grad], lr=cfg.lr)
        self.d_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.a = torch.rand(batch, 3, size, size) * 2 - 1
        self.b = torch.rand(batch, 3, size, size) * 2 - 1

    def __call__(self) -> None:
        train_step(self.objective, self.critic, self.critic, self.g_opt, self.d_opt, self.scaler,
                   contextlib.nullcontext(), self.a, self.b)  # fmt: skip


_steps: dict[tuple[str, str], Step] = {}
_alternated: dict[str, dict[str, float]] = {}


def step_of(setting: str, arm: str) -> Step:
    if (setting, arm) not in _steps:
        _steps[setting, arm] = Step(setting, arm)
        for _ in range(2):  # Adam's state, oneDNN's primitive caches
            _steps[setting, arm]()
    return _steps[setting, arm]


def alternated(setting: str) -> dict[str, float]:
    """Seconds per step of every arm of `setting`, medians over rounds in which the arms take turns."""
    if setting not in _alternated:
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for _ in range(2 if setting in BIG else ALTERNATED_ROUNDS):
            for arm in ARMS:
                step = step_of(setting, arm)
                t = time.perf_counter()
                for _ in range(STEPS_PER_TURN):
                    step()
                times[arm].append((time.perf_counter() - t) / STEPS_PER_TURN)
        _alternated[setting] = {arm: sorted(ts)[len(ts) // 2] for arm, ts in times.items()}
    return _alternated[setting]


_flops: dict[tuple[str, str], float] = {}


def flops_per_step(setting: str, arm: str) -> float:
    """FLOPs of one step of `arm`, averaged over `every` consecutive steps (one teacher-path step among them)."""
    if (setting, arm) not in _flops:
        step, every = step_of(setting, arm), ARMS[arm][1]
        with metrics.flop_counter() as counter:
            for _ in range(every):
                step()
        _flops[setting, arm] = counter.get_total_flops() / every
    return _flops[setting, arm]


@pytest.mark.parametrize("arm", list(ARMS))
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_distillation_step(benchmark, setting, arm):
    medians = alternated(setting)
    size, batch, ngf, student_ngf, _ = SETTINGS[setting]
    benchmark.group = f"distillation step {setting}: {size}x{size} b{batch}, teacher ngf {ngf}, student ngf " \
                      f"{student_ngf}, cpu fp32"  # fmt: skip
    benchmark.extra_info.update(
        path=arm, ackd_fast=arm.startswith("ackd"), images=batch, setting=setting, alternated_s=medians[arm],
        over_plain=medians[arm] / medians["plain"], gflops_per_step=flops_per_step(setting, arm) / 1e9,
        flops_over_plain=flops_per_step(setting, arm) / flops_per_step(setting, "plain"),
    )  # fmt: skip
    step = step_of(setting, arm)
    benchmark.pedantic(step, rounds=1 if SMOKE or setting in BIG else 3, iterations=STEPS_PER_TURN, warmup_rounds=0)
