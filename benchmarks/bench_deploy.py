"""Inference of a whole generator: ackd_fast.deploy against what a user would otherwise run.

Paths (the same model and input; each is built once and warm before it is timed):
  deploy       ackd_fast.deploy (CPU: inductor with freezing + the mobile_block, instance_norm_act_residual and
               narrow_conv2d kernels; CUDA: inductor with freezing, max-autotune and CUDA graphs)
  eager        the generator in eval mode
  compiled     torch.compile(generator), default options
  onnxruntime  torch.onnx.export(dynamo=True), then onnxruntime (CPU, fp32, full graph optimisation)
  openvino     the same ONNX file compiled by OpenVINO for the CPU (f32 precision hint, torch's thread count)

    pytest benchmarks/bench_deploy.py --benchmark-json=out.json   # full sizes
    ACKD_BENCH_SMOKE=1 pytest benchmarks/bench_deploy.py --benchmark-disable   # CI: tiny, deploy without compiling
    python benchmarks/report.py out.json

Cases: the student (mobile_resnet_9blocks ngf 16, 1.41 GMACs) and the teacher (resnet_9blocks ngf 64, 56.8 GMACs)
at 256x256. CPU: student batch 1 and 4 on every path; the teacher at batch 1, eager and deploy only (compiling it
twice more would take minutes, and the goal is the deployed student against the eager teacher). CUDA: both at
batch 1 and 4, fp32 and bf16. extra_info: `flops` (2 x MACs), `images`, `role` (teacher / student: report.py puts
their speed ratio beside their MAC ratio) and the deployed path's `method`.
"""

from __future__ import annotations

import os

import pytest
import torch

from ackd_fast import metrics
from ackd_fast.bench import build_path
from ackd_fast.deploy import deploy
from ackd_fast.metrics import ieee_fp32
from ackd_fast.models import build_generator

SMOKE = os.environ.get("ACKD_BENCH_SMOKE") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODELS = {"student": ("mobile_resnet_9blocks", 16), "teacher": ("resnet_9blocks", 64)}
SIZE = 256
if SMOKE:
    MODELS, SIZE = {"student": ("mobile_resnet_9blocks", 4), "teacher": ("resnet_9blocks", 4)}, 16
PATHS = ["deploy", "eager", "compiled", "onnxruntime", "openvino"]
DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}[DEVICE]
TEACHER_PATHS_CPU = {"deploy", "eager"}


def cases():
    for role in MODELS:
        for batch in (1,) if SMOKE else (1, 4):
            for dtype in DTYPES:
                for path in PATHS:
                    if DEVICE == "cpu" and role == "teacher" and (batch > 1 or path not in TEACHER_PATHS_CPU):
                        continue
                    if path in ("onnxruntime", "openvino") and (DEVICE == "cuda" or dtype != "float32"):
                        continue  # the installed onnxruntime and OpenVINO run fp32 on the CPU here
                    yield pytest.param(role, batch, dtype, path, id=f"{role}-b{batch}-{DEVICE}-{dtype}-{path}")


_built: dict[tuple, object] = {}


def runner(role: str, batch: int, dtype: torch.dtype, path: str):
    """The path's callable and its input, built once per case (compiling takes a minute on a 2-core CPU)."""
    key = (role, batch, dtype, path)
    if key not in _built:
        name, ngf = MODELS[role]
        torch.manual_seed(0)
        model = build_generator(name, ngf).to(DEVICE, dtype).eval().requires_grad_(False)
        x = torch.randn(batch, 3, SIZE, SIZE, device=DEVICE, dtype=dtype)
        if SMOKE and path in ("deploy", "compiled"):
            # inductor would compile C++ for a minute; the smoke run checks the paths with what builds quickly
            fn = deploy(model, x, method="kernels") if path == "deploy" and DEVICE == "cpu" else model
        else:
            fn = build_path("compile" if path == "compiled" else path, model, x)
        _built[key] = (fn, x, metrics.count_macs(model, x))
    return _built[key]


@pytest.mark.parametrize(("role", "batch", "dtype", "path"), list(cases()))
def test_generator_inference(benchmark, role, batch, dtype, path):
    fn, x, macs = runner(role, batch, getattr(torch, dtype), path)
    name, ngf = MODELS[role]
    benchmark.group = f"{name} ngf {ngf} {SIZE}x{SIZE} b{batch} {DEVICE} {dtype} fwd"
    benchmark.extra_info.update(
        path=path, ackd_fast=path == "deploy", flops=2 * macs, images=batch, role=role, arch=f"{name}:{ngf}",
        batch=batch, dtype=dtype, method=getattr(fn, "method", path),
    )  # fmt: skip

    def step():
        # every path in full fp32 on CUDA, as deploy runs (cuDNN's default would give the others TF32 convolutions)
        with torch.no_grad(), ieee_fp32(x.device):
            fn(x)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    step()
    rounds = 1 if SMOKE else (20 if DEVICE == "cuda" else 10)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0 if SMOKE else 1)
