"""ACK-A's ops: `ack_attention`, the Triton kernels (kernels/ack_attention.py) as a custom op with autograd, and
`sdpa_attention`, the same computation on PyTorch's fused scaled_dot_product_attention for every device and dtype the
Triton kernels do not take (memory linear in the tokens: the (Nq x Nkv) score matrix is never held).

Registered with `torch.library.custom_op` so that torch.compile traces through it; its backward is an op of its own.
Plain eager calls skip the dispatcher and run the same kernels under an autograd.Function (see "eager calls").

Autocast: q, keys and values are cast to autocast's dtype (fp64 is left alone), the rule of matmul and
scaled_dot_product_attention, and the op runs with autocast off; the kernels accumulate in fp32 and keep the
softmax statistics in fp32. The plain composition under autocast (reference.ack_attention) computes its matmuls
in the same dtype.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ackd_fast import checks
from ackd_fast.kernels import layout
from ackd_fast.ops import dispatch


def ack_attention(
    q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], heads: int, scale: float | None = None
) -> Tensor:
    """Multi-head cross-attention of q over the tokens of all key/value sources under one softmax (Triton).

    q: (B, heads*d, Hq, Wq); keys[j], values[j]: (B, heads*d, H_j, W_j), 1 to 4 sources, any strides;
    fp16, bf16 or fp32 (fp32 follows torch.backends.cuda.matmul.fp32_precision: "tf32" runs tl.dot in tf32, full
    fp32 as tf32x3, three tf32 passes with fp32 accuracy); d <= 128. Returns (B, heads*d, Hq, Wq) in q's memory
    format (channels_last in, channels_last out); `scale` defaults to 1/sqrt(d). Differentiable in q, keys, values;
    the gradients come back in their inputs' memory formats.
    Runs on CUDA, and on CPU under the Triton interpreter (TRITON_INTERPRET=1) for tests;
    `ackd_fast.reference.ack_attention` is the same computation in plain PyTorch.
    """
    key = _checked_key(q, keys, values, heads)
    if key is None or key not in _CHECKED:
        q, keys, values = checks.attention_inputs(q, keys, values, heads)
        reason = dispatch._unavailable("triton", q.device.type, dispatch.compute_dtype(q), sources=len(keys))
        if reason is not None:
            raise RuntimeError(f"ack_attention (Triton) cannot run on {q.device.type}: {reason}")
        if key is not None:
            if len(_CHECKED) >= 1024:  # shapes seen in training are few; a stream of new ones starts over
                _CHECKED.clear()
            _CHECKED.add(key)
    if scale is not None:
        scale = float(scale)
    if key is not None and _plain_eager():
        return _eager_call(q, keys, values, heads, scale)
    return torch.ops.ackd_fast.ack_attention(q, list(keys), list(values), heads, scale)[0]


# The inputs of calls that passed checks.attention_inputs and the backend check, by what those checks read (shapes,
# dtypes, devices, heads, counts, whether autocast changes the dtype the op computes in): a later call with the same
# key skips them (the kernels' launch cache, kernels/ack_attention.py, skips the launch-side work likewise). A call
# that differs in anything the checks read gets another key, or None (not plain Tensors in a list or tuple), and is
# checked in full, so a bad call still raises the same ValueError/TypeError before any memory is touched.
_CHECKED: set[tuple] = set()


def _checked_key(q, keys, values, heads) -> tuple | None:
    if type(q) is not Tensor or type(heads) is not int or type(keys) not in (list, tuple):
        return None
    if type(values) not in (list, tuple) or len(keys) != len(values):
        return None
    maps = (q, *keys, *values)
    if any(type(x) is not Tensor for x in maps):
        return None
    return (heads, len(keys), dispatch.compute_dtype(q), *((x.shape, x.dtype, x.device) for x in maps))


SDPA_DTYPES = ("float16", "bfloat16", "float32", "float64")


def sdpa_attention(
    q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], heads: int, scale: float | None = None
) -> Tensor:
    """`ack_attention`'s computation on torch's fused scaled_dot_product_attention: "one softmax across the
    sources" is attention over the sources' tokens together, so the sources' tokens are concatenated (a copy of the
    keys and values, linear in the tokens) and SDPA's fused kernels (flash attention on CPU, any dtype and head dim;
    flash, memory-efficient or cuDNN on CUDA) never hold the score matrix. Inputs as `ack_attention` takes them;
    differentiable through autograd; under autocast SDPA's own rule applies."""
    q, keys, values = checks.attention_inputs(q, keys, values, heads, dtypes=SDPA_DTYPES, max_head_dim=None)
    batch, channels, height, width = q.shape
    d = channels // heads

    def tokens(maps: Sequence[Tensor]) -> Tensor:  # (B, heads, N, d), contiguous: else SDPA falls back to its math
        return torch.cat([m.reshape(batch, heads, d, -1) for m in maps], dim=-1).transpose(-1, -2).contiguous()

    out = F.scaled_dot_product_attention(tokens([q]), tokens(keys), tokens(values), scale=scale)
    return out.transpose(-1, -2).reshape(batch, channels, height, width)


def _kernels():
    # Imported on first use: triton is imported only when a kernel runs, and TRITON_INTERPRET is read then.
    return importlib.import_module("ackd_fast.kernels.ack_attention")


@torch.library.custom_op("ackd_fast::ack_attention", mutates_args=())
def _ack_attention_op(
    q: Tensor, keys: list[Tensor], values: list[Tensor], heads: int, scale: float | None
) -> tuple[Tensor, Tensor]:
    """(out, lse): out in q's memory format and dtype, lse (B*heads, Hq*Wq) fp32, the log-sum-exp of each query's
    scores that the backward needs (its base is the kernels' business)."""
    return _kernels().forward(q, keys, values, heads, scale)


@_ack_attention_op.register_fake
def _ack_attention_fake(q, keys, values, heads, scale):
    batch, _channels, height, width = q.shape
    out = layout.output_like(q)
    lse = q.new_empty((batch * heads, height * width), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("ackd_fast::ack_attention_backward", mutates_args=())
def _ack_attention_backward_op(
    grad_out: Tensor,
    q: Tensor,
    keys: list[Tensor],
    values: list[Tensor],
    out: Tensor,
    lse: Tensor,
    heads: int,
    scale: float | None,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(dq, dkeys, dvalues), each in its input's memory format, from the forward's inputs, out and lse."""
    return _kernels().backward(grad_out, q, keys, values, out, lse, heads, scale)


@_ack_attention_backward_op.register_fake
def _ack_attention_backward_fake(grad_out, q, keys, values, out, lse, heads, scale):
    like = layout.output_like
    return like(q), [like(k) for k in keys], [like(v) for v in values]


def _save(ctx, q, keys, values, out, lse, heads, scale) -> None:
    ctx.save_for_backward(q, *keys, *values, out, lse)
    ctx.sources, ctx.heads, ctx.scale = len(keys), heads, scale


def _saved(ctx) -> tuple:
    """What the backward takes besides grad_out, from what `_save` kept: (q, keys, values, out, lse, heads, scale)."""
    q, *saved = ctx.saved_tensors
    n = ctx.sources
    return q, saved[:n], saved[n : 2 * n], *saved[2 * n :], ctx.heads, ctx.scale


def _ack_attention_setup_context(ctx, inputs, output):
    q, keys, values, heads, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    _save(ctx, q, keys, values, out, lse, heads, scale)


def _ack_attention_backward(ctx, grad_out, _grad_lse):
    dq, dkeys, dvalues = torch.ops.ackd_fast.ack_attention_backward(grad_out, *_saved(ctx))
    return dq, dkeys, dvalues, None, None


torch.library.register_autograd(
    "ackd_fast::ack_attention", _ack_attention_backward, setup_context=_ack_attention_setup_context
)


def _autocast_inputs(device_type: str, q: Tensor, keys, values) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """q, keys and values in autocast's dtype on `device_type` (fp64 is left alone)."""
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t

    return cast(q), [cast(k) for k in keys], [cast(v) for v in values]


def _autocast_kernel(device_type: str):
    """The op under autocast on `device_type`: inputs cast to autocast's dtype, then the op with autocast off."""

    def run(q, keys, values, heads, scale):
        q, keys, values = _autocast_inputs(device_type, q, keys, values)
        with torch.autocast(device_type, enabled=False):
            return _ack_attention_op(q, keys, values, heads, scale)

    return run


# torch.library.register_autocast casts to one dtype fixed at registration; this follows the autocast region's.
for _device_type, _key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
    torch.library.impl("ackd_fast::ack_attention", _key, _autocast_kernel(_device_type))


# ------------------------------------------------------------------------------------------- eager calls
# Through the dispatcher, a custom op's autograd costs host time on every call: on 2 CPU cores about 130 us more
# per forward+backward than an autograd.Function around the same kernels (benchmarks/host_overhead_cpu.py). In
# eager mode with nothing that needs to see the op (no compile or trace, no torch-function or dispatch mode, no
# functorch transform) `ack_attention` therefore runs the kernels through `_AckAttentionFunction`; everything
# else goes through the op. Both run the same kernels with the same launch plans, so their values are equal.


def _plain_eager() -> bool:
    """Whether a call may skip the op: nothing is compiling, tracing or intercepting ops."""
    # is_compiling first: under Dynamo it is a constant True and the private calls after it are never traced
    return not (
        torch.compiler.is_compiling()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._functorch.peek_interpreter_stack() is not None
        or torch._C._get_tracing_state() is not None
    )


def _eager_call(q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], heads: int, scale: float | None) -> Tensor:
    """The op's result for plain tensors in plain eager mode, with the op's autocast rule and autograd."""
    if torch.is_autocast_enabled(q.device.type):
        q, keys, values = _autocast_inputs(q.device.type, q, keys, values)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, *keys, *values)):
        return _AckAttentionFunction.apply(heads, scale, len(keys), q, *keys, *values)
    return _kernels().forward(q, keys, values, heads, scale)[0]


class _AckAttentionFunction(torch.autograd.Function):
    """`ackd_fast::ack_attention` and its registered autograd without the dispatcher (eager calls only)."""

    @staticmethod
    def forward(ctx, heads: int, scale: float | None, sources: int, q: Tensor, *keys_and_values: Tensor) -> Tensor:
        keys, values = keys_and_values[:sources], keys_and_values[sources:]
        out, lse = _kernels().forward(q, keys, values, heads, scale)
        _save(ctx, q, keys, values, out, lse, heads, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        # create_graph: through the backward op, so that differentiating the gradients raises as after the op
        backward = torch.ops.ackd_fast.ack_attention_backward if torch.is_grad_enabled() else _kernels().backward
        dq, dkeys, dvalues = backward(grad_out, *_saved(ctx))
        return None, None, None, dq, *dkeys, *dvalues
