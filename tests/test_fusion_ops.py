"""ACK-F's fused ops in ackd_fast._C (ack_accumulate, instance_norm_act_residual): values and gradients against
the fp64 reference on fresh random inputs, every layout and dtype, every output element written, the schemas of the
ops and of their backward ops by opcheck and by bad input, autocast's promote rule, determinism across thread counts,
and on CUDA the channels_last norm and capture in a CUDA graph."""

import os

import pytest
import torch

from ackd_fast import ops, reference

pytestmark = pytest.mark.skipif(not ops.EXTENSION_LOADED, reason=f"ackd_fast._C did not load: {ops.EXTENSION_ERROR}")

f64 = torch.float64
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
CUDA_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every output starts as NaN, so an element a kernel does not write fails the finiteness checks."""
    previous = torch.ops.ackd_fast.set_poison_outputs(True)
    yield
    torch.ops.ackd_fast.set_poison_outputs(previous)


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as x, laid out as `kind`: contiguous, channels_last, or a non-contiguous view."""
    if kind == "contiguous":
        return x.contiguous()
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "sliced_channels":  # unit stride along W, gaps between channels, a storage offset
        b, c, h, w = x.shape
        big = torch.randn(b, c + 3, h, w, dtype=x.dtype, device=x.device)
        big[:, 2 : 2 + c] = x
        return big[:, 2 : 2 + c]
    if kind == "strided_width":  # no unit stride at all
        b, c, h, w = x.shape
        big = torch.randn(b, c, h, 2 * w, dtype=x.dtype, device=x.device)
        big[..., ::2] = x
        return big[..., ::2]
    raise AssertionError(kind)


LAYOUTS = ["contiguous", "channels_last", "sliced_channels", "strided_width"]


def close(got, want, dtype, terms=1):
    """got equals want to dtype's tolerance; `terms`: each value is a sum of that many, whose rounding grows like
    the square root of their count (the weight and bias gradients sum over every pixel of the batch)."""
    tol = TOLERANCE[dtype] * max(1.0, terms**0.5 / 8)
    assert torch.isfinite(got).all(), "an output element was not written"
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------- ack_accumulate

# (target size, source sizes): up- and down-sampling, identity, odd sizes, 1 to 4 sources.
ACCUMULATE_CASES = [
    ((9, 7), [(9, 7)]),
    ((7, 5), [(13, 11), (3, 4)]),
    ((13, 11), [(7, 5), (13, 11), (26, 22)]),
    ((8, 6), [(16, 12), (4, 3), (5, 9), (8, 6)]),
]


def accumulate_inputs(target, sizes, dtype, device, kind="contiguous", channels=5, batch=2):
    sources = [layout(torch.randn(batch, channels, *s, dtype=dtype, device=device), kind) for s in sizes]
    weights = torch.randn(len(sizes), dtype=dtype, device=device)
    return sources, weights


def check_accumulate(target, sizes, mode, dtype, device, kind, channels=5):
    sources, weights = accumulate_inputs(target, sizes, dtype, device, kind, channels=channels)
    for t in (*sources, weights):
        t.requires_grad_()
    out = ops.ack_accumulate(sources, weights, target, mode)
    exact = [a.detach().double().requires_grad_() for a in (*sources, weights)]
    want = reference.ack_accumulate(exact[:-1], exact[-1], target, mode)
    close(out, want, dtype)
    assert out.dtype == dtype and out.shape == (2, channels, *target)
    assert out.is_contiguous(memory_format=ops._output_format(sources[0]))
    # One incoming gradient for both, rounded to dtype first: with the fp64 one the reference would see values the
    # kernel cannot, and a sum of a few hundred rounding errors of 2^-9 leaves bf16's tolerance now and then.
    grad = torch.randn_like(want).to(dtype).double()
    got = torch.autograd.grad(out, (*sources, weights), grad.to(dtype))
    expected = torch.autograd.grad(want, exact, grad)
    for g, e, a in zip(got, expected, (*sources, weights), strict=True):
        close(g, e, dtype)
        assert g.shape == a.shape


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
@pytest.mark.parametrize(("target", "sizes"), ACCUMULATE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulate_matches_reference(mode, target, sizes, dtype):
    check_accumulate(target, sizes, mode, dtype, "cpu", "contiguous")


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
@pytest.mark.parametrize("kind", LAYOUTS[1:])
def test_accumulate_any_layout(mode, kind):
    check_accumulate((7, 6), [(13, 11), (7, 6), (4, 3)], mode, torch.float64, "cpu", kind)


def test_accumulate_mixed_layouts():
    sources, weights = accumulate_inputs((7, 6), [(13, 11), (7, 6), (4, 3)], f64, "cpu")
    mixed = [layout(sources[0], "channels_last"), layout(sources[1], "strided_width"), sources[2]]
    close(ops.ack_accumulate(mixed, weights, (7, 6)), reference.ack_accumulate(sources, weights, (7, 6)), f64)
    mixed = [sources[0], layout(sources[1], "channels_last"), layout(sources[2], "sliced_channels")]
    close(
        ops.ack_accumulate(mixed, weights, (7, 6), "area"),
        reference.ack_accumulate(sources, weights, (7, 6), "area"),
        f64,
    )


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
def test_accumulate_gradcheck(mode):
    sources, weights = accumulate_inputs((5, 4), [(7, 9), (3, 2), (5, 4)], f64, "cpu", channels=2, batch=1)
    for t in (*sources, weights):
        t.requires_grad_()
    fn = lambda a, b, c, w: ops.ack_accumulate([a, b, c], w, (5, 4), mode)
    assert torch.autograd.gradcheck(fn, (*sources, weights))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_accumulate_opcheck(kind):
    sources, weights = accumulate_inputs((5, 4), [(7, 9), (3, 2)], torch.float32, "cpu", kind, channels=3)
    for t in (*sources, weights):
        t.requires_grad_()
    for mode in reference.RESIZE_MODES:
        torch.library.opcheck(torch.ops.ackd_fast.ack_accumulate.default, (sources, weights, [5, 4], mode))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulate_backward_opcheck(kind, dtype):
    sources, weights = accumulate_inputs((5, 4), [(7, 9), (3, 2)], dtype, "cpu", kind, channels=3)
    grad = layout(torch.randn(2, 3, 5, 4, dtype=dtype), kind)
    for mode in reference.RESIZE_MODES:
        torch.library.opcheck(torch.ops.ackd_fast.ack_accumulate_backward.default, (grad, sources, weights, mode))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_accumulate_half_precision_on_cpu(dtype):
    """fp16/bf16 on CPU (computed in fp32): values and gradients against fp64, as on CUDA."""
    check_accumulate((7, 5), [(13, 11), (3, 4), (7, 5)], "bilinear", dtype, "cpu", "channels_last")
    check_accumulate((7, 5), [(13, 11), (3, 4)], "area", dtype, "cpu", "contiguous")


# ------------------------------------------------------------- the CUDA kernels' code, emulated on the CPU
#
# ackd_fast._C's private ops _emulated_cuda_ack_accumulate(_backward) run the CUDA kernels' bodies
# (csrc/accumulate_tiles.h) block by block on the CPU, with the variants the CUDA launcher picks (vectors of 16 bytes
# where the layout allows, int32 or int64 offsets, reader tables with or without weights). They raise on a
# misaligned vector access and on a write outside an output. So these check the GPU code without a GPU.

# Built with the CUDA kernels (setup.py: a CPU-only build has nothing to emulate). CI's build must have them
# (ACKD_FAST_EXPECT_CUDA_BUILD=1): there these tests never skip.
EMULATION_BUILT = ops.EXTENSION_LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(
    "ackd_fast::_emulated_cuda_ack_accumulate", "CPU"
)
emulated = pytest.mark.skipif(
    not EMULATION_BUILT and os.environ.get("ACKD_FAST_EXPECT_CUDA_BUILD") != "1",
    reason="ackd_fast._C was built without its CUDA kernels, so without their emulation",
)

# (target, source sizes): the cases above, plus widths that are multiples of 8 (planes take 16-byte vectors) and a
# source far smaller than the target (wide reader ranges).
EMULATED_CASES = [*ACCUMULATE_CASES, ((6, 40), [(6, 40), (3, 16), (12, 80)]), ((9, 64), [(2, 3)])]
EMULATED_LAYOUTS = [*LAYOUTS, "channels_last_offset"]


def emulated_layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """As layout(), plus channels_last_offset: channels_last whose first element sits one element past a 16-byte
    boundary, so vector loads must not be used."""
    if kind != "channels_last_offset":
        return layout(x, kind)
    b, c, h, w = x.shape
    big = torch.randn(b, c + 8, h, w, dtype=x.dtype).contiguous(memory_format=torch.channels_last)
    big[:, 1 : 1 + c] = x
    return big[:, 1 : 1 + c]


def check_emulated(target, sizes, mode, dtype, kind, channels, grid=0, wide_index=False, weight_table=True):
    sources = [emulated_layout(torch.randn(2, channels, *s, dtype=dtype), kind) for s in sizes]
    weights = torch.randn(2 * len(sizes), dtype=dtype)[::2]  # a strided view: read through its stride
    out = torch.ops.ackd_fast._emulated_cuda_ack_accumulate(sources, weights, list(target), mode, wide_index)
    exact = [a.detach().double().requires_grad_() for a in (*sources, weights)]
    want = reference.ack_accumulate(exact[:-1], exact[-1], target, mode)
    close(out, want, dtype)
    assert out.shape == (2, channels, *target) and out.is_contiguous(memory_format=ops._output_format(sources[0]))
    grad = emulated_layout(torch.randn_like(want).to(dtype), kind)
    got_sources, got_weights = torch.ops.ackd_fast._emulated_cuda_ack_accumulate_backward(
        grad, sources, weights, mode, grid, wide_index, weight_table
    )
    expected = torch.autograd.grad(want, exact, grad.double())
    terms = want.numel()  # a weight's gradient <resize(grad), source> sums over every output element
    for g, e, a in zip((*got_sources, got_weights), expected, (*sources, weights), strict=True):
        close(g, e, dtype, terms if g is got_weights else 1)
        assert g.shape == a.shape and g.dtype == a.dtype
    for g, a in zip(got_sources, sources, strict=True):
        assert g.is_contiguous(memory_format=ops._output_format(a))


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
@pytest.mark.parametrize(("target", "sizes"), EMULATED_CASES)
@pytest.mark.parametrize("kind", EMULATED_LAYOUTS)
@emulated
def test_cuda_kernels_emulated(mode, target, sizes, kind):
    """fp32 at 5 channels (scalar accesses) and 8 (4-wide vectors along C for channels_last), fp64 at 6 (2-wide)."""
    for dtype, channels in ((torch.float32, 5), (torch.float32, 8), (torch.float64, 6)):
        check_emulated(target, sizes, mode, dtype, kind, channels)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@emulated
def test_cuda_kernels_emulated_half_precision(dtype, kind):
    """8-wide vectors of fp16/bf16, accumulated in fp32 (the host's conversions are exact, unlike the interpreter's)."""
    for target, sizes in EMULATED_CASES[-2:]:
        check_emulated(target, sizes, "bilinear", dtype, kind, 16)


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "strided_width"])
@emulated
def test_cuda_kernels_emulated_variants(mode, kind):
    """The variants the launcher picks for large maps or extreme ratios, forced at small sizes: int64 offsets,
    reader tables without weights, and fewer blocks than tiles (each block walks several tiles of several sources)."""
    target, sizes = (13, 11), [(7, 5), (13, 11), (26, 22), (2, 3)]
    check_emulated(target, sizes, mode, torch.float32, kind, 8, grid=3, wide_index=True, weight_table=False)
    check_emulated(target, sizes, mode, torch.float64, kind, 5, grid=1, wide_index=False, weight_table=True)
    check_emulated(target, sizes, mode, torch.float32, kind, 8, grid=7, wide_index=True, weight_table=True)


@emulated
def test_cuda_kernels_emulated_mixed_layouts():
    sources = [torch.randn(2, 8, *s, dtype=f64) for s in [(13, 11), (7, 6), (4, 3)]]
    weights = torch.randn(3, dtype=f64)
    mixed = [layout(sources[0], "channels_last"), layout(sources[1], "strided_width"), sources[2]]
    grad = torch.randn(2, 8, 7, 6, dtype=f64)
    out = torch.ops.ackd_fast._emulated_cuda_ack_accumulate(mixed, weights, [7, 6], "bilinear")
    close(out, reference.ack_accumulate(sources, weights, (7, 6)), f64)
    got_sources, got_weights = torch.ops.ackd_fast._emulated_cuda_ack_accumulate_backward(grad, mixed, weights,
                                                                                          "bilinear")  # fmt: skip
    want_sources, want_weights = torch.ops.ackd_fast.ack_accumulate_backward(grad, sources, weights, "bilinear")
    for g, e in zip((*got_sources, got_weights), (*want_sources, want_weights), strict=True):
        close(g, e, f64)


# Three sources of 2 x 64 x ~33 x 29: the weight gradient's sum spans many chunks.
DETERMINISM_SIZES = [(33, 29), (17, 15), (65, 57)]


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_accumulate_backward_does_not_depend_on_the_thread_count(kind):
    sources, weights = accumulate_inputs((33, 29), DETERMINISM_SIZES, torch.float32, "cpu", kind, channels=64)
    grad = layout(torch.randn(2, 64, 33, 29), kind)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.ops.ackd_fast.ack_accumulate_backward(grad, sources, weights, "bilinear"))
    finally:
        torch.set_num_threads(threads)
    (one_sources, one_weights), (two_sources, two_weights) = results
    assert torch.equal(one_weights, two_weights), (one_weights - two_weights).abs().max()
    for a, b in zip(one_sources, two_sources, strict=True):
        assert torch.equal(a, b)
    # ... and the weight gradient is accurate to fp32 over its ~120k terms: the chunk sums are fp64.
    exact = [a.double() for a in sources]
    want = torch.stack([(grad.double() * reference.resize(a, (33, 29))).sum() for a in exact])
    tol = TOLERANCE[torch.float32] * want.abs().max().item()
    torch.testing.assert_close(one_weights.double(), want, rtol=0, atol=tol)


def test_norm_backward_does_not_depend_on_the_thread_count():
    x, weight, bias, _ = norm_inputs((2, 70, 19, 23), torch.float32, "cpu", "channels_last", True, False)
    y, mean, rstd = torch.ops.ackd_fast.instance_norm_act_residual(x, weight, bias, None, "relu", 1e-5)
    grad = torch.randn_like(y)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(
                torch.ops.ackd_fast.instance_norm_act_residual_backward(grad, x, mean, rstd, weight, bias, "relu")
            )
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ instance_norm_act_residual


def norm_inputs(shape, dtype, device, kind, affine, with_residual):
    x = layout(torch.randn(shape, dtype=dtype, device=device) * 3 + 1, kind)
    weight = torch.randn(shape[1], dtype=dtype, device=device) if affine else None
    bias = torch.randn(shape[1], dtype=dtype, device=device) if affine else None
    residual = layout(torch.randn(shape, dtype=dtype, device=device), kind) if with_residual else None
    return x, weight, bias, residual


def check_norm(shape, dtype, device, kind, affine, with_residual, act, param_dtype=None):
    x, weight, bias, residual = norm_inputs(shape, dtype, device, kind, affine, with_residual)
    if affine and param_dtype is not None:  # fp32 parameters on half-precision maps, as under autocast
        weight, bias = weight.to(param_dtype), bias.to(param_dtype)
    inputs = [t.requires_grad_() if t is not None else None for t in (x, weight, bias, residual)]
    out = ops.instance_norm_act_residual(*inputs, act=act, eps=1e-3)
    exact = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    want = reference.instance_norm_act_residual(*exact, act=act, eps=1e-3)
    close(out, want, dtype)
    assert out.is_contiguous(memory_format=ops._output_format(x))
    live = [(t, e) for t, e in zip(inputs, exact, strict=True) if t is not None]
    grad = torch.randn_like(want).to(dtype).double()  # rounded first, as in check_accumulate
    got = torch.autograd.grad(out, [t for t, _ in live], grad.to(dtype))
    expected = torch.autograd.grad(want, [e for _, e in live], grad)
    for g, e, (t, _) in zip(got, expected, live, strict=True):
        close(g, e, dtype)
        assert g.dtype == t.dtype and g.shape == t.shape


def check_norm_emulated(shape, dtype, kind, affine, with_residual, act, param_dtype=None, wide_index=False):
    """The CUDA kernels' code on the CPU (_emulated_cuda_instance_norm_act_residual and its backward) against the
    fp64 reference: y, the statistics, and the gradients of x, weight and bias."""
    while True:
        x, weight, bias, residual = norm_inputs(shape, dtype, "cpu", "contiguous", affine, with_residual)
        if affine:
            weight = torch.randn(2 * shape[1], dtype=param_dtype or dtype)[::2]  # strided, read through its stride
            bias = torch.randn(shape[1], dtype=param_dtype or dtype)
        # No pre-activation within fp32's rounding (~1e-6 here) of the ReLU's kink, where the kernels and the fp64
        # reference may take different sides: draw again (a draw of 10^5 elements has one below 1e-5 about half
        # the time).
        params = [None if p is None else p.double() for p in (weight, bias)]
        z = reference.instance_norm_act_residual(x.double(), *params, act="none", eps=1e-3)
        if act != "relu" or z.abs().min() > 1e-5:
            break
    x = emulated_layout(x, kind)
    residual = None if residual is None else emulated_layout(residual, kind)
    y, mean, rstd = torch.ops.ackd_fast._emulated_cuda_instance_norm_act_residual(
        x, weight, bias, residual, act, 1e-3, wide_index
    )
    live = [t for t in (x, weight, bias) if t is not None]
    exact = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    want = reference.instance_norm_act_residual(*exact, None if residual is None else residual.double(), act=act,
                                                eps=1e-3)  # fmt: skip
    close(y, want, dtype)
    assert y.is_contiguous(memory_format=ops._output_format(x))
    xd = x.double()
    close(mean, xd.mean((2, 3)), dtype)
    close(rstd, (xd.var((2, 3), unbiased=False) + 1e-3).rsqrt(), dtype)
    grad = emulated_layout(torch.randn_like(want).to(dtype), kind)
    gx, gw, gb = torch.ops.ackd_fast._emulated_cuda_instance_norm_act_residual_backward(
        grad, x, mean, rstd, weight, bias, act, wide_index
    )
    # the reference's grad in its output's layout: torch 2.14's F.instance_norm backward on CPU returns wrong values
    # for a channels_last grad of a contiguous output (checked against finite differences)
    expected = torch.autograd.grad(want, [e for e in exact if e is not None], grad.double().contiguous())
    got = [gx] + ([gw, gb] if affine else [])
    terms = shape[0] * shape[2] * shape[3]
    for g, e, t in zip(got, expected, live, strict=True):
        close(g, e, dtype, 1 if g is gx else terms)
        assert g.dtype == t.dtype and g.shape == t.shape
    assert gx.is_contiguous(memory_format=ops._output_format(x))


@pytest.mark.parametrize("kind", EMULATED_LAYOUTS)
@pytest.mark.parametrize(("affine", "with_residual", "act"), [(True, True, "relu"), (False, False, "none"),
                                                              (True, False, "none")])  # fmt: skip
@emulated
def test_norm_cuda_kernels_emulated(kind, affine, with_residual, act):
    """Planes: 13 x 11 (scalar, cached), 8 x 8 (4-wide packs) and 67 x 63 (past the register cache); channels_last:
    75 channels (scalar, 3 chunks of pixels), 76 (4-wide packs, a partial block of channels) and 300 (two full
    blocks of 128 channels and a partial one, 2 chunks)."""
    shapes = [(2, 5, 13, 11), (2, 3, 8, 8), (1, 2, 67, 63), (2, 75, 23, 29), (2, 76, 23, 29), (1, 300, 9, 31)]
    for shape in shapes:
        for dtype in (torch.float32, torch.float64):
            check_norm_emulated(shape, dtype, kind, affine, with_residual, act)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@emulated
def test_norm_cuda_kernels_emulated_half_precision(dtype, kind):
    """8-wide packs of fp16/bf16 maps, with parameters in their dtype and in fp32 (as under autocast)."""
    for param_dtype in (None, torch.float32):
        check_norm_emulated((2, 16, 8, 8), dtype, kind, True, True, "relu", param_dtype)


@emulated
def test_norm_cuda_kernels_emulated_wide_offsets():
    check_norm_emulated((2, 12, 9, 7), torch.float32, "channels_last", True, True, "relu", wide_index=True)


@pytest.mark.parametrize("act", reference.ACTIVATIONS)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_matches_reference(act, affine, with_residual, dtype):
    check_norm((3, 5, 13, 11), dtype, "cpu", "contiguous", affine, with_residual, act)


@pytest.mark.parametrize("kind", LAYOUTS[1:])
def test_norm_any_layout(kind):
    check_norm((2, 4, 7, 5), f64, "cpu", kind, True, True, "relu")


@pytest.mark.parametrize("act", reference.ACTIVATIONS)
def test_norm_channels_last_across_channel_blocks(act):
    """More channels than one CPU task takes (64), and a count that is no multiple of the vector width."""
    check_norm((2, 75, 5, 3), torch.float32, "cpu", "channels_last", True, True, act)


@pytest.mark.parametrize("shape", [(1, 16, 67, 129), (2, 70, 40, 41), (1, 3, 300, 7)])
def test_norm_channels_last_across_row_chunks(shape):
    """Maps large enough that the CPU forward splits each (sample, channel block) into row chunks (16K elements and
    up, at most 16): the chunks' partial sums must add up to the whole map's statistics. Forward only: the
    backward's sums over these maps are checked elsewhere, with bounds scaled to their length."""
    x, weight, bias, residual = norm_inputs(shape, torch.float64, "cpu", "channels_last", True, True)
    want = reference.instance_norm_act_residual(x, weight, bias, residual, act="relu", eps=1e-5)
    for dtype in (torch.float32, torch.float64):
        args = [t.to(dtype) for t in (x, weight, bias, residual)]
        y, mean, rstd = torch.ops.ackd_fast.instance_norm_act_residual(*args, "relu", 1e-5)
        assert y.is_contiguous(memory_format=torch.channels_last)
        close(y, want, dtype)
        close(mean, x.mean((2, 3)), dtype)
        close(rstd, (x.var((2, 3), correction=0) + 1e-5).rsqrt(), dtype)


def test_norm_forward_does_not_depend_on_the_thread_count():
    x, weight, bias, residual = norm_inputs((2, 24, 61, 67), torch.float32, "cpu", "channels_last", True, True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.ops.ackd_fast.instance_norm_act_residual(x, weight, bias, residual, "relu", 1e-5))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ autocast


def test_norm_residual_of_wider_dtype_promotes_under_autocast_only():
    """Autocast's promote rule: a bf16 map beside an fp32 skip path gives fp32, as `norm(x) + residual` does."""
    x, weight, bias, residual = norm_inputs((2, 3, 5, 4), torch.float32, "cpu", "contiguous", True, True)
    with pytest.raises(TypeError, match="residual has dtype Double, expected Float like x"):
        ops.instance_norm_act_residual(x, weight, bias, residual.double(), act="relu")
    x16 = x.bfloat16().requires_grad_()
    residual.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.instance_norm_act_residual(x16, weight, bias, residual, act="relu")
        want = reference.instance_norm_act_residual(x16, weight, bias, residual, act="relu")
    assert out.dtype == want.dtype == torch.float32
    close(out, want, torch.bfloat16)
    grads = torch.autograd.grad(out.sum(), (x16, residual))
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32]
    for g, e in zip(grads, torch.autograd.grad(want.sum(), (x16, residual)), strict=True):
        close(g, e, torch.bfloat16)


def test_accumulate_promotes_mixed_sources_under_autocast_only():
    """An fp32 source beside a bf16 one (an align conv's output under autocast) is accumulated in fp32."""
    sources, weights = accumulate_inputs((7, 6), [(13, 11), (7, 6), (4, 3)], torch.float32, "cpu")
    mixed = [sources[0], sources[1].bfloat16(), sources[2].bfloat16()]
    with pytest.raises(TypeError, match=r"sources\[1\] has dtype BFloat16, expected Float like sources\[0\]"):
        ops.ack_accumulate(mixed, weights, (7, 6))
    for t in (*mixed, weights):
        t.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.ack_accumulate(mixed, weights, (7, 6))
        want = reference.ack_accumulate(mixed, weights, (7, 6))
    assert out.dtype == want.dtype == torch.float32
    # The reference resizes the bf16 sources in bf16 (CPU autocast leaves interpolate alone), the op in fp32: both
    # are held against the fp64 composition of the same values (the bf16 reference's own rounding of the weights'
    # gradient, a sum over every pixel, sometimes passed the tolerance on its own).
    exact = [t.detach().double().requires_grad_() for t in (*mixed, weights)]
    want64 = reference.ack_accumulate(exact[:3], exact[3], (7, 6))
    close(out, want64, torch.bfloat16)
    grads = torch.autograd.grad(out.sum(), (*mixed, weights))
    assert [g.dtype for g in grads] == [torch.float32, torch.bfloat16, torch.bfloat16, torch.float32]
    for g, e in zip(grads, torch.autograd.grad(want64.sum(), exact), strict=True):
        close(g, e, torch.bfloat16)


def test_norm_gradcheck():
    x, weight, bias, residual = norm_inputs((2, 3, 5, 4), f64, "cpu", "contiguous", True, True)
    for t in (x, weight, bias, residual):
        t.requires_grad_()
    fn = lambda *t: ops.instance_norm_act_residual(*t, act="relu")
    assert torch.autograd.gradcheck(fn, (x, weight, bias, residual))


def test_norm_opcheck():
    for affine, with_residual, act in [(True, True, "relu"), (False, False, "none"), (True, False, "none")]:
        x, weight, bias, residual = norm_inputs((2, 3, 5, 4), torch.float32, "cpu", "contiguous", affine, with_residual)
        for t in (x, weight, bias, residual):
            if t is not None:
                t.requires_grad_()
        torch.library.opcheck(
            torch.ops.ackd_fast.instance_norm_act_residual.default, (x, weight, bias, residual, act, 1e-5)
        )


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_backward_opcheck(kind, dtype):
    for affine, act in [(True, "relu"), (False, "none")]:
        x, weight, bias, _ = norm_inputs((2, 3, 5, 4), dtype, "cpu", kind, affine, False)
        if affine:  # fp32 parameters beside bf16 maps, as under autocast
            weight, bias = weight.float(), bias.float()
        _, mean, rstd = torch.ops.ackd_fast.instance_norm_act_residual(x, weight, bias, None, act, 1e-5)
        grad = layout(torch.randn(x.shape, dtype=dtype), kind)
        torch.library.opcheck(
            torch.ops.ackd_fast.instance_norm_act_residual_backward.default, (grad, x, mean, rstd, weight, bias, act)
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_norm_half_precision_on_cpu(dtype, kind):
    """fp16/bf16 on CPU (computed in fp32, statistics fp32), fp32 parameters as under autocast."""
    check_norm((2, 6, 9, 7), dtype, "cpu", kind, True, True, "relu", param_dtype=torch.float32)


# ------------------------------------------------------------------------------------------- both, compiled


def test_ops_compile_without_graph_breaks():
    def fusion_tail(a, b, w, weight, bias, deep):
        acc = ops.ack_accumulate([a, b], w, deep.shape[-2:], "bilinear")
        return ops.instance_norm_act_residual(acc, weight, bias, deep, act="none")

    compiled = torch.compile(fusion_tail, backend="aot_eager", fullgraph=True)
    args = [torch.randn(2, 3, 9, 7), torch.randn(2, 3, 4, 3), torch.randn(2), torch.randn(3), torch.randn(3)]
    args.append(torch.randn(2, 3, 6, 5))
    for t in args:
        t.requires_grad_()
    out = compiled(*args)
    eager = fusion_tail(*args)
    torch.testing.assert_close(out, eager)
    for g, e in zip(torch.autograd.grad(out.sum(), args), torch.autograd.grad(eager.sum(), args), strict=True):
        torch.testing.assert_close(g, e)


# -------------------------------------------------------------------------------------------------- bad input

BAD_ACCUMULATE = [
    (lambda: ([], torch.ones(0), (4, 4), "bilinear"), ValueError, "sources must hold 1 to 4 maps, got 0"),
    (lambda: ([torch.randn(1, 2, 3, 3)] * 5, torch.ones(5), (4, 4), "bilinear"), ValueError, "got 5"),
    (
        lambda: ([torch.randn(1, 2, 3, 3), torch.randn(1, 3, 3, 3)], torch.ones(2), (4, 4), "bilinear"),
        ValueError,
        r"sources\[1\] has shape \[1, 3, 3, 3\], expected batch 1 and channels 2 like sources\[0\]",
    ),
    (
        lambda: ([torch.randn(1, 2, 3, 3), torch.randn(2, 2, 3, 3)], torch.ones(2), (4, 4), "bilinear"),
        ValueError,
        r"sources\[1\] has shape \[2, 2, 3, 3\], expected batch 1",
    ),
    (
        lambda: ([torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)], torch.ones(3), (4, 4), "bilinear"),
        ValueError,
        r"weights has shape \[3\], expected \(2,\)",
    ),
    (
        lambda: ([torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3).double()], torch.ones(2), (4, 4), "bilinear"),
        TypeError,
        r"sources\[1\] has dtype Double, expected Float like sources\[0\]",
    ),
    (lambda: ([torch.randn(1, 2, 3, 3)], torch.ones(1), (4, 4), "bicubic"), ValueError, "mode must be one of"),
    (
        lambda: ([torch.randn(2, 3, 3)], torch.ones(1), (4, 4), "bilinear"),
        ValueError,
        "must have shape \\(B, C, H, W\\)",
    ),
    (lambda: ([torch.randn(1, 2, 0, 3)], torch.ones(1), (4, 4), "bilinear"), ValueError, "must not be empty"),
    (lambda: ([torch.randn(1, 2, 3, 3)], torch.ones(1), (0, 4), "bilinear"), ValueError, "size must be two positive"),
]


@pytest.mark.parametrize(("args", "error", "message"), BAD_ACCUMULATE)
def test_accumulate_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        ops.ack_accumulate(*args())


BAD_NORM = [
    (lambda: (torch.randn(1, 2, 3, 3), None, None, None, "gelu"), ValueError, "act must be one of 'relu', 'none'"),
    (lambda: (torch.randn(1, 2, 3, 3), torch.ones(3), None, None, "relu"), ValueError, r"weight has shape \[3\]"),
    (lambda: (torch.randn(1, 2, 3, 3), None, torch.ones(1), None, "relu"), ValueError, r"bias has shape \[1\]"),
    (
        lambda: (torch.randn(1, 2, 3, 3), None, None, torch.randn(1, 2, 3, 4), "relu"),
        ValueError,
        r"residual has shape \[1, 2, 3, 4\], expected \[1, 2, 3, 3\] like x",
    ),
    (
        lambda: (torch.randn(1, 2, 3, 3), None, None, torch.ones(1, 2, 3, 3, dtype=torch.long), "relu"),
        TypeError,
        "residual has dtype Long, expected Float like x",
    ),
    (lambda: (torch.arange(9.0).view(1, 1, 9), None, None, None, "relu"), ValueError, "x must have shape"),
]


@pytest.mark.parametrize(("args", "error", "message"), BAD_NORM)
def test_norm_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        ops.instance_norm_act_residual(*args())


def _accumulate_backward_args(grad_shape=(2, 5, 7, 6)):
    sources, weights = accumulate_inputs((7, 6), [(13, 11), (4, 3)], torch.float32, "cpu")
    return torch.randn(grad_shape), sources, weights, "bilinear"


BAD_ACCUMULATE_BACKWARD = [
    (lambda: _accumulate_backward_args((3, 5, 7, 6)), ValueError, r"grad has shape \[3, 5, 7, 6\], expected batch 2"),
    (lambda: _accumulate_backward_args((2, 9, 7, 6)), ValueError, r"grad has shape \[2, 9, 7, 6\], .* channels 5"),
    (lambda: _accumulate_backward_args((2, 5, 7)), ValueError, r"grad must have shape \(B, C, H, W\)"),
    (
        lambda: (lambda g, s, w, m: (g.double(), s, w, m))(*_accumulate_backward_args()),
        TypeError,
        "grad has dtype Double, expected Float like sources",
    ),
]


@pytest.mark.parametrize(("args", "error", "message"), BAD_ACCUMULATE_BACKWARD)
def test_accumulate_backward_bad_input(args, error, message):
    """A public schema: a grad that does not match the forward is refused, never read or written out of bounds."""
    with pytest.raises(error, match=message):
        torch.ops.ackd_fast.ack_accumulate_backward(*args())


def _norm_backward_args(grad_shape=None, stats_shape=None, stats_dtype=None):
    x, weight, bias, _ = norm_inputs((2, 3, 5, 4), torch.float32, "cpu", "contiguous", True, False)
    _, mean, rstd = torch.ops.ackd_fast.instance_norm_act_residual(x, weight, bias, None, "relu", 1e-5)
    grad = torch.randn(grad_shape or x.shape)
    if stats_shape is not None:
        mean, rstd = mean.flatten()[: stats_shape[0]].reshape(stats_shape), rstd
    if stats_dtype is not None:
        rstd = rstd.to(stats_dtype)
    return grad, x, mean, rstd, weight, bias, "relu"


BAD_NORM_BACKWARD = [
    (lambda: _norm_backward_args(grad_shape=(2, 3, 5, 5)), ValueError, r"grad has shape \[2, 3, 5, 5\], expected"),
    (lambda: _norm_backward_args(grad_shape=(4, 3, 5, 4)), ValueError, r"grad has shape \[4, 3, 5, 4\], expected"),
    (lambda: _norm_backward_args(stats_shape=(1,)), ValueError, r"mean has shape \[1\], expected \(2, 3\)"),
    (lambda: _norm_backward_args(stats_dtype=torch.float64), TypeError, "rstd has dtype Double, expected Float"),
]


@pytest.mark.parametrize(("args", "error", "message"), BAD_NORM_BACKWARD)
def test_norm_backward_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        torch.ops.ackd_fast.instance_norm_act_residual_backward(*args())


# ------------------------------------------------------------------------------------------------------- CUDA

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
@pytest.mark.parametrize(("target", "sizes"), ACCUMULATE_CASES[2:] + EMULATED_CASES[-2:])
def test_accumulate_cuda(dtype, kind, mode, target, sizes):
    """At 5 channels (scalar accesses) and 16 (whole 16-byte vectors along C for channels_last)."""
    check_accumulate(target, sizes, mode, dtype, "cuda", kind)
    check_accumulate(target, sizes, mode, dtype, "cuda", kind, channels=16)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize(("affine", "with_residual", "act"), [(True, True, "relu"), (False, False, "none")])
def test_norm_cuda(dtype, kind, affine, with_residual, act):
    check_norm((2, 6, 13, 11), dtype, "cuda", kind, affine, with_residual, act)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize(("affine", "with_residual", "act"), [(True, True, "relu"), (False, False, "none")])
def test_norm_cuda_channels_last_across_chunks_and_channel_blocks(dtype, affine, with_residual, act):
    """The channels_last kernels: 75 channels (two full warps of channels and a partial one), 23 x 29 = 667 pixels
    (two full chunks of 256 and a partial one), so every combination of partial tiles is exercised."""
    check_norm((2, 75, 23, 29), dtype, "cuda", "channels_last", affine, with_residual, act)


@pytest.mark.cuda
@requires_cuda
def test_norm_cuda_channels_last_large_plane_statistics():
    """Chunk statistics combined across 64 chunks of a plane with a large mean: the combination stays accurate."""
    x = (torch.randn(1, 40, 128, 128, device="cuda") * 0.5 + 20).to(memory_format=torch.channels_last)
    out = ops.instance_norm_act_residual(x, act="none")
    want = reference.instance_norm_act_residual(x.double(), act="none")
    close(out, want, torch.float32)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_ops_capture_in_a_cuda_graph_at_a_new_size(kind):
    """No op copies from the host or waits for it, so a CUDA graph captures forward and backward at a size never run
    before, and its replay gives the eager results."""
    size = (int(torch.randint(20, 40, ())), int(torch.randint(20, 40, ())))
    shapes = [(size[0] + 7, size[1] + 3), (size[0] // 3 + 1, size[1] // 2 + 1)]
    sources, weights = accumulate_inputs(size, shapes, torch.float32, "cuda", kind, channels=6)
    norm_weight, norm_bias = torch.randn(6, device="cuda"), torch.randn(6, device="cuda")
    deep = layout(torch.randn(2, 6, *size, device="cuda"), kind)
    leaves = [*sources, weights, norm_weight, norm_bias, deep]
    for t in leaves:
        t.requires_grad_()

    def step():
        acc = ops.ack_accumulate(sources, weights, size, "bilinear")
        out = ops.instance_norm_act_residual(acc, norm_weight, norm_bias, deep, act="relu")
        return (out, *torch.autograd.grad(out.square().sum(), leaves))

    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, step(), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_promotes_mixed_inputs(dtype):
    sources, weights = accumulate_inputs((7, 6), [(13, 11), (7, 6)], torch.float32, "cuda", "channels_last")
    mixed = [sources[0].to(dtype), sources[1]]
    with torch.autocast("cuda", dtype=dtype):
        out = ops.ack_accumulate(mixed, weights, (7, 6))
        want = reference.ack_accumulate(mixed, weights, (7, 6))
        normed = ops.instance_norm_act_residual(out.to(dtype), residual=sources[1])
    assert out.dtype == want.dtype == torch.float32 and normed.dtype == torch.float32
    close(out, want, torch.float32)


@pytest.mark.cuda
@requires_cuda
def test_norm_cuda_fp32_params_on_bf16_maps():
    check_norm((2, 6, 9, 7), torch.bfloat16, "cuda", "contiguous", True, True, "relu", param_dtype=torch.float32)


@pytest.mark.cuda
@requires_cuda
def test_cuda_opcheck():
    sources, weights = accumulate_inputs((5, 4), [(7, 9), (3, 2)], torch.float32, "cuda", "channels_last", channels=3)
    torch.library.opcheck(torch.ops.ackd_fast.ack_accumulate.default, (sources, weights, [5, 4], "bilinear"))
    x, weight, bias, residual = norm_inputs((2, 3, 5, 4), torch.float16, "cuda", "contiguous", True, True)
    torch.library.opcheck(
        torch.ops.ackd_fast.instance_norm_act_residual.default, (x, weight, bias, residual, "relu", 1e-5)
    )


@pytest.mark.cuda
@requires_cuda
def test_cuda_rejects_mixed_devices():
    with pytest.raises(ValueError, match=r"sources\[1\] is on cpu, expected cuda:0"):
        ops.ack_accumulate(
            [torch.randn(1, 2, 3, 3, device="cuda"), torch.randn(1, 2, 3, 3)], torch.ones(2, device="cuda"), (4, 4)
        )
    with pytest.raises(ValueError, match="residual is on cpu, expected cuda:0"):
        ops.instance_norm_act_residual(torch.randn(1, 2, 3, 3, device="cuda"), residual=torch.randn(1, 2, 3, 3))
