"""The C++/CUDA extension ackd_fast._C: it loads, its op matches the reference, its schema holds up."""

import os

import pytest
import torch

from ackd_fast import ops, reference

pytestmark = pytest.mark.skipif(not ops.EXTENSION_LOADED, reason=f"ackd_fast._C did not load: {ops.EXTENSION_ERROR}")


def test_extension_loads_and_registers_its_ops():
    assert ops.EXTENSION_LOADED, ops.EXTENSION_ERROR
    assert hasattr(torch.ops.ackd_fast, "weighted_sum") and hasattr(torch.ops.ackd_fast, "cuda_version")


@pytest.mark.skipif(os.environ.get("ACKD_FAST_EXPECT_CUDA_BUILD") != "1", reason="a CUDA build is not expected here")
def test_extension_was_built_with_cuda():
    """CI builds with FORCE_CUDA=1: the CUDA kernels compiled, linked and registered."""
    assert ops.extension_cuda_version() is not None and ops.extension_cuda_version() >= 11000
    assert torch._C._dispatch_has_kernel_for_dispatch_key("ackd_fast::weighted_sum", "CUDA")


def cases(device, dtype):
    """(inputs, weights) triples: 1 to 4 inputs, odd shapes, several layouts."""
    for count, shape in [(1, (7,)), (2, (3, 5)), (3, (2, 3, 7, 5)), (4, (1, 5, 13, 11))]:
        xs = [torch.randn(shape, device=device, dtype=dtype) for _ in range(count)]
        yield xs, torch.randn(count, device=device, dtype=dtype)
    shape = (2, 6, 9, 7)
    base = [torch.randn(shape, device=device, dtype=dtype) for _ in range(3)]
    yield [x.to(memory_format=torch.channels_last) for x in base], torch.randn(3, device=device, dtype=dtype)
    sliced = [torch.randn(2, 8, 9, 14, device=device, dtype=dtype)[:, 1:7, :, ::2] for _ in range(3)]
    yield sliced, torch.randn(3, device=device, dtype=dtype)
    yield (
        [base[0].to(memory_format=torch.channels_last), sliced[1], base[2]],
        torch.randn(3, device=device, dtype=dtype),
    )


TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def check_weighted_sum(device, dtype):
    for xs, w in cases(device, dtype):
        got = ops.weighted_sum(xs, w)
        want = reference.weighted_sum([x.double() for x in xs], w.double())
        assert got.dtype == dtype and got.shape == xs[0].shape
        assert torch.isfinite(got).all()
        tol = TOLERANCE[dtype]
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
        assert got.is_contiguous(memory_format=ops._output_format(xs[0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_sum_cpu_matches_reference(dtype):
    check_weighted_sum("cpu", dtype)


def test_weighted_sum_keeps_channels_last():
    xs = [torch.randn(2, 5, 4, 3).to(memory_format=torch.channels_last) for _ in range(2)]
    out = ops.weighted_sum(xs, torch.randn(2))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


def test_weighted_sum_gradcheck():
    xs = [torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c, w: ops.weighted_sum([a, b, c], w), (*xs, w))


def test_weighted_sum_opcheck(device):
    xs = [torch.randn(2, 3, 5, 4, device=device, requires_grad=True) for _ in range(2)]
    xs.append(torch.randn(2, 3, 5, 4, device=device).to(memory_format=torch.channels_last).requires_grad_())
    w = torch.randn(3, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.ackd_fast.weighted_sum.default, (xs, w))
    cl = [x.detach().to(memory_format=torch.channels_last) for x in xs]
    torch.library.opcheck(torch.ops.ackd_fast.weighted_sum.default, (cl, w.detach()))


def test_weighted_sum_compiles_without_graph_breaks():
    fn = torch.compile(lambda a, b, w: ops.weighted_sum([a, b.relu()], w) * 2, backend="aot_eager", fullgraph=True)
    a, b, w = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4), torch.randn(2, requires_grad=True)
    out = fn(a, b, w)
    torch.testing.assert_close(out, (w[0] * a + w[1] * b.relu()) * 2)
    out.sum().backward()
    torch.testing.assert_close(a.grad, torch.full_like(a, 2 * w[0].item()))


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (lambda: ([], torch.randn(0)), ValueError, "inputs must hold 1 to 4 tensors, got 0"),
        (lambda: ([torch.randn(3)] * 5, torch.randn(5)), ValueError, "inputs must hold 1 to 4 tensors, got 5"),
        (
            lambda: ([torch.randn(3), torch.randn(4)], torch.randn(2)),
            ValueError,
            r"inputs\[1\] has shape \[4\], expected \[3\]",
        ),
        (
            lambda: ([torch.randn(3), torch.randn(3).double()], torch.randn(2)),
            TypeError,
            r"inputs\[1\] has dtype Double, expected Float",
        ),
        (
            lambda: ([torch.randn(3), torch.randn(3)], torch.randn(3)),
            ValueError,
            r"weights has shape \[3\], expected \(2,\)",
        ),
        (lambda: ([torch.randn(3)], torch.randn(1).double()), TypeError, "weights has dtype Double, expected Float"),
        (lambda: ([torch.arange(3)], torch.ones(1)), TypeError, "inputs must be floating point"),
    ],
)
def test_weighted_sum_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        ops.weighted_sum(*args())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_weighted_sum_cuda_matches_reference(dtype):
    check_weighted_sum("cuda", dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_weighted_sum_cuda_rejects_mixed_devices():
    with pytest.raises(ValueError, match=r"inputs\[1\] is on cpu, expected cuda:0"):
        ops.weighted_sum([torch.randn(3, device="cuda"), torch.randn(3)], torch.randn(2, device="cuda"))
