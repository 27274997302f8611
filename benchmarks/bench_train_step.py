"""One ACKD distillation step, as `ackd-fast distill` runs it, with ackd_fast's kernels against the reference.

The step is `ackd_fast.train.train_step`: teacher forward (no grad), the ACK refiners and the teacher-path decodes,
student forward and backward, Adam step, then the discriminator step. The task is built as `train.build_task` builds
it for `--recipe compress` on a pix2pix teacher (random weights: speed does not depend on them), with the loop's
defaults from `train.Config` (channels_last and TF32 on CUDA). Config.tf32 is applied around every step of both paths,
as `train.setup_runtime` applies it (matmul and cuDNN convolution fp32_precision "tf32", else "ieee"): the fp32 rows
of both paths run the same precision, and extra_info records it.

Paths, measured in one run so their ratios hold (group = setting, device, precision, eager or compiled):
  ackd       Distiller(backend="auto"): the Triton ACK-A kernels (CUDA) and the fused ACK-F ops
  reference  Distiller(backend="reference"): the plain-PyTorch composition
Precision: fp32 everywhere, bf16 autocast on CUDA. Compiled: `train.compile_task` (what --compile compiles),
inductor; the smoke run traces with a cheap backend instead.

    pytest benchmarks/bench_train_step.py                                # GPU: edges→shoes; CPU: the small setting
    ACKD_BENCH_SMOKE=1 pytest benchmarks/bench_train_step.py --benchmark-disable   # CI: tiny, one step per path

Settings: edges2shoes = the paper's (batch 4, 256x256, teacher resnet_9blocks ngf 64, student mobile_resnet_9blocks
ngf 16, PatchGAN ndf 64) on a GPU; small = batch 2, 64x64, teacher ngf 16 on CPU. extra_info: images per step,
FLOPs per step (counted once per setting with metrics.flop_counter on the reference path, so both paths are charged the
same work), peak memory (CUDA).
"""

from __future__ import annotations

import contextlib
import gc
import os

import pytest
import torch

from ackd_fast import metrics, ops
from ackd_fast.assembly import Config, build_distiller, compile_task
from ackd_fast.losses import Critic, Pix2Pix
from ackd_fast.models import build_discriminator, build_generator
from ackd_fast.train import train_step

SMOKE = os.environ.get("ACKD_BENCH_SMOKE") == "1"
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# name: (batch, image size, teacher ngf, student ngf)
SETTINGS = {"edges2shoes": (4, 256, 64, 16)} if GPU else {"small": (2, 64, 16, 16)}
if SMOKE:
    SETTINGS = {"smoke": (1, 32, 4, 4)}  # 32: the smallest input a 3-layer PatchGAN takes
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16} if GPU else {"fp32": None}  # bf16 autocast on CPU: not timed
PATHS = {"ackd": "auto", "reference": "reference"}
# Inductor compiles the generators' forward and backward for minutes on a CPU; the smoke run only checks that the
# compiled step traces.
COMPILE_BACKEND = "aot_eager" if SMOKE else "inductor"
WARMUP_STEPS = 1 if SMOKE else 2  # the first step compiles and creates Adam's state; the second settles cuDNN
TEACHER, STUDENT = "resnet_9blocks", "mobile_resnet_9blocks"

pytestmark = pytest.mark.skipif(not ops.EXTENSION_LOADED, reason=f"ackd_fast._C did not load: {ops.EXTENSION_ERROR}")


@contextlib.contextmanager
def fp32_precision(setting: str):
    """torch's fp32 matmul and cuDNN convolution precision set to `setting` ("tf32" or "ieee"), restored after."""
    knobs = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [k.fp32_precision for k in knobs]
    try:
        for k in knobs:
            k.fp32_precision = setting
        yield
    finally:
        for k, value in zip(knobs, saved, strict=True):
            k.fp32_precision = value


class Task:
    """What train() holds for a distillation run: objective, critic, optimizers, precision, one fixed batch."""

    def __init__(self, setting: str, backend: str, precision: str, compiled: bool):
        cfg = Config(job="distill")  # the loop's defaults
        # what train.setup_runtime applies on CUDA (the fp32_precision API; TF32 is a CUDA setting)
        self.fp32_precision = "tf32" if cfg.tf32 and GPU else "ieee"
        batch, size, ngf, student_ngf = SETTINGS[setting]
        teacher, student = build_generator(TEACHER, ngf), build_generator(STUDENT, student_ngf)
        # a pix2pix teacher: the critic judges (A, B) pairs, 6 channels
        disc = build_discriminator(cfg.discriminator, 6, cfg.ndf, cfg.n_layers_d)
        self.objective = build_distiller(cfg, teacher, TEACHER, student, STUDENT, paired=True, backend=backend)
        self.critic = Critic([disc], Pix2Pix.gan_mode)
        memory_format = torch.channels_last if cfg.channels_last and GPU else torch.contiguous_format
        self.objective.to(DEVICE, memory_format=memory_format).train()
        self.critic.to(DEVICE, memory_format=memory_format).train()
        if compiled:
            torch._dynamo.reset()  # every case compiles its own modules, not the previous case's
            compile_task(self.objective, self.critic, backend=COMPILE_BACKEND)
        g_params = [p for p in self.objective.parameters() if p.requires_grad]
        self.g_opt = torch.optim.Adam(g_params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.d_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.scaler = torch.amp.GradScaler(DEVICE, enabled=False)  # only fp16 needs one
        dtype = PRECISIONS[precision]
        self.autocast = torch.autocast(DEVICE, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        # images in [-1, 1], as the data pipeline gives them
        shape = (batch, 3, size, size)
        self.a = (torch.rand(shape, device=DEVICE) * 2 - 1).contiguous(memory_format=memory_format)
        self.b = (torch.rand(shape, device=DEVICE) * 2 - 1).contiguous(memory_format=memory_format)

    def step(self) -> None:
        with fp32_precision(self.fp32_precision):
            train_step(
                self.objective, self.critic, self.critic, self.g_opt, self.d_opt, self.scaler, self.autocast, self.a,
                self.b,
            )  # fmt: skip
        if GPU:
            torch.cuda.synchronize()


_flops: dict[str, int] = {}


def step_flops(setting: str) -> int:
    """FLOPs of one step (convolutions and matmuls, forward and backward), counted on the eager fp32 reference path:
    the counter does not see inside the custom ops, and both paths do the same work."""
    if setting not in _flops:
        task = Task(setting, "reference", "fp32", compiled=False)
        with metrics.flop_counter() as counter:
            task.step()
        _flops[setting] = counter.get_total_flops()
        del task
    return _flops[setting]


# (precision, compiled): on a GPU inductor needs about a minute per precision for the whole step, so only bf16 (the
# loop's default there) is also timed compiled, to keep gpu_suite.sh within its 10 minutes.
MODES = [(p, False) for p in PRECISIONS] + [(p, True) for p in (["bf16"] if GPU else PRECISIONS)]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(
    ("precision", "compiled"), MODES, ids=[f"{p}-{'compiled' if c else 'eager'}" for p, c in MODES]
)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_train_step(benchmark, setting, precision, compiled, path):
    flops = step_flops(setting)
    gc.collect()
    if GPU:
        torch.cuda.empty_cache()
    task = Task(setting, PATHS[path], precision, compiled)
    for _ in range(WARMUP_STEPS):
        task.step()
    if GPU:
        torch.cuda.reset_peak_memory_stats()
    benchmark.group = f"train_step {setting} {DEVICE} {precision} {'compiled' if compiled else 'eager'}"
    benchmark(task.step)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    benchmark.extra_info.update(
        {
            "path": path,
            "ackd_fast": path == "ackd",
            "setting": setting,
            "precision": precision,
            "fp32_precision": task.fp32_precision,
            "compiled": compiled,
            "images": task.a.shape[0],
            "images_per_s": task.a.shape[0] / stats.stats.median if stats else None,
            "flops": flops,
            # models, optimizer states and the step's activations: what a training run must fit
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if GPU else None,
        }
    )
