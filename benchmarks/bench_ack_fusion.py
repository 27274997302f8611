"""ACK-F: the fused C++/CUDA ops and the whole ACKFusion against what a user would otherwise run.

Paths, measured in one run so their ratios hold:
  extension  ackd_fast.ops (one pass per source; fused norm, activation and residual)
  eager      the reference composition: F.interpolate, weighted sums, F.instance_norm, relu, add
  compiled   the same reference composition under torch.compile (inductor)

    pytest benchmarks/bench_ack_fusion.py                          # full shapes
    ACKD_BENCH_SMOKE=1 pytest benchmarks/bench_ack_fusion.py --benchmark-disable   # CI: tiny shapes, one call each
    python benchmarks/report.py results.json                       # ratio table from --benchmark-json output

Shapes (docs/DESIGN.md): paper = B 4, 256 channels, 64x64 target, sources at 64x64, 32x32 and 128x128;
student = the same with 64 channels. fp32 on CPU; fp32 and bf16 on CUDA.

extra_info: `bytes` for the memory-bound ops (every tensor argument read once and every result written once per
pass: the traffic a fused kernel cannot avoid), `flops` for ACKFusion (its two 3x3 convolutions, which dominate),
and on CUDA the peak memory a call allocates beyond its inputs.
"""

from __future__ import annotations

import os

import pytest
import torch

from ackd_fast import ops, reference
from ackd_fast.modules import ACKFusion

SMOKE = os.environ.get("ACKD_BENCH_SMOKE") == "1"
SHAPES = {  # name: (batch, channels, target size, source sizes)
    "paper": (4, 256, (64, 64), [(64, 64), (32, 32), (128, 128)]),
    "student": (4, 64, (64, 64), [(64, 64), (32, 32), (128, 128)]),
}
if SMOKE:
    SHAPES = {"smoke": (2, 8, (12, 10), [(12, 10), (6, 5), (24, 20)])}
DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}
PATHS = ["extension", "eager", "compiled"]
# Inductor compiles C++/Triton for a minute per graph; the smoke run checks the path traces with a cheap backend.
COMPILE_BACKEND = "aot_eager" if SMOKE else "inductor"

pytestmark = pytest.mark.skipif(not ops.EXTENSION_LOADED, reason=f"ackd_fast._C did not load: {ops.EXTENSION_ERROR}")

LABEL = {"nchw": "", "channels_last": "-channels_last"}
# Memory layouts: NCHW everywhere, and on CUDA also channels_last in bf16, what training runs there.
CASES = [
    pytest.param(shape, device, dtype, layout, id=f"{shape}-{device}-{str(dtype)[6:]}{LABEL[layout]}")
    for shape in SHAPES
    for device in DEVICES
    for dtype in DTYPES[device]
    for layout in ("nchw", "channels_last")
    if layout == "nchw" or (device == "cuda" and dtype == torch.bfloat16)
]


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x (a leaf) in the case's memory layout, still a leaf."""
    if layout != "channels_last":
        return x
    return x.detach().to(memory_format=torch.channels_last).requires_grad_(x.requires_grad)


def measure(benchmark, name: str, call, leaves, backward: bool, shape, device: str, dtype, layout: str, path: str,
            **work) -> None:  # fmt: skip
    """Times call() (under no_grad) or call() plus a backward into `leaves`, after a warm-up call that also
    compiles; records the path, the work of one call (`bytes=` or `flops=`) and on CUDA the peak memory beyond the
    inputs in extra_info."""
    direction = "fwd+bwd" if backward else "fwd"
    benchmark.group = f"{name} {shape} {device} {str(dtype).removeprefix('torch.')}{LABEL[layout]} {direction}"
    benchmark.extra_info.update(path=path, ackd_fast=path == "extension", **work)

    grad = []  # the output's gradient, made once: a fresh buffer per step would time its page faults too

    def unsynced():
        if backward:
            out = call()
            if not grad:
                grad.append(torch.ones_like(out))
            torch.autograd.grad(out, leaves, grad[0])
        else:
            with torch.no_grad():
                call()

    def step():  # synced per call: what an eager user pays
        unsynced()
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    benchmark.pedantic(step, rounds=1 if SMOKE else 10, iterations=1, warmup_rounds=0 if SMOKE else 1)
    if device == "cuda":
        benchmark.extra_info["peak_memory_bytes"] = torch.cuda.max_memory_allocated() - base
        import triton  # kernel-only: CUDA events over back-to-back calls (report.py's kernel-only ratio)

        benchmark.extra_info["kernel_ms"] = triton.testing.do_bench(unsynced, warmup=5, rep=25, return_mode="median")


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def op_for(path: str, extension_op, reference_op):
    """The function a path runs: the extension's op, or the reference composition eager or compiled."""
    if path == "extension":
        return extension_op
    return torch.compile(reference_op, backend=COMPILE_BACKEND, fullgraph=True) if path == "compiled" else reference_op


# ------------------------------------------------------------------------------------------ ack_accumulate


def accumulate_inputs(shape, device, dtype, layout="nchw"):
    b, c, size, sizes = SHAPES[shape]
    sources = [in_layout(torch.randn(b, c, *s, device=device, dtype=dtype, requires_grad=True), layout) for s in sizes]
    weights = torch.full((len(sizes),), 1 / len(sizes), device=device, requires_grad=True)
    return sources, weights, size


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("shape", "device", "dtype", "layout"), CASES)
def test_ack_accumulate(benchmark, shape, device, dtype, layout, path, backward):
    sources, weights, size = accumulate_inputs(shape, device, dtype, layout)
    fn = op_for(path, ops.ack_accumulate, reference.ack_accumulate)
    call = lambda: fn(sources, weights.to(dtype), size, "bilinear")
    out = sources[0].new_empty(sources[0].shape[:2] + tuple(size))
    # forward: sources in, sum out; backward: its gradient and the sources in (the weights' gradients), theirs out
    moved = nbytes(*sources, out) + (nbytes(out, *sources, *sources) if backward else 0)
    leaves = [*sources, weights]
    measure(benchmark, "ack_accumulate", call, leaves, backward, shape, device, dtype, layout, path, bytes=moved)


# ------------------------------------------------------------------------------- instance_norm_act_residual


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("shape", "device", "dtype", "layout"), CASES)
def test_instance_norm_act_residual(benchmark, shape, device, dtype, layout, path, backward):
    """The ConvBlock's last norm: affine instance norm, then the residual (and a ReLU, as the first norm has)."""
    b, c, size, _ = SHAPES[shape]
    x = in_layout(torch.randn(b, c, *size, device=device, dtype=dtype, requires_grad=True), layout)
    residual = torch.randn_like(x, requires_grad=True)
    weight = torch.ones(c, device=device, dtype=dtype, requires_grad=True)
    bias = torch.zeros(c, device=device, dtype=dtype, requires_grad=True)
    fn = op_for(path, ops.instance_norm_act_residual, reference.instance_norm_act_residual)
    call = lambda: fn(x, weight, bias, residual, "relu", 1e-5)
    # forward: x and the residual in, the result out; backward: its gradient and x in, theirs out
    moved = 3 * nbytes(x) + (4 * nbytes(x) if backward else 0)
    leaves = [x, weight, bias, residual]
    measure(benchmark, "instance_norm_act_residual", call, leaves, backward, shape, device, dtype, layout, path,
            bytes=moved)  # fmt: skip


# ------------------------------------------------------------------------------------------------ ACKFusion


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("shape", "device", "dtype", "layout"), CASES)
def test_ack_fusion_module(benchmark, shape, device, dtype, layout, path, backward):
    b, c, size, sizes = SHAPES[shape]
    deep = in_layout(torch.randn(b, c, *size, device=device, dtype=dtype, requires_grad=True), layout)
    sources = [in_layout(torch.randn(b, c, *s, device=device, dtype=dtype, requires_grad=True), layout) for s in sizes]
    module = ACKFusion(c, [c] * len(sizes), backend="extension" if path == "extension" else "reference")
    memory_format = torch.channels_last if layout == "channels_last" else torch.preserve_format
    module = module.to(device, dtype, memory_format=memory_format)
    module = op_for(path, module, module)  # the module picks its backend; "compiled" compiles it
    call = lambda: module(deep, sources)
    leaves = [deep, *sources, *module.parameters()]
    # two 3x3 convolutions C -> C on the target grid; a backward costs twice its forward (input and weight grads)
    flops = 2 * (2 * b * c * c * 9 * size[0] * size[1]) * (3 if backward else 1)
    measure(benchmark, "ACKFusion", call, leaves, backward, shape, device, dtype, layout, path, flops=flops)
