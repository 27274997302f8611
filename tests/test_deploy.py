"""ackd_fast.deploy and its CPU inference kernels: the kernels against the fp64 eager modules on fresh random weights
and inputs (odd sizes, both layouts, values outside [-1, 1]), schemas by opcheck, the deployed callable against the
eager generator (student and teacher), bad input, and bench-deploy's tables."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ackd_fast import deploy
from ackd_fast.bench import bench_deploy, build_path, deploy_leads
from ackd_fast.models import build_generator
from ackd_fast.models.mobile_resnet import MobileResnetBlock
from ackd_fast.ops import kernels_available
from ackd_fast.rewrite import with_kernels

pytestmark = pytest.mark.skipif(kernels_available() is not None, reason=f"{kernels_available()}")

CL = torch.channels_last


def randomize(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Fresh random weights and nonzero biases everywhere (the kernels drop the biases an instance norm cancels:
    this checks that they are cancelled)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module


def block_params(block: MobileResnetBlock) -> list[torch.Tensor]:
    first, second = block.body[1], block.body[5]
    return [first[0].weight, first[2].weight, second[0].weight, second[2].weight]


# ----------------------------------------------------------------------------------------------- mobile_block


@pytest.mark.parametrize("shape", [(2, 8, 7, 9), (1, 13, 2, 5), (1, 64, 16, 12)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mobile_block_matches_the_fp64_module(shape, layout, dtype):
    block = randomize(MobileResnetBlock(shape[1])).double()
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1  # outside [-1, 1], not centred
    expected = block(x)
    xk = x.to(dtype)
    if layout == "channels_last":
        xk = xk.contiguous(memory_format=CL)
    params = [p.detach().to(dtype) for p in block_params(block)]
    y = torch.ops.ackd_fast.mobile_block(xk, *params, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(y.double(), expected, atol=tol, rtol=tol)


def test_mobile_block_does_not_depend_on_the_thread_count():
    """A map big enough for several row chunks (16K elements and up): the chunks, not the threads, fix the order of
    the statistics' sums."""
    block = randomize(MobileResnetBlock(24))
    x = (torch.randn(2, 24, 45, 37) * 2 + 1).contiguous(memory_format=CL)
    params = [p.detach() for p in block_params(block)]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.ops.ackd_fast.mobile_block(x, *params, 1e-5))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*results)
    with torch.no_grad():
        torch.testing.assert_close(results[0].double(), block.double()(x.double()), atol=1e-4, rtol=1e-4)


def test_mobile_block_opcheck():
    block = randomize(MobileResnetBlock(6))
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=CL)
    params = [p.detach() for p in block_params(block)]
    torch.library.opcheck(torch.ops.ackd_fast.mobile_block.default, (x, *params, 1e-5))
    torch.library.opcheck(torch.ops.ackd_fast.mobile_block.default, (x.contiguous(), *params, 1e-5))


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: a.__setitem__(0, a[0][0]), ValueError, "x must have shape"),
        (lambda a: a.__setitem__(0, a[0].int()), TypeError, "float32 or float64"),
        (lambda a: a.__setitem__(0, a[0][:, :, :1]), ValueError, "H, W >= 2"),
        (lambda a: a.__setitem__(1, a[1][:3]), ValueError, "dw1 has shape"),
        (lambda a: a.__setitem__(4, a[4].double()), TypeError, "pw2 has dtype"),
    ],
)
def test_mobile_block_bad_input(change, error, message):
    block = MobileResnetBlock(4)
    args = [torch.randn(1, 4, 6, 6), *[p.detach() for p in block_params(block)], 1e-5]
    change(args)
    with pytest.raises(error, match=message):
        torch.ops.ackd_fast.mobile_block(*args)


# ---------------------------------------------------------------------------------------------- narrow_conv2d


@pytest.mark.parametrize("out_channels", [1, 2, 3, 4])
@pytest.mark.parametrize("act", ["tanh", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("width", [45, 57, 9])
def test_narrow_conv2d_matches_the_fp64_conv(out_channels, act, with_bias, width):
    # output columns W - 6: 39 = a block of 3-4 vectors and a partial vector; 51 adds single vectors; 3 is only a
    # partial one (in float64 lanes too); channels_last input is accepted
    x = (torch.randn(2, 5, 11, width, dtype=torch.float64) * 3).contiguous(memory_format=CL)
    weight = torch.randn(out_channels, 5, 7, 7, dtype=torch.float64) * 0.2
    bias = torch.randn(out_channels, dtype=torch.float64) if with_bias else None
    expected = F.conv2d(x, weight, bias)
    if act == "tanh":
        expected = expected.tanh()
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        b = None if bias is None else bias.to(dtype)
        y = torch.ops.ackd_fast.narrow_conv2d(x.to(dtype), weight.to(dtype), b, act)
        assert y.is_contiguous() and y.dtype == dtype
        torch.testing.assert_close(y.double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("pad", [1, 3])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("channels", [5, 16])
def test_narrow_conv2d_reflect_pad_any_layout(pad, kind, channels):
    """The reflection pad inside the op, from NCHW, channels_last (8x8 transposes and their tails: 5 channels, 19
    columns) and a strided view, against F.pad + F.conv2d in fp64."""
    base = torch.randn(2, channels, 11, 38, dtype=torch.float64) * 3
    x = {"contiguous": base[..., :19], "channels_last": base[..., :19].contiguous(memory_format=CL),
         "sliced": base[:, :, ::2, ::2]}[kind]  # fmt: skip
    weight = torch.randn(3, channels, 7, 7, dtype=torch.float64) * 0.2
    bias = torch.randn(3, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), weight, bias).tanh()
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        y = torch.ops.ackd_fast.narrow_conv2d(x.to(dtype), weight.to(dtype), bias.to(dtype), "tanh", pad)
        assert y.is_contiguous() and y.shape == expected.shape
        torch.testing.assert_close(y.double(), expected, atol=tol, rtol=tol)


def test_narrow_conv2d_opcheck():
    x, weight, bias = torch.randn(2, 4, 9, 40), torch.randn(3, 4, 3, 5), torch.randn(3)
    torch.library.opcheck(torch.ops.ackd_fast.narrow_conv2d.default, (x, weight, bias, "tanh"))
    torch.library.opcheck(torch.ops.ackd_fast.narrow_conv2d.default, (x, weight, None, "none"))
    x_cl = x.contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.ackd_fast.narrow_conv2d.default, (x_cl, weight, bias, "tanh", 2))


@pytest.mark.parametrize(
    "weight, bias, act, error, message",
    [
        (torch.randn(5, 4, 3, 3), None, "none", ValueError, "1 <= O <= 4"),
        (torch.randn(3, 2, 3, 3), None, "none", ValueError, "C = 4 like x"),
        (torch.randn(3, 4, 9, 3), None, "none", ValueError, "must fit"),
        (torch.randn(3, 4, 3, 3).double(), None, "none", TypeError, "weight has dtype"),
        (torch.randn(3, 4, 3, 3), torch.randn(2), "none", ValueError, "bias has shape"),
        (torch.randn(3, 4, 3, 3), None, "relu", ValueError, "act must be one of"),
    ],
)
def test_narrow_conv2d_bad_input(weight, bias, act, error, message):
    with pytest.raises(error, match=message):
        torch.ops.ackd_fast.narrow_conv2d(torch.randn(1, 4, 6, 6), weight, bias, act)


@pytest.mark.parametrize("pad", [-1, 6])
def test_narrow_conv2d_bad_pad(pad):
    with pytest.raises(ValueError, match=r"reflect_pad must be in \[0, min\(H, W\)\)"):
        torch.ops.ackd_fast.narrow_conv2d(torch.randn(1, 4, 6, 9), torch.randn(3, 4, 3, 3), None, "none", pad)


# ----------------------------------------------------------------------------------------------------- deploy

# name, ngf, mobile blocks to fuse, instance norms outside them (stem 3 and head 2; a ResnetBlock's 2 each)
ARCHS = [("mobile_resnet_9blocks", 8, 9, 5), ("resnet_9blocks", 8, 0, 5 + 9 * 2)]


@pytest.mark.parametrize("name, ngf, blocks, norms", ARCHS)
def test_with_kernels_swaps_blocks_norms_and_head(name, ngf, blocks, norms):
    model, counts = with_kernels(build_generator(name, ngf))
    assert counts == {"mobile_block": blocks, "instance_norm": norms, "narrow_conv2d": 1}
    # the head's reflection pad and tanh run in narrow_conv2d, every plain norm's ReLU in its norm
    assert not any(isinstance(m, (nn.Tanh, nn.InstanceNorm2d)) for m in model.modules())
    head = list(model.head)
    assert type(head[-3]) is nn.Identity and head[-2].pad == 3


def test_with_kernels_leaves_layouts_it_does_not_compute():
    g = build_generator("mobile_resnet_9blocks", 4)
    affine = nn.InstanceNorm2d(16, affine=True)  # not what the ops compute
    with torch.no_grad():
        affine.weight.uniform_(0.5, 2)
        affine.bias.normal_()
    g.stages["block3"][0].body[2] = affine
    model, counts = with_kernels(g)
    assert counts["mobile_block"] == 8
    assert model.stages["block3"][0].body[2] is not affine and torch.equal(model.stages["block3"][0].body[2].weight,
                                                                           affine.weight)  # fmt: skip
    x = torch.randn(2, 3, 20, 24) * 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), g.eval()(x), atol=1e-4, rtol=0)  # the unfused block's other norms fused


@pytest.mark.parametrize("name, ngf, blocks, norms", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_path_matches_eager(name, ngf, blocks, norms, dtype):
    """method="kernels" (no compiling): the rewritten generator against the eager one on a fresh input."""
    g = randomize(build_generator(name, ngf), 0.3)
    example = torch.randn(2, 3, 20, 28, dtype=dtype) * 2
    f = deploy(g, example, method="kernels")
    assert "mobile_block x9" in f.method if blocks else "mobile_block" not in f.method
    x = torch.randn(2, 3, 20, 28, dtype=dtype) * 3  # not the example, outside [-1, 1]
    with torch.no_grad():
        expected = g.to(dtype).eval()(x)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(f(x), expected, atol=tol, rtol=0)


@pytest.mark.parametrize("name, ngf, blocks, norms", ARCHS)
def test_deploy_matches_eager(name, ngf, blocks, norms):
    """Our path (inductor with freezing + the kernels), compiled at a small size."""
    g = randomize(build_generator(name, ngf), 0.3)
    f = deploy(g, torch.randn(1, 3, 16, 16), method="kernels+inductor")
    assert f.method.startswith("inductor (freezing") and "narrow_conv2d x1" in f.method
    assert ("mobile_block x9" in f.method) == bool(blocks)
    assert f.max_abs_diff <= 1e-4 and "DeployedGenerator(inductor" in repr(f)
    x = torch.randn(1, 3, 16, 16) * 3
    with torch.no_grad():
        expected = g.eval()(x)
    torch.testing.assert_close(f(x), expected, atol=1e-4, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deploy_cuda_matches_eager(dtype):
    """Against the fp64 forward (on CUDA fp64 has no TF32): fp32 within 1e-4 (deploy runs without TF32); bf16 within
    twice the eager bf16 forward's own error, since both round differently through nine blocks."""
    import copy

    g = randomize(build_generator("mobile_resnet_9blocks", 4), 0.3).cuda().eval()
    f = deploy(g, torch.randn(2, 3, 32, 32, device="cuda", dtype=dtype))
    assert "cudagraphs" in f.method and "mobile_block" not in f.method
    x = torch.randn(2, 3, 32, 32, device="cuda", dtype=dtype) * 3
    y1 = f(x)
    f(torch.randn_like(x))  # a later call must not overwrite an earlier output (CUDA graphs reuse buffers)
    with torch.no_grad():
        exact = copy.deepcopy(g).double()(x.double())
        eager = copy.deepcopy(g).to(dtype)(x)
    error = (y1.double() - exact).abs()
    if dtype == torch.float32:
        assert error.max().item() < 1e-4
    else:
        eager_error = (eager.double() - exact).abs()
        assert error.max().item() <= 2 * eager_error.max().item() + 1e-2
        assert error.mean().item() <= 2 * eager_error.mean().item() + 1e-3


def test_deploy_bad_input():
    g = build_generator("mobile_resnet_9blocks", 4)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TypeError, match=r"generator must be an nn\.Module"):
        deploy(lambda t: t, x)
    with pytest.raises(TypeError, match="example_input must be a Tensor"):
        deploy(g, x.numpy())
    with pytest.raises(TypeError, match="example_input must be floating point"):
        deploy(g, x.int())
    with pytest.raises(ValueError, match=r"example_input must be a non-empty \(B, C, H, W\)"):
        deploy(g, x[0])
    with pytest.raises(ValueError, match="method must be one of"):
        deploy(g, x, method="tensorrt")
    with pytest.raises(TypeError, match="float32/float64 kernels"):
        deploy(g, x.bfloat16(), method="kernels")
    with pytest.raises(ValueError, match="no module the inference kernels compute"):
        deploy(nn.Conv2d(3, 8, 3), x, method="kernels")
    f = deploy(g, x, method="kernels")
    with pytest.raises(TypeError, match="x must be a Tensor"):
        f([x])
    with pytest.raises(ValueError, match=r"this deployment runs torch\.float32 on cpu"):
        f(x.double())
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        f(x[:, :2])


# ------------------------------------------------------------------------------------------------ bench-deploy


def test_time_paths_takes_turns_and_times_after_settling():
    from ackd_fast.metrics import time_paths

    calls = []
    runs = {name: (lambda x, name=name: calls.append(name)) for name in ("a", "b")}
    medians = time_paths(runs, torch.zeros(1), rounds=7, turn=5, settle=2)
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
    # turns of 2 untimed + 5 timed, then 2 + the 2 left; a's turn, then b's
    assert calls == ["a"] * 7 + ["b"] * 7 + ["a"] * 4 + ["b"] * 4


def test_bench_deploy_cli_writes_tables(tmp_path, capsys):
    from ackd_fast.cli import main

    main(["bench-deploy", "--arch", "mobile_resnet_9blocks:4", "resnet_9blocks:4", "--size", "16", "--batch", "1",
          "--paths", "eager", "--rounds", "2", "--out", str(tmp_path)])  # fmt: skip
    result = json.loads((tmp_path / "bench_deploy.json").read_text())
    rows, ratios = result["rows"], result["ratios"]
    assert {r["name"] for r in rows} == {"mobile_resnet_9blocks:4", "resnet_9blocks:4"}
    assert all(r["ms"] > 0 and r["gmacs"] > 0 for r in rows)
    gmacs = {r["name"]: r["gmacs"] for r in rows}
    assert ratios[0]["teacher"] == "resnet_9blocks:4" and ratios[0]["student"] == "mobile_resnet_9blocks:4"
    assert ratios[0]["mac_ratio"] == pytest.approx(gmacs["resnet_9blocks:4"] / gmacs["mobile_resnet_9blocks:4"])
    ms = {r["name"]: r["ms"] for r in rows}
    assert ratios[0]["speed_ratio"]["eager"] == pytest.approx(ms["resnet_9blocks:4"] / ms["mobile_resnet_9blocks:4"])
    table = (tmp_path / "bench_deploy.md").read_text()
    assert "| mobile_resnet_9blocks:4 | fp32 | 1 | eager |" in table and "MAC ratio" in table


def test_bench_deploy_cli_rejects_bad_arch(tmp_path, run_cli):
    code, _, err = run_cli(["bench-deploy", "--arch", "resnet_9blocks", "--out", str(tmp_path)])
    assert code == 2 and err.startswith("ackd-fast bench-deploy: error: --arch takes NAME:NGF") and err.count("\n") == 1


@pytest.mark.parametrize("path", ["onnxruntime", "openvino"])
def test_the_onnx_runtimes_compute_what_eager_computes(path):
    pytest.importorskip(path)
    torch.manual_seed(0)
    model = build_generator("mobile_resnet_9blocks", 4).eval().requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    run = build_path(path, model, x)
    y = torch.randn(2, 3, 32, 32)  # another input than the export's example
    with torch.no_grad():
        assert (run(y) - model(y)).abs().max() < 1e-4


def test_bench_deploy_reports_the_peak_fraction_and_the_lead(tmp_path):
    pytest.importorskip("openvino")
    rows, _ = bench_deploy({"s": build_generator("mobile_resnet_9blocks", 4)}, tmp_path, device="cpu",
                                  size=16, batches=(1,), dtypes=("fp32",), paths=("eager", "openvino"), rounds=2)
    assert {r["path"] for r in rows} == {"eager", "openvino"}
    assert all(r["peak_fraction"] > 0 and r["peak_gflops"] > 0 for r in rows)
    assert "% of peak" in (tmp_path / "bench_deploy.md").read_text()
    leads = deploy_leads([*rows, {**rows[0], "path": "deploy", "ms": rows[0]["ms"] / 2}])
    assert leads[0]["deploy_over_best_other"] == pytest.approx(0.5 * rows[0]["ms"] / min(r["ms"] for r in rows))


def test_deploy_auto_keeps_the_faster_of_ours_and_openvino(monkeypatch):
    pytest.importorskip("openvino")
    import sys

    deploy_module = sys.modules["ackd_fast.deploy"]  # ackd_fast.deploy is also the function's name
    g = randomize(build_generator("mobile_resnet_9blocks", 4), 0.3)
    x = torch.randn(1, 3, 16, 16)
    for ours_s, theirs_s, picked in ((1.0, 2.0, "ackd_fast.mobile_block"), (2.0, 1.0, "openvino")):
        monkeypatch.setattr(deploy_module, "time_paths", lambda runs, x, rounds, a=ours_s, b=theirs_s:
                            {"ours": a, "openvino": b})  # fmt: skip
        monkeypatch.setattr(deploy_module, "deploy", deploy)
        f = deploy(g, x, method="auto")
        assert ((picked in f.method.split(" (auto")[0]) and "(auto: 1e+03 ms" in f.method) or "(auto: 2e+03" in f.method
        assert f.max_abs_diff <= 1e-4
    f = deploy(g, x, method="openvino")
    y = torch.randn(2, 3, 24, 24)  # another shape: exported and compiled again
    with torch.no_grad():
        torch.testing.assert_close(f(y), g.eval()(y), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="method 'openvino' runs float32 on the CPU"):
        deploy(g, x.double(), method="openvino")
