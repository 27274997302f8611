"""ACK-A's Triton kernels through the `ack_attention` op: values and gradients against the fp64 reference,
layouts, large logits (the base-2 log-sum-exp), the one dK/dV launch for all sources, fully written outputs,
opcheck, torch.compile, dispatch and bad input.

Without a GPU the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1), where a program
costs milliseconds: shapes stay at a few hundred tokens. With a GPU the same tests run the compiled kernels.
"""

import math
import os

import pytest
import torch

from ackd_fast import ops, reference
from ackd_fast.modules import ACKAttention

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

TRITON_DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="Triton on CPU needs TRITON_INTERPRET=1")),
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
    ),
]

# Odd token counts, each source its own: (H, W) of the query map and of up to four sources.
QUERY = (9, 7)
SOURCES = [(5, 9), (13, 10), (3, 3), (7, 4)]
# Interpreter precision gives the error scale of the dtype; atol covers results that are exact in both.
ATOL = {torch.float32: 1e-6, torch.float16: 2e-4, torch.bfloat16: 2e-3}


@pytest.fixture(params=TRITON_DEVICES)
def device(request):
    return torch.device(request.param)


def layout(x, kind):
    """The same values as `x` in another memory layout: channels_last, or a view into a larger tensor."""
    if kind == "contiguous":
        return x
    if kind == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if kind == "sliced":  # a column slice: rows no longer follow each other (the kernels' general path)
        b, c, h, w = x.shape
        wide = torch.randn(b, c + 3, h + 1, 2 * w + 1, dtype=x.dtype, device=x.device)
        view = wide[:, 2 : 2 + c, 1:, 1::2]
        view.copy_(x)
        return view
    raise ValueError(kind)


def make_inputs(count, heads, head_dim, dtype, device, batch=2):
    c = heads * head_dim
    q = torch.randn(batch, c, *QUERY, dtype=dtype, device=device)
    keys = [torch.randn(batch, c, *hw, dtype=dtype, device=device) for hw in SOURCES[:count]]
    values = [torch.randn(batch, c, *hw, dtype=dtype, device=device) for hw in SOURCES[:count]]
    return q, keys, values


def run(fn, q, keys, values, heads, grad, scale=None):
    """fn's output and its gradients for q, every key and every value under the output gradient `grad`."""
    q, keys, values = (q.detach().requires_grad_(), [k.detach().requires_grad_() for k in keys],
                       [v.detach().requires_grad_() for v in values])  # fmt: skip
    out = fn(q, keys, values, heads, scale)
    grads = torch.autograd.grad(out, [q, *keys, *values], grad.to(out.dtype))
    return [out.detach(), *grads]


def max_errors(results, exact):
    return [(r.double() - e).abs().max().item() for r, e in zip(results, exact, strict=True)]


CASES = [
    # count, heads, head_dim, dtype, layout of q / keys / values
    (1, 2, 16, torch.float32, "contiguous"),
    (2, 1, 48, torch.float32, "channels_last"),
    (3, 2, 64, torch.float32, "sliced"),
    (4, 2, 16, torch.float32, "contiguous"),
    (2, 1, 128, torch.float32, "channels_last"),
    (1, 1, 64, torch.float16, "contiguous"),
    (3, 2, 48, torch.float16, "channels_last"),
    (4, 1, 16, torch.float16, "sliced"),
    (2, 1, 80, torch.float16, "contiguous"),
    (3, 2, 64, torch.bfloat16, "channels_last"),
    (2, 1, 96, torch.bfloat16, "sliced"),
]


@pytest.mark.parametrize(("count", "heads", "head_dim", "dtype", "kind"), CASES)
def test_forward_and_backward_match_reference(count, heads, head_dim, dtype, kind, device):
    if dtype == torch.bfloat16 and device.type == "cpu":
        pytest.skip("the Triton interpreter computes bf16 wrongly (ANCHORS.md); bf16 is tested on GPUs")
    q, keys, values = make_inputs(count, heads, head_dim, dtype, device)
    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    exact = run(reference.ack_attention, q.double(), [k.double() for k in keys], [v.double() for v in values],
                heads, grad)  # fmt: skip
    torch_same_dtype = run(reference.ack_attention, q, keys, values, heads, grad)
    got = run(ops.ack_attention, layout(q, kind), [layout(k, kind) for k in keys], [layout(v, kind) for v in values],
              heads, grad)  # fmt: skip
    names = ["out", "dq", *(f"dkeys[{j}]" for j in range(count)), *(f"dvalues[{j}]" for j in range(count))]
    for name, err, ref_err in zip(names, max_errors(got, exact), max_errors(torch_same_dtype, exact), strict=True):
        assert err <= 2 * ref_err + ATOL[dtype], f"{name}: error {err:.3g}, PyTorch in {dtype}: {ref_err:.3g}"
    # outputs and gradients come back in their input's memory format (channels_last in, channels_last out; a
    # sliced view's as torch.empty_like suggests it: NCHW here)
    inputs = [q, q, *keys, *values]
    for name, g, x in zip(["out", *names[1:]], got, inputs, strict=True):
        want = torch.channels_last if kind == "channels_last" and min(x.shape[2:]) > 1 else torch.contiguous_format
        assert g.is_contiguous(memory_format=want), f"{name}: strides {g.stride()}, {kind} input"


def test_scale_and_large_logits(device):
    """A custom scale, and scores large enough that an unshifted exp would overflow fp32."""
    q, keys, values = make_inputs(2, 2, 16, torch.float32, device, batch=1)
    q = q * 30
    got = ops.ack_attention(q, keys, values, 2, scale=0.7)
    want = reference.ack_attention(q.double(), [k.double() for k in keys], [v.double() for v in values], 2, 0.7)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def _highest_fp32_precision(monkeypatch):
    """Full fp32 matmuls (no tf32) on a GPU, as the exact-arithmetic tests need."""
    from ackd_fast.kernels import ack_attention as kernels

    monkeypatch.setattr(kernels, "fp32_matmul_precision", lambda: "ieee")


def test_large_logits_keep_full_precision(device, monkeypatch):
    """Scores near 2**16 in the log2 domain, built so that the base-2 path is exact: integer scores,
    scale * log2(e) = 1, and in every row 64 equal scores, so the base-2 log-sum-exp is score + 6. The lse comes
    back exact and the gradients to fp32 rounding. A natural-log lse multiplied back by log2(e) in the backward
    is one ulp of 2**16 (0.008) off in about one row in seven: 0.5% errors in the gradients."""
    from ackd_fast.kernels import ack_attention as kernels

    _highest_fp32_precision(monkeypatch)
    heads, head_dim, half = 2, 16, 8
    scale = 1 / kernels.LOG2E
    assert torch.tensor(scale * kernels.LOG2E, dtype=torch.float32).item() == 1.0
    # Channels 0-7 of a head: q's vary by row, the keys' are the same for every key (so are the scores in a row);
    # channels 8-15: q is 0 there, the keys vary (so dq is not 0).
    shared_key = torch.randint(-2, 3, (heads, half), device=device).float()
    shared_key[:, 0] = 16.0
    q = torch.zeros(2, heads, head_dim, *QUERY, device=device)
    q[:, :, 1:half] = torch.randint(-2, 3, (2, heads, half - 1, *QUERY), device=device).float()
    q[:, :, 0] = 4096 + torch.randint(-64, 65, (2, heads, *QUERY), device=device).float()
    keys, values = [], []
    for hw in [(5, 9), (3, 3), (2, 5)]:  # 45 + 9 + 10 = 64 keys
        k = torch.randn(2, heads, head_dim, *hw, device=device)
        k[:, :, :half] = shared_key[None, :, :, None, None]
        keys.append(k.reshape(2, heads * head_dim, *hw))
        values.append(torch.randn(2, heads * head_dim, *hw, device=device))
    q = q.reshape(2, heads * head_dim, *QUERY)

    _, lse = kernels.forward(q, keys, values, heads, scale)
    scores = (q.double().reshape(2, heads, head_dim, -1)[:, :, :half] * shared_key.double()[None, :, :, None]).sum(2)
    assert torch.equal(lse.double(), scores.reshape(2 * heads, -1) + 6), "lse is not the exact base-2 log-sum-exp"

    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    exact = run(reference.ack_attention, q.double(), [k.double() for k in keys], [v.double() for v in values],
                heads, grad, scale)  # fmt: skip
    torch_same_dtype = run(reference.ack_attention, q, keys, values, heads, grad, scale)
    got = run(ops.ack_attention, q, keys, values, heads, grad, scale)
    names = ["out", "dq", *(f"dkeys[{j}]" for j in range(3)), *(f"dvalues[{j}]" for j in range(3))]
    for name, e, err, ref_err in zip(
        names, exact, max_errors(got, exact), max_errors(torch_same_dtype, exact), strict=True
    ):
        assert err <= 2 * ref_err + 1e-6 * e.abs().max().item(), f"{name}: error {err:.3g}, PyTorch fp32: {ref_err:.3g}"


def test_dkdv_of_every_source_in_one_launch(device, monkeypatch):
    """One dK/dV launch covers the key blocks of all sources, however unequal: 130 tokens (5 blocks of the
    interpreter's 32), 1, 9 and 22 tokens (each less than a block). Every source's dK and dV is fully written
    (over NaN) and right."""
    from ackd_fast.kernels import ack_attention as kernels

    heads, head_dim = 2, 16
    sources = [(13, 10), (1, 1), (3, 3), (2, 11)]
    q = torch.randn(2, heads * head_dim, *QUERY, device=device)
    keys = [torch.randn(2, heads * head_dim, *hw, device=device) for hw in sources]
    values = [torch.randn(2, heads * head_dim, *hw, device=device) for hw in sources]
    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    out, lse = kernels.forward(q, keys, values, heads)

    launched = []
    dkdv = kernels.KERNELS["dkdv"]

    class Counted:
        def __getitem__(self, grid):
            def launch(**args):
                launched.append(grid({"BLOCK_N": 32}))
                return dkdv[grid](**args)

            return launch

    monkeypatch.setitem(kernels.KERNELS, "dkdv", Counted())
    nan = [torch.full_like(x, float("nan")) for x in (*keys, *values)]
    _, dkeys, dvalues = kernels.backward(grad.float(), q, keys, values, out, lse, heads, dkeys=nan[:4], dvalues=nan[4:])
    assert launched == [(5 + 1 + 1 + 1, 2 * heads)], launched

    exact = run(reference.ack_attention, q.double(), [k.double() for k in keys], [v.double() for v in values],
                heads, grad)  # fmt: skip
    torch_same_dtype = run(reference.ack_attention, q, keys, values, heads, grad)
    got = [*dkeys, *dvalues]
    names = [*(f"dkeys[{j}]" for j in range(4)), *(f"dvalues[{j}]" for j in range(4))]
    for name, err, ref_err in zip(names, max_errors(got, exact[2:]), max_errors(torch_same_dtype[2:], exact[2:]),
                                  strict=True):  # fmt: skip
        assert err <= 2 * ref_err + ATOL[torch.float32], f"{name}: error {err:.3g}, PyTorch fp32: {ref_err:.3g}"


def test_outputs_poisoned_with_nan_come_back_fully_written(device):
    from ackd_fast.kernels import ack_attention as kernels

    heads, head_dim = 2, 48  # head dim padded to 64: the padding lanes must not be stored, the rest must
    q, keys, values = make_inputs(3, heads, head_dim, torch.float32, device, batch=2)

    def nan(x, dtype=None):
        return torch.full(x.shape, float("nan"), dtype=dtype or x.dtype, device=device)

    lse_shape = torch.empty(2 * heads, math.prod(QUERY))
    out, lse = kernels.forward(q, keys, values, heads, out=nan(q), lse=nan(lse_shape, torch.float32))
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    grad = torch.randn_like(out)
    dq, dkeys, dvalues = kernels.backward(
        grad,
        q,
        keys,
        values,
        out,
        lse,
        heads,
        dq=nan(q),
        dkeys=[nan(k) for k in keys],
        dvalues=[nan(v) for v in values],
    )
    for g in (dq, *dkeys, *dvalues):
        assert torch.isfinite(g).all()


def _exact_and_torch(q, keys, values, heads, grad, scale=None):
    exact = run(reference.ack_attention, q.double(), [k.double() for k in keys], [v.double() for v in values],
                heads, grad, scale)  # fmt: skip
    return exact, run(reference.ack_attention, q, keys, values, heads, grad, scale)


def _assert_close_to_reference(got, exact, torch_same_dtype, dtype=torch.float32):
    for i, (err, ref_err) in enumerate(zip(max_errors(got, exact), max_errors(torch_same_dtype, exact), strict=True)):
        assert err <= 2 * ref_err + ATOL[dtype], f"result {i}: error {err:.3g}, PyTorch in {dtype}: {ref_err:.3g}"


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_full_blocks_take_the_unmasked_path(kind, device):
    """Token counts that fill every block (64 queries, 32 and 64 keys: multiples of the interpreter's 32 and of
    the GPU tiles' 16-64) and head dims equal to their padded width, so EVEN_M, EVEN_N and EVEN_D hold: values,
    gradients and every element written (NaN-poisoned buffers), in both layouts."""
    from ackd_fast.kernels import ack_attention as kernels

    heads, head_dim = 2, 16
    q = layout(torch.randn(2, heads * head_dim, 8, 8, device=device), kind)
    keys = [layout(torch.randn(2, heads * head_dim, *hw, device=device), kind) for hw in ((4, 8), (8, 8))]
    values = [layout(torch.randn(2, heads * head_dim, *hw, device=device), kind) for hw in ((4, 8), (8, 8))]
    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    exact, torch_same_dtype = _exact_and_torch(q, keys, values, heads, grad)
    _assert_close_to_reference(run(ops.ack_attention, q, keys, values, heads, grad), exact, torch_same_dtype)

    def nan(x):
        return torch.full_like(x, float("nan"))

    lse = torch.full((2 * heads, 64), float("nan"), device=device)
    out, lse = kernels.forward(q, keys, values, heads, out=nan(q), lse=lse)
    dq, dkeys, dvalues = kernels.backward(grad.float(), q, keys, values, out, lse, heads, dq=nan(q),
                                          dkeys=[nan(k) for k in keys], dvalues=[nan(v) for v in values])  # fmt: skip
    for g in (out, lse, dq, *dkeys, *dvalues):
        assert torch.isfinite(g).all()
    _assert_close_to_reference([out, dq, *dkeys, *dvalues], exact, torch_same_dtype)


@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_scales_that_cannot_be_folded(scale, device):
    """A scale <= 0 takes the unfolded softmax (max(s) * scale is not max(s * scale) there; 0 * -inf is NaN)."""
    q, keys, values = make_inputs(3, 2, 16, torch.float32, device, batch=1)
    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    exact, torch_same_dtype = _exact_and_torch(q, keys, values, 2, grad, scale)
    _assert_close_to_reference(run(ops.ack_attention, q, keys, values, 2, grad, scale), exact, torch_same_dtype)


def test_launch_cache_reuses_the_plan_and_still_checks_inputs(device, monkeypatch):
    """A second call with the same shapes, strides and dtypes launches from the cached plan (the launchers do not
    run again) on fresh inputs, and gives the right values and gradients in the inputs' layout; a bad call after
    it still raises the checks' error, naming the argument."""
    from ackd_fast.kernels import ack_attention as kernels

    heads = 2
    q, keys, values = make_inputs(2, heads, 16, torch.float32, device, batch=1)
    q = q.to(memory_format=torch.channels_last)
    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    run(ops.ack_attention, q, keys, values, heads, grad)  # plans the key
    assert kernels._launch_key(q, keys, values, heads, None) in kernels._FORWARD_PLANS

    def no_launcher(*args, **kwargs):
        raise AssertionError("the launchers ran although the launch key has a plan")

    monkeypatch.setattr(kernels, "forward_launches", no_launcher)
    monkeypatch.setattr(kernels, "backward_launches", no_launcher)
    fresh = [torch.randn_like(x) for x in (q, *keys, *values)]
    q, keys, values = fresh[0], fresh[1:3], fresh[3:]
    exact, torch_same_dtype = _exact_and_torch(q, keys, values, heads, grad)
    got = run(ops.ack_attention, q, keys, values, heads, grad)
    _assert_close_to_reference(got, exact, torch_same_dtype)
    assert got[0].is_contiguous(memory_format=torch.channels_last) and got[1].is_contiguous(
        memory_format=torch.channels_last
    )
    with pytest.raises(TypeError, match=r"values\[1\] has dtype torch.float16, expected torch.float32"):
        ops.ack_attention(q, keys, [values[0], values[1].half()], heads)
    with pytest.raises(ValueError, match=r"values\[0\] has shape"):
        ops.ack_attention(q, keys, [values[0][:, :, :2], values[1]], heads)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_fused_backward_matches_reference(kind, device, monkeypatch):
    """The fused backward (dK, dV and dQ's fp32 sum by atomics in one kernel, then the conversion) against the fp64
    reference at odd sizes with 3 sources, every gradient element written (NaN-poisoned buffers)."""
    from ackd_fast.kernels import ack_attention as kernels

    monkeypatch.setattr(kernels, "FUSED_BACKWARD", True)
    heads = 2
    q, keys, values = make_inputs(3, heads, 16, torch.float32, device)
    q, keys, values = layout(q, kind), [layout(k, kind) for k in keys], [layout(v, kind) for v in values]
    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    exact, torch_same_dtype = _exact_and_torch(q, keys, values, heads, grad)
    out, lse = kernels.forward(q, keys, values, heads)
    _, launches = kernels.backward_launches(grad.float(), q, keys, values, out, lse, heads)
    assert [launch.kernel for launch in launches] == ["preprocess", "dkdv_fused", "dq_convert"]

    def nan(x):
        return torch.full_like(x, float("nan"))

    dq, dkeys, dvalues = kernels.backward(grad.float(), q, keys, values, out, lse, heads, dq=nan(q),
                                          dkeys=[nan(k) for k in keys], dvalues=[nan(v) for v in values])  # fmt: skip
    for g in (dq, *dkeys, *dvalues):
        assert torch.isfinite(g).all()
    _assert_close_to_reference([out, dq, *dkeys, *dvalues], exact, torch_same_dtype)
    # through the op, twice (the second call launches the cached plan of the fused path)
    for _ in range(2):
        _assert_close_to_reference(run(ops.ack_attention, q, keys, values, heads, grad), exact, torch_same_dtype)


# (query (H, W), sources' (H, W), head dim) the TMA forward can read: NCHW maps need token counts whose channel
# stride is 16-byte aligned (multiples of 8 for fp16), channels_last maps head dims of 8k; odd sizes otherwise.
TMA_CASES = {
    "contiguous": ((8, 8), [(4, 6), (16, 10), (2, 4)], 16),
    "channels_last": ((9, 7), [(5, 9), (13, 10), (3, 3)], 24),  # head dim 24 pads to 32: the descriptors' zeros
}


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_tma_forward_matches_reference(kind, count, device, monkeypatch):
    """The forward through tensor descriptors (_forward_tma_kernel, fp16) against the fp64 reference, every output
    element written (NaN-poisoned buffers), then through the op twice (the second call launches the cached plan);
    the backward is the pointer kernels' (it reads the forward's out and lse)."""
    from ackd_fast.kernels import ack_attention as kernels

    heads = 2
    query, sources, head_dim = TMA_CASES[kind]
    c = heads * head_dim
    q = layout(torch.randn(2, c, *query, dtype=torch.float16, device=device), kind)
    keys = [layout(torch.randn(2, c, *hw, dtype=torch.float16, device=device), kind) for hw in sources[:count]]
    values = [layout(torch.randn(2, c, *hw, dtype=torch.float16, device=device), kind) for hw in sources[:count]]
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (9, 0):
        pytest.skip("the TMA forward runs from Hopper (sm_90) on")
    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    exact, torch_same_dtype = _exact_and_torch(q, keys, values, heads, grad)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((2 * heads, query[0] * query[1]), float("nan"), device=device)
    (out, lse), launches = kernels.forward_launches(q, keys, values, heads, out=out, lse=lse, tma=True)
    assert [launch.kernel for launch in launches] == ["forward_tma"]
    kernels._run(q, launches)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    _assert_close_to_reference([out], exact[:1], torch_same_dtype[:1], torch.float16)
    _, pointer = kernels.forward_launches(q, keys, values, heads, tma=False)
    assert [launch.kernel for launch in pointer] == ["forward"]
    monkeypatch.setattr(kernels, "TMA_FORWARD", True)
    monkeypatch.setattr(kernels, "_FORWARD_PLANS", {})
    for _ in range(2):
        got = run(ops.ack_attention, q, keys, values, heads, grad)
        _assert_close_to_reference(got, exact, torch_same_dtype, torch.float16)


def test_tma_forward_only_where_descriptors_can_read_the_maps(monkeypatch):
    """Maps TMA cannot read take the pointer kernel even when the TMA forward is asked for: fp32, rows that do not
    follow each other, a first element off 16 bytes, sources of mixed orientation; unmeasured and unasked, the
    pointer kernel runs."""
    from ackd_fast.kernels import ack_attention as kernels

    def kernel(q, keys, values, tma=True):
        return kernels.forward_launches(q, keys, values, 2, tma=tma)[1][0].kernel

    q, keys, values = make_inputs(2, 2, 16, torch.float16, "meta", batch=1)
    cl = [x.to(memory_format=torch.channels_last) for x in (q, *keys, *values)]
    assert kernel(cl[0], cl[1:3], cl[3:]) == "forward_tma"
    assert kernel(cl[0], cl[1:3], cl[3:], tma=False) == "forward"
    monkeypatch.setattr(kernels, "TMA_FORWARD", None)
    if not torch.cuda.is_available():  # unmeasured: no rule, so the pointer kernel
        assert kernel(cl[0], cl[1:3], cl[3:], tma=None) == "forward"
    fp32 = [x.float() for x in cl]
    assert kernel(fp32[0], fp32[1:3], fp32[3:]) == "forward"
    mixed = [cl[0], cl[1], keys[1].contiguous(), cl[3], cl[4]]
    assert kernel(mixed[0], mixed[1:3], mixed[3:]) == "forward"
    assert kernel(q, keys, values) == "forward"  # NCHW with 63 tokens: the channel stride is off 16 bytes
    sliced = torch.empty(1, 40, 9, 7, dtype=torch.float16).to(memory_format=torch.channels_last)[:, 1:33]
    assert kernels.tma_layout(sliced, 16) is None  # first element 2 bytes past an aligned one
    assert kernels.tma_layout(sliced.contiguous(memory_format=torch.channels_last), 16) is True


def test_deterministic_mode_takes_the_two_kernel_backward(monkeypatch):
    """Under torch.use_deterministic_algorithms the backward never uses the fused kernel's atomics."""
    from ackd_fast.kernels import ack_attention as kernels

    monkeypatch.setattr(kernels, "FUSED_BACKWARD", True)
    q, keys, values = make_inputs(2, 2, 16, torch.float32, "meta", batch=1)
    out, lse = torch.empty_like(q), torch.empty(2, q.shape[2] * q.shape[3], device="meta")
    saved = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        _, launches = kernels.backward_launches(torch.empty_like(q), q, keys, values, out, lse, 2)
        assert [launch.kernel for launch in launches] == ["preprocess", "dkdv", "dq"]
        torch.use_deterministic_algorithms(False)
        _, launches = kernels.backward_launches(torch.empty_like(q), q, keys, values, out, lse, 2)
        assert [launch.kernel for launch in launches] == ["preprocess", "dkdv_fused", "dq_convert"]
    finally:
        torch.use_deterministic_algorithms(saved)


def test_opcheck(device):
    q, keys, values = make_inputs(2, 2, 16, torch.float32, device, batch=1)
    for t in (q, *keys, *values):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.ackd_fast.ack_attention.default, (q, keys, values, 2, None))
    out, lse = torch.ops.ackd_fast.ack_attention(q, keys, values, 2, 0.5)
    args = (torch.randn_like(out), q.detach(), [k.detach() for k in keys], [v.detach() for v in values], out.detach(),
            lse, 2, 0.5)  # fmt: skip
    torch.library.opcheck(torch.ops.ackd_fast.ack_attention_backward.default, args)


def _through_op(q, keys, values, heads, scale=None):
    return torch.ops.ackd_fast.ack_attention(q, list(keys), list(values), heads, scale)[0]


@pytest.mark.parametrize("autocast", [False, True])
def test_eager_calls_skip_the_dispatcher_and_equal_the_op(autocast, device):
    """A plain eager call runs the kernels under an autograd.Function, not through the op: the same values and
    gradients, bit for bit, as the op and its registered autograd, under autocast too (fp16 on fp32 inputs: the
    output in fp16, the gradients in the inputs' fp32); without grad it returns a tensor with no grad_fn."""
    heads = 2
    q, keys, values = make_inputs(2, heads, 16, torch.float32, device, batch=1)
    grad = torch.randn(q.shape, dtype=torch.float64, device=device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=autocast):
        got, want = run(ops.ack_attention, q, keys, values, heads, grad), run(_through_op, q, keys, values, heads, grad)
        leaves = [x.detach().requires_grad_() for x in (q, *keys, *values)]
        out = ops.ack_attention(leaves[0], leaves[1:3], leaves[3:], heads)
        assert type(out.grad_fn).__name__ == "_AckAttentionFunctionBackward"
        with torch.no_grad():
            assert ops.ack_attention(leaves[0], leaves[1:3], leaves[3:], heads).grad_fn is None
    assert got[0].dtype == (torch.float16 if autocast else torch.float32)
    assert all(g.dtype == torch.float32 for g in got[1:])
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    # as through the op: the gradients' own gradient raises (never a silent zero)
    (dq,) = torch.autograd.grad(out.float().sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match=r"ack_attention_backward\.default but no autograd formula"):
        dq.sum().backward()


def test_modes_and_transforms_see_the_op(device):
    """Under a dispatch mode the call goes through `ackd_fast::ack_attention` and its backward op, so a mode that
    counts or rewrites ops sees them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    q, keys, values = make_inputs(1, 2, 16, torch.float32, device, batch=1)
    q.requires_grad_()
    with Seen() as seen:
        ops.ack_attention(q, keys, values, 2).sum().backward()
    assert {"ackd_fast.ack_attention.default", "ackd_fast.ack_attention_backward.default"} <= seen.ops


def test_module_compiles_with_fullgraph(device):
    """ACKAttention on the Triton backend compiles without graph breaks, forward and backward; values as eager."""
    torch._dynamo.reset()
    m = ACKAttention(32, [16, 32], heads=2, backend="triton").to(device)
    deep = torch.randn(1, 32, 6, 5, device=device, requires_grad=True)
    sources = [torch.randn(1, 16, 4, 7, device=device), torch.randn(1, 32, 3, 3, device=device)]
    # CPU: aot_eager traces the same graph (Dynamo, fake kernels, autograd) without inductor's C++ build.
    compiled = torch.compile(m, fullgraph=True, backend="inductor" if device.type == "cuda" else "aot_eager")
    got = compiled(deep, sources)
    (grad_got,) = torch.autograd.grad(got.sum(), deep)
    want = m(deep, sources)
    (grad_want,) = torch.autograd.grad(want.sum(), deep)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-5)


def test_module_runs_triton_and_matches_reference(device):
    deep = torch.randn(2, 16, 7, 5, device=device)
    sources = [torch.randn(2, 8, 5, 9, device=device), torch.randn(2, 16, 3, 4, device=device)]
    fast = ACKAttention(16, [8, 16], heads=2, backend="triton").to(device)
    slow = ACKAttention(16, [8, 16], heads=2, backend="reference").to(device)
    slow.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(deep, sources), slow(deep, sources), rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- dispatch


def test_auto_uses_sdpa_on_cpu_and_triton_on_cuda():
    assert ops.resolve_backend("ack_attention", "auto", "cpu", torch.float32) == "sdpa"
    if ops.TRITON_IMPORTABLE:
        assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.bfloat16) == "triton"
    # fp64 is not a Triton dtype: auto takes PyTorch's fused attention, forcing Triton says why it cannot.
    assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.float64) == "sdpa"
    with pytest.raises(RuntimeError, match=r"backend 'triton' for ack_attention cannot run on cuda: .*float64"):
        ops.resolve_backend("ack_attention", "triton", "cuda", torch.float64)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    message = "set TRITON_INTERPRET=1 before importing ackd_fast to run Triton kernels on CPU"
    with pytest.raises(RuntimeError, match=message):
        ops.resolve_backend("ack_attention", "triton", "cpu")
    q, keys, values = make_inputs(1, 1, 16, torch.float32, "cpu", batch=1)
    with pytest.raises(RuntimeError, match=message):
        ops.ack_attention(q, keys, values, 1)
    m = ACKAttention(8, [8], heads=2, backend="triton")
    with pytest.raises(RuntimeError, match=message):
        m(torch.randn(1, 8, 3, 3), [torch.randn(1, 8, 3, 3)])


def test_fp32_precision_follows_torch(monkeypatch):
    """The new fp32_precision API (what PyTorch recommends) and the legacy setters both reach the kernels, and
    the legacy getter, which raises once the new API was used, is never called."""
    from ackd_fast.kernels import ack_attention as kernels

    monkeypatch.setattr(kernels, "INTERPRET", False)
    matmul = torch.backends.cuda.matmul
    saved = (matmul.fp32_precision, torch.backends.fp32_precision)
    try:
        # full fp32 asked for: three tf32 passes on the tensor cores (fp32-accurate), never the FMA units
        for setting, want in (("ieee", "tf32x3"), ("tf32", "tf32")):
            matmul.fp32_precision = setting
            assert kernels._precision(torch.float32) == want
        matmul.fp32_precision = "none"
        for setting, want in (("tf32", "tf32"), ("ieee", "tf32x3"), ("none", "tf32x3")):
            torch.backends.fp32_precision = setting
            assert kernels._precision(torch.float32) == want
        for setting, want in (("highest", "tf32x3"), ("high", "tf32")):  # the legacy setter, after the new API
            torch.set_float32_matmul_precision(setting)
            assert kernels._precision(torch.float32) == want
        assert kernels._precision(torch.float16) == kernels._precision(torch.bfloat16) == "ieee"
    finally:
        matmul.fp32_precision, torch.backends.fp32_precision = saved


# ------------------------------------------------------------------------------------------- bad input


def _maps(c=8, dtype=torch.float32):
    return torch.randn(1, c, 3, 3, dtype=dtype), [torch.randn(1, c, 4, 2, dtype=dtype)]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda q, k: (q, k, k, 3), ValueError, r"heads=3 must divide the channels of q, got shape \(1, 8, 3, 3\)"),
        (lambda q, k: (q, k, k, 0), ValueError, "heads must be >= 1, got 0"),
        (
            lambda q, k: (q, k, [k[0].half()], 2),
            TypeError,
            r"values\[0\] has dtype torch.float16, expected torch.float32",
        ),
        (lambda q, k: (q, k, [k[0].to("meta")], 2), ValueError, r"values\[0\] is on meta, expected cpu like q"),
        (lambda q, k: (q, k * 5, k * 5, 2), ValueError, "keys must hold 1 to 4 feature maps, got 5"),
        (lambda q, k: (q, [], [], 2), ValueError, "keys must hold 1 to 4 feature maps, got 0"),
        (lambda q, k: (q, k, k + k, 2), ValueError, r"values holds 2 maps, expected one per key map \(1\)"),
        (lambda q, k: (q, [k[0][:, :, :0]], k, 2), ValueError, r"keys\[0\] must have a non-empty H x W map"),
        (lambda q, k: (q[:0], [k[0][:0]], [k[0][:0]], 2), ValueError, "q must have no empty dimension"),
        (lambda q, k: (q.double(), [k[0].double()], [k[0].double()], 2), TypeError, "q has dtype torch.float64"),
        (lambda q, k: (q, [k[0][:, :4]], k, 2), ValueError, r"keys\[0\] has 4 channels .* expected 8 like q"),
        (lambda q, k: (q, k, [k[0][:, :, :3]], 2), ValueError, r"values\[0\] has shape \(1, 8, 3, 2\), expected"),
        (
            lambda q, k: (torch.randn(1, 258, 2, 2), [torch.randn(1, 258, 2, 2)] * 1, [torch.randn(1, 258, 2, 2)], 2),
            ValueError,
            "head dim channels/heads = 258/2 = 129 must be at most 128",
        ),
        (lambda q, k: (q[0], k, k, 2), ValueError, r"q must have shape \(B, C, H, W\)"),
    ],
)
def test_bad_input_is_refused(make, error, message):
    q, keys = _maps()
    with pytest.raises(error, match=message):
        ops.ack_attention(*make(q, keys))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_memory_does_not_grow_with_query_times_key_tokens():
    """Forward and backward at 4096 queries x 12288 keys allocate O(tokens), never an Nq x Nkv score matrix."""
    heads, head_dim = 1, 64
    q = torch.randn(1, heads * head_dim, 64, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    keys = [torch.randn_like(q, requires_grad=True) for _ in range(3)]
    values = [torch.randn_like(q, requires_grad=True) for _ in range(3)]
    run(ops.ack_attention, q, keys, values, heads, torch.randn_like(q))  # autotune outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run(ops.ack_attention, q, keys, values, heads, torch.randn_like(q))
    extra = torch.cuda.max_memory_allocated() - base
    scores = 64 * 64 * 3 * 64 * 64 * 2  # one fp16 score matrix
    assert extra < 16 * q.numel() * q.element_size() < scores / 10, extra
