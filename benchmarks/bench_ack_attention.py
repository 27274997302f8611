"""ACK-A attention against what a user would otherwise write: SDPA (each backend that runs) fed with the
permute/reshape/cat it needs, the eager reference, and the reference under torch.compile.

    pytest benchmarks/bench_ack_attention.py                          # GPU: timings (benchmarks/gpu_suite.sh)
    pytest benchmarks/bench_ack_attention.py --benchmark-disable      # CPU: a smoke test of every path

On a GPU the shapes are the paper's; without one a tiny "smoke" shape runs each path once, the Triton kernels
in the interpreter. extra_info carries the FLOPs of a call (forward 4*B*h*Nq*Nkv*d, backward 2.5x that; report.py
turns them into TFLOP/s), the peak memory a call allocates beyond its inputs and, on a GPU, `kernel_ms`: the
median time per call over back-to-back calls measured with CUDA events (triton.testing.do_bench), where the host's
per-call Python and launch overhead hides behind the device's work. The timed `step` synchronises after every call
(what an eager user pays); report.py shows both ratios.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported

from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from ackd_fast import ops, reference  # noqa: E402

# name: (batch, heads, head_dim, query (H, W), source (H, W) each, number of sources, dtype)
GPU_SHAPES = {
    "paper": (4, 4, 64, (64, 64), (64, 64), 3, torch.bfloat16),
    "hi-res": (1, 4, 64, (128, 256), (128, 256), 3, torch.bfloat16),
    "student": (4, 1, 64, (64, 64), (64, 64), 3, torch.bfloat16),
}
CPU_SHAPES = {"smoke": (1, 2, 16, (6, 5), (4, 7), 3, torch.float32)}
SHAPES = GPU_SHAPES if GPU else CPU_SHAPES
DEVICE = "cuda" if GPU else "cpu"

SDPA_BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}


def sdpa_path(backend):
    def attention(q, keys, values, heads):
        # What a user writes: tokens-major (B, h, N, d) copies of q and of the concatenated sources.
        b, c, hq, wq = q.shape
        d = c // heads

        def tokens(maps):
            return torch.cat([m.reshape(b, heads, d, -1) for m in maps], dim=-1).transpose(-1, -2).contiguous()

        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(tokens([q]), tokens(keys), tokens(values))
        return out.transpose(-1, -2).reshape(b, c, hq, wq)

    return attention


# The paths that hold the whole score matrix in memory (at "hi-res" ~24 GiB): skipped where it cannot fit.
MATERIALISING = {"sdpa_math", "reference", "reference_compiled"}

_compiled_reference = None


def compiled_reference(q, keys, values, heads):
    global _compiled_reference
    if _compiled_reference is None:
        _compiled_reference = torch.compile(reference.ack_attention, fullgraph=True)
    return _compiled_reference(q, keys, values, heads)


PATHS = {
    "ackd_triton": ops.ack_attention,
    **{name: sdpa_path(backend) for name, backend in SDPA_BACKENDS.items()},
    "reference": reference.ack_attention,
    "reference_compiled": compiled_reference,
}


def make_inputs(shape, requires_grad):
    batch, heads, head_dim, (hq, wq), (hk, wk), count, dtype = shape
    c = heads * head_dim

    def rand(h, w):
        return torch.randn(batch, c, h, w, device=DEVICE, dtype=dtype, requires_grad=requires_grad)

    return rand(hq, wq), [rand(hk, wk) for _ in range(count)], [rand(hk, wk) for _ in range(count)]


def flops(shape, backward):
    batch, heads, head_dim, (hq, wq), (hk, wk), count, _ = shape
    forward = 4 * batch * heads * hq * wq * hk * wk * count * head_dim
    return forward * (3.5 if backward else 1.0)


def sync():
    if GPU:
        torch.cuda.synchronize()


def attention_call(attention, q, keys, values, heads, grad=None):
    """One call of `attention` as a benchmark times it: the forward alone without `grad`, else forward and
    backward (the gradients of q, keys and values for `grad`)."""

    def call():
        if grad is not None:
            out = attention(q, keys, values, heads)
            torch.autograd.grad(out, [q, *keys, *values], grad)
        else:
            with torch.no_grad():
                attention(q, keys, values, heads)

    return call


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_ack_attention(benchmark, shape_name, path, mode):
    shape = SHAPES[shape_name]
    backward = mode == "forward_backward"
    heads = shape[1]
    q, keys, values = make_inputs(shape, requires_grad=backward)
    attention = PATHS[path]
    grad = torch.randn(q.shape, device=DEVICE, dtype=q.dtype) if backward else None
    call = attention_call(attention, q, keys, values, heads, grad)

    def step():
        call()
        sync()

    if GPU and path in MATERIALISING:
        # the (B*heads, Nq, Nkv) score matrix, its softmax and (backward) their gradients
        batch, heads_, _, (hq, wq), (hk, wk), count, dtype = shape
        need = batch * heads_ * hq * wq * hk * wk * count * torch.empty((), dtype=dtype).element_size()
        need *= 4 if backward else 2
        free, _ = torch.cuda.mem_get_info()
        if need > 0.8 * free:
            pytest.skip(f"{path} materialises {need / 2**30:.1f} GiB of scores; {free / 2**30:.1f} GiB are free")
    try:
        step()  # warm-up: compiles, autotunes; a path that cannot run here is skipped
    except torch.OutOfMemoryError as exc:
        pytest.skip(f"{path} ran out of GPU memory: {str(exc).splitlines()[0]}")
    except RuntimeError as exc:
        if path.startswith("sdpa_"):
            pytest.skip(f"{path} does not run here: {str(exc).splitlines()[0]}")
        raise
    if GPU:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    benchmark.group = f"ack_attention {shape_name} {DEVICE} {str(shape[-1]).removeprefix('torch.')} {mode}"
    benchmark(step)
    kernel_ms = None
    if GPU:
        import triton

        kernel_ms = triton.testing.do_bench(call, warmup=10, rep=50, return_mode="median")
    benchmark.extra_info.update(
        {
            "shape": shape_name,
            "path": path,
            "ackd_fast": path == "ackd_triton",
            "mode": mode,
            "flops": flops(shape, backward),
            "peak_memory_bytes": peak if GPU else None,
            "kernel_ms": kernel_ms,
        }
    )
