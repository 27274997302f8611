"""The public modules: values against independent computations, shapes, dtypes, devices, layouts, bad input."""

import independent
import pytest
import torch

import ackd_fast
from ackd_fast import ops
from ackd_fast.modules import ACKAttention, ACKFusion, ACKRefiner

# U-Net-like sources: their own channels and resolutions, smaller and larger than the deep map.
DEEP = (2, 8, 6, 5)
SOURCE_SHAPES = [(2, 8, 6, 5), (2, 4, 12, 10), (2, 16, 3, 3), (2, 6, 7, 9)]


def inputs(count=3, dtype=torch.float32, device="cpu"):
    deep = torch.randn(DEEP, dtype=dtype, device=device)
    sources = [torch.randn(s, dtype=dtype, device=device) for s in SOURCE_SHAPES[:count]]
    return deep, sources


def channels(sources):
    return [a.shape[1] for a in sources]


def build(cls, sources, **kw):
    if cls is ACKAttention:
        kw.setdefault("heads", 2)
    return cls(DEEP[1], channels(sources), **kw)


MODULES = [ACKAttention, ACKFusion, ACKRefiner]


def randomise(module):
    """Moves every parameter off its initial value so that no term can hide behind a 0 or a 1."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module


# ------------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize(("kv_stride", "residual"), [(1, True), (2, False)])
def test_attention_module_matches_independent(count, kv_stride, residual):
    deep, sources = inputs(count, torch.float64)
    m = randomise(build(ACKAttention, sources, kv_stride=kv_stride, residual=residual).double())
    torch.testing.assert_close(m(deep, sources), independent.attention_module(m, deep, sources), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize(("resize", "residual"), [("bilinear", True), ("nearest", False), ("area", True)])
def test_fusion_module_matches_independent(count, resize, residual):
    deep, sources = inputs(count, torch.float64)
    m = randomise(build(ACKFusion, sources, resize=resize, residual=residual).double())
    torch.testing.assert_close(m(deep, sources), independent.fusion_module(m, deep, sources), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["attention", "fusion", "both"])
def test_refiner_composes_attention_then_fusion(mode):
    deep, sources = inputs(3, torch.float64)
    m = randomise(build(ACKRefiner, sources, mode=mode, heads=2, kv_stride=2, resize="area").double())
    want = deep
    if mode != "fusion":
        assert m.attention.kv_stride == 2
        want = independent.attention_module(m.attention, want, sources)
    if mode != "attention":
        assert m.fusion.resize == "area"
        want = independent.fusion_module(m.fusion, want, sources)
    assert (m.attention is None) == (mode == "fusion") and (m.fusion is None) == (mode == "attention")
    torch.testing.assert_close(m(deep, sources), want, rtol=1e-9, atol=1e-9)


def test_fusion_starts_with_equal_weights_and_aligns_only_other_channels():
    _deep, sources = inputs(3)
    m = build(ACKFusion, sources)
    torch.testing.assert_close(m.weights.detach(), torch.full((3,), 1 / 3))
    assert [isinstance(a, torch.nn.Conv2d) for a in m.align] == [c != DEEP[1] for c in channels(sources)]


# ------------------------------------------------------------------------------- shapes, dtypes, devices


@pytest.mark.parametrize("cls", MODULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_dtype_device_and_gradients(cls, dtype, device):
    deep, sources = inputs(3, dtype, device)
    deep.requires_grad_()
    m = build(cls, sources).to(device=device, dtype=dtype)
    out = m(deep, sources)
    assert out.shape == deep.shape and out.dtype == dtype and out.device == deep.device
    out.float().square().mean().backward()
    assert deep.grad is not None and torch.isfinite(deep.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("cls", MODULES)
def test_channels_last_and_sliced_inputs_match_contiguous(cls, device):
    deep, sources = inputs(3, torch.float64, device)
    m = randomise(build(cls, sources).to(device, torch.float64))
    want = m(deep, sources)
    channels_last = m(
        deep.to(memory_format=torch.channels_last), [a.to(memory_format=torch.channels_last) for a in sources]
    )
    torch.testing.assert_close(channels_last, want, rtol=1e-10, atol=1e-10)
    # Views into larger maps: non-contiguous, with storage offsets.
    wide = torch.randn(DEEP[0], DEEP[1] + 3, DEEP[2] + 2, 2 * DEEP[3], dtype=torch.float64, device=device)
    wide[:, 1 : 1 + DEEP[1], 2:, ::2] = deep
    sliced = wide[:, 1 : 1 + DEEP[1], 2:, ::2]
    assert not sliced.is_contiguous()
    torch.testing.assert_close(m(sliced, sources), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", MODULES)
def test_gradients_match_independent(cls):
    deep, sources = inputs(2, torch.float64)
    for t in (deep, *sources):
        t.requires_grad_()
    m = randomise(build(cls, sources).double())
    grads = torch.autograd.grad(m(deep, sources).sin().sum(), (deep, *sources))
    if cls is ACKAttention:
        want = independent.attention_module(m, deep, sources)
    elif cls is ACKFusion:
        want = independent.fusion_module(m, deep, sources)
    else:
        want = independent.fusion_module(m.fusion, independent.attention_module(m.attention, deep, sources), sources)
    for got, expected in zip(grads, torch.autograd.grad(want.sin().sum(), (deep, *sources)), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------------------------------- backends


def test_backends_reports_build_and_choice():
    info = ackd_fast.backends()
    assert set(info) == {"extension", "triton", "cuda_device", "ops"}
    assert info["extension"]["loaded"] is ops.EXTENSION_LOADED
    assert info["triton"]["max_head_dim"] == 128 and info["triton"]["max_sources"] == 4
    assert info["extension"]["dtypes"]["cpu"] == "float32, float64, float16, bfloat16"
    assert info["ops"]["ack_attention"]["cpu"] == "sdpa"
    assert info["ops"]["ack_fusion"]["cpu"] == ("extension" if ops.EXTENSION_LOADED else "reference")
    assert info["ops"]["ack_fusion"]["cuda"] == ("extension" if info["extension"]["cuda_compiled"] else "reference")
    assert info["cuda_device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def test_unknown_backend_is_refused():
    with pytest.raises(
        ValueError,
        match=r"backend for ack_attention must be one of \('auto', 'triton', 'sdpa', 'reference'\), got 'cuda'",
    ):
        ACKAttention(8, [8], backend="cuda")
    with pytest.raises(ValueError, match="backend for ack_fusion must be one of"):
        ACKFusion(8, [8], backend="triton")


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setitem(ops.BACKENDS, "ack_fusion", ("extension", "reference"))
    monkeypatch.setattr(ops.dispatch, "EXTENSION_LOADED", False)
    monkeypatch.setattr(ops.dispatch, "EXTENSION_ERROR", "ImportError: gone")
    deep, sources = inputs(1)
    m = build(ACKFusion, sources, backend="extension")
    with pytest.raises(
        RuntimeError, match=r"backend 'extension' for ack_fusion cannot run on cpu: .*ImportError: gone"
    ):
        m(deep, sources)
    assert ops.resolve_backend("ack_fusion", "auto", "cpu") == "reference"  # auto moves on; forced never does


# ----------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def fusion():
    return ACKFusion(DEEP[1], channels(inputs(2)[1]))


def test_deep_wrong_rank(fusion):
    deep, sources = inputs(2)
    with pytest.raises(ValueError, match=r"deep must have shape \(B, C, H, W\), got shape \(8, 6, 5\)"):
        fusion(deep[0], sources)


def test_source_wrong_rank(fusion):
    deep, sources = inputs(2)
    with pytest.raises(ValueError, match=r"sources\[1\] must have shape \(B, C, H, W\), got shape \(2, 4, 12, 10, 1\)"):
        fusion(deep, [sources[0], sources[1][..., None]])


def test_batch_mismatch(fusion):
    deep, sources = inputs(2)
    with pytest.raises(ValueError, match=r"sources\[1\] has batch 1 \(shape \(1, 4, 12, 10\)\), expected 2 like deep"):
        fusion(deep, [sources[0], sources[1][:1]])


def test_dtype_mismatch(fusion):
    deep, sources = inputs(2)
    with pytest.raises(TypeError, match=r"sources\[0\] has dtype torch.float64, expected torch.float32 like deep"):
        fusion(deep, [sources[0].double(), sources[1]])


def test_device_mismatch(fusion):
    deep, sources = inputs(2)
    with pytest.raises(ValueError, match=r"sources\[1\] is on meta, expected cpu like deep"):
        fusion(deep, [sources[0], sources[1].to("meta")])


def test_empty_sources(fusion):
    deep, _ = inputs(2)
    with pytest.raises(ValueError, match="sources must hold 1 to 4 feature maps, got 0"):
        fusion(deep, [])


def test_too_many_sources(fusion):
    deep, sources = inputs(4)
    with pytest.raises(ValueError, match="sources must hold 1 to 4 feature maps, got 5"):
        fusion(deep, [*sources, sources[0]])


def test_source_count_differs_from_constructor(fusion):
    deep, sources = inputs(3)
    with pytest.raises(ValueError, match=r"sources holds 3 feature maps, expected 2 \(source_channels=\[8, 4\]\)"):
        fusion(deep, sources)


def test_deep_channels_differ_from_constructor(fusion):
    deep, sources = inputs(2)
    with pytest.raises(ValueError, match=r"deep has 7 channels \(shape \(2, 7, 6, 5\)\), expected 8"):
        fusion(deep[:, :7], sources)


def test_source_channels_differ_from_constructor(fusion):
    deep, sources = inputs(2)
    with pytest.raises(ValueError, match=r"sources\[1\] has 3 channels \(shape \(2, 3, 12, 10\)\), expected 4"):
        fusion(deep, [sources[0], sources[1][:, :3]])


def test_zero_size_map(fusion):
    deep, sources = inputs(2)
    with pytest.raises(ValueError, match=r"sources\[0\] must have a non-empty H x W map, got shape \(2, 8, 0, 5\)"):
        fusion(deep, [sources[0][:, :, :0], sources[1]])


def test_deep_not_a_tensor(fusion):
    _, sources = inputs(2)
    with pytest.raises(TypeError, match="deep must be a Tensor of shape"):
        fusion([[1.0]], sources)


def test_sources_not_a_sequence(fusion):
    deep, sources = inputs(2)
    with pytest.raises(TypeError, match="sources must be a list or tuple of Tensors, got Tensor"):
        fusion(deep, sources[0])


def test_integer_maps(fusion):
    deep, sources = inputs(2)
    with pytest.raises(TypeError, match=r"deep must be floating point, got dtype torch\.int64"):
        fusion(deep.long(), sources)


@pytest.mark.parametrize("cls", MODULES)
def test_every_module_checks_its_inputs(cls):
    deep, sources = inputs(2)
    m = build(cls, sources)
    with pytest.raises(ValueError, match="sources must hold 1 to 4 feature maps, got 0"):
        m(deep, [])


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: ACKAttention(10, [8], heads=4), ValueError, "heads=4 must divide deep_channels=10"),
        (lambda: ACKAttention(8, [8], heads=0), ValueError, "heads must be >= 1, got 0"),
        (lambda: ACKAttention(8, [8], kv_stride=0), ValueError, "kv_stride must be >= 1, got 0"),
        (lambda: ACKAttention(8, [8], head_dim=2.5), TypeError, "head_dim must be an int, got float 2.5"),
        (lambda: ACKFusion(8, [8] * 5), ValueError, "source_channels must list 1 to 4 sources, got 5"),
        (lambda: ACKFusion(8, []), ValueError, "source_channels must list 1 to 4 sources, got 0"),
        (lambda: ACKFusion(8, 8), TypeError, "source_channels must be a sequence of ints"),
        (lambda: ACKFusion(8, [8, -1]), ValueError, r"source_channels\[1\] must be >= 1, got -1"),
        (lambda: ACKFusion(0, [8]), ValueError, "deep_channels must be >= 1, got 0"),
        (lambda: ACKFusion(8, [8], resize="bicubic"), ValueError, "resize must be one of"),
        (lambda: ACKRefiner(8, [8], mode="all"), ValueError, "mode must be one of"),
        (lambda: ACKRefiner(8, [8], head=2), TypeError, r"unexpected keyword arguments \['head'\]"),
    ],
)
def test_bad_constructor_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_head_dim_may_differ_from_channels_over_heads():
    deep, sources = inputs(2, torch.float64)
    m = randomise(ACKAttention(DEEP[1], channels(sources), heads=3, head_dim=5).double())
    assert m.to_q.out_channels == 15
    torch.testing.assert_close(m(deep, sources), independent.attention_module(m, deep, sources), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------- ACK-F backends


@pytest.mark.skipif(not ops.EXTENSION_LOADED, reason="ackd_fast._C did not load")
@pytest.mark.parametrize("residual", [True, False])
def test_fusion_extension_matches_reference_backend(residual, device):
    """The fused ops give the reference composition's output and gradients, parameters included."""
    deep, sources = inputs(4, torch.float64, device)
    for t in (deep, *sources):
        t.requires_grad_()
    fast = randomise(build(ACKFusion, sources, residual=residual, backend="extension").to(device, torch.float64))
    slow = build(ACKFusion, sources, residual=residual, backend="reference").to(device, torch.float64)
    slow.load_state_dict(fast.state_dict())
    out_fast, out_slow = fast(deep, sources), slow(deep, sources)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-10, atol=1e-10)
    leaves_fast = [deep, *sources, *fast.parameters()]
    leaves_slow = [deep, *sources, *slow.parameters()]
    grads_fast = torch.autograd.grad(out_fast.sin().sum(), leaves_fast, allow_unused=True, materialize_grads=True)
    grads_slow = torch.autograd.grad(out_slow.sin().sum(), leaves_slow, allow_unused=True, materialize_grads=True)
    for g, e in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not ops.EXTENSION_LOADED, reason="ackd_fast._C did not load")
def test_fusion_extension_takes_every_float_dtype_on_cpu():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        assert ops.resolve_backend("ack_fusion", "auto", "cpu", dtype) == "extension"


# ------------------------------------------------------------------------------------------- dispatch


def test_attention_auto_decides_from_head_dim_and_source_count():
    """Triton takes heads of at most 128 channels and 1 to 4 sources; auto moves on, a forced backend says why."""
    if ops.TRITON_IMPORTABLE:
        assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.bfloat16, head_dim=128, sources=4) == "triton"
    assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.bfloat16, head_dim=256) == "sdpa"
    assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.bfloat16, sources=5) == "sdpa"
    if ops.TRITON_IMPORTABLE:
        with pytest.raises(RuntimeError, match=r"cannot run on cuda: .*head dim of at most 128, got 256"):
            ops.resolve_backend("ack_attention", "triton", "cuda", torch.bfloat16, head_dim=256)
        with pytest.raises(RuntimeError, match="cannot run on cuda: it takes 1 to 4 sources, got 5"):
            ops.resolve_backend("ack_attention", "triton", "cuda", torch.bfloat16, sources=5)


def test_attention_module_with_wide_heads_runs_sdpa_under_auto(monkeypatch):
    """--heads 1 on 256-channel taps: auto runs PyTorch's fused attention wherever it runs (it used to raise on
    CUDA)."""
    picked = []
    original = ops.resolve_backend

    def spy(*args, **kw):
        picked.append(kw)
        return original(*args, **kw)

    monkeypatch.setattr(ackd_fast.modules, "resolve_backend", spy)
    m = ACKAttention(256, [256], heads=1)
    out = m(torch.randn(1, 256, 3, 2), [torch.randn(1, 256, 2, 2)])
    assert out.shape == (1, 256, 3, 2) and picked == [{"head_dim": 256, "sources": 1}]
    assert ops.resolve_backend("ack_attention", "auto", "cuda", torch.float32, **picked[0]) == "sdpa"


def test_modules_pick_backends_for_the_autocast_dtype():
    x = torch.randn(1, 2, 3, 3)
    assert ops.compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.compute_dtype(x) == torch.bfloat16
        assert ops.compute_dtype(x.double()) == torch.float64  # autocast leaves fp64 alone
    with torch.autocast("cuda", dtype=torch.float16, enabled=torch.cuda.is_available()):
        assert ops.compute_dtype(x) == torch.float32  # autocast of another device


# ------------------------------------------------------------------------------------------- autocast

# What each module under autocast may differ by from the reference composition under the same autocast: a few
# roundings of the autocast dtype (eps 2**-8 for bf16, 2**-11 for fp16) through two to four convolutions.
AUTOCAST_TOLERANCE = {torch.bfloat16: 4e-2, torch.float16: 8e-3}


def autocast_inputs(device):
    """fp32 maps whose sources have mixed channels and resolutions (U-Net taps): align convs make some bf16."""
    deep = torch.randn(2, 16, 6, 5, device=device, requires_grad=True)
    sources = [
        torch.randn(2, 16, 6, 5, device=device),
        torch.randn(2, 8, 12, 10, device=device),
        torch.randn(2, 32, 3, 3, device=device),
    ]
    return deep, [a.requires_grad_() for a in sources]


def check_module_under_autocast(cls, backend, device_type, dtype, attention_backend=None, **kw):
    # Seeded: low-precision gradients are noisy enough (up to ~25% norm-relative error against fp64 here, for the
    # reference as for the fused path) that a bound on a random draw fails now and then; a fixed draw does not.
    torch.manual_seed(0)
    deep, sources = autocast_inputs(device_type)
    channels = [a.shape[1] for a in sources]
    fast = randomise(cls(16, channels, backend=backend, **kw)).to(device_type)
    if attention_backend is not None:  # a refiner's ACK-A on a backend its ACK-F does not have
        fast.attention.backend = attention_backend
    slow = cls(16, channels, backend="reference", **kw).to(device_type)
    slow.load_state_dict(fast.state_dict())
    with torch.autocast(device_type, dtype=dtype):
        got, want = fast(deep, sources), slow(deep, sources)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = AUTOCAST_TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # Gradients: sums over many rounded terms, where the reference under autocast is itself far from exact (it sums
    # the accumulation weights' gradients in bf16, say). Each fast gradient must be as close to the fp64 one as the
    # reference's is, up to three times its error or twice the dtype's tolerance.
    exact_module = slow.to(torch.float64)
    exact_leaves = [t.detach().double().requires_grad_() for t in (deep, *sources)]
    exact = exact_module(exact_leaves[0], exact_leaves[1:])
    grad = torch.randn_like(exact).to(dtype).double()  # the incoming gradient every path can represent
    leaves_fast, leaves_slow = [deep, *sources, *fast.parameters()], [deep, *sources, *slow.parameters()]
    got_grads = torch.autograd.grad(got, leaves_fast, grad.to(got.dtype))
    exact_grads = torch.autograd.grad(exact, [*exact_leaves, *exact_module.parameters()], grad)
    slow.float()
    with torch.autocast(device_type, dtype=dtype):
        want = slow(deep, sources)
    want_grads = torch.autograd.grad(want, leaves_slow, grad.to(want.dtype))
    for g, e, x, leaf in zip(got_grads, want_grads, exact_grads, leaves_fast, strict=True):
        assert g.dtype == leaf.dtype and torch.isfinite(g).all()
        scale = x.abs().max().clamp_min(1.0).item()
        reference_error = (e.double() - x).abs().max().item()
        assert (g.double() - x).abs().max().item() <= max(3 * reference_error, 2 * tol * scale)


FUSION_BACKENDS = [
    "reference",
    pytest.param("extension", marks=pytest.mark.skipif(not ops.EXTENSION_LOADED, reason="ackd_fast._C did not load")),
]


@pytest.mark.parametrize("backend", FUSION_BACKENDS)
def test_fusion_under_cpu_bf16_autocast(backend):
    """The new user's example: ACKFusion(C, [C, C/2]) with fp32 maps under CPU bf16 autocast."""
    check_module_under_autocast(ACKFusion, backend, "cpu", torch.bfloat16)


def test_attention_under_cpu_bf16_autocast():
    check_module_under_autocast(ACKAttention, "reference", "cpu", torch.bfloat16, heads=2)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_refiner_under_cpu_bf16_autocast(backend):
    check_module_under_autocast(ACKRefiner, backend, "cpu", torch.bfloat16, heads=2, kv_stride=2)


@pytest.mark.skipif(not ops.TRITON_IMPORTABLE, reason="triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the Triton interpreter runs where there is no GPU")
def test_triton_interpreter_under_cpu_fp16_autocast():
    """The Triton kernels under CPU fp16 autocast (the interpreter's bf16 is not faithful, so fp16 here), alone and
    in a refiner beside the fused ACK-F ops."""
    check_module_under_autocast(ACKAttention, "triton", "cpu", torch.float16, heads=2)
    check_module_under_autocast(ACKRefiner, "auto", "cpu", torch.float16, attention_backend="triton", heads=2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", MODULES)
def test_modules_under_cuda_autocast(cls, dtype):
    kw = {"heads": 2} if cls is not ACKFusion else {}
    check_module_under_autocast(cls, "auto", "cuda", dtype, **kw)


def test_refiner_under_autocast_compiles_without_graph_breaks():
    """The autocast rules are dispatcher kernels, so torch.compile traces them like any op (fullgraph)."""
    deep, sources = autocast_inputs("cpu")
    m = randomise(ACKRefiner(16, [a.shape[1] for a in sources], heads=2))

    def step(deep, *sources):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(deep, list(sources))

    got = torch.compile(step, backend="aot_eager", fullgraph=True)(deep, *sources)
    want = step(deep, *sources)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), deep), torch.autograd.grad(want.sum(), deep))


def _distillation_step(backend, amp_dtype, device="cpu"):
    """One train_step of a U-Net teacher (taps of 4, 8 and 16 channels at 16, 8 and 4 pixels) under autocast."""
    from ackd_fast.assembly import Config, build_distiller
    from ackd_fast.losses import Critic
    from ackd_fast.models import NLayerDiscriminator, UnetGenerator, mobile_resnet_9blocks
    from ackd_fast.train import train_step

    torch.manual_seed(0)
    teacher, student = UnetGenerator(num_downs=4, ngf=4), mobile_resnet_9blocks(ngf=4)
    cfg = Config(taps="enc1,enc2,enc3", student_taps="stem,block3,block6", heads=2)
    distiller = build_distiller(cfg, teacher, "unet", student, "mobile_resnet_9blocks", True, backend=backend)
    critic = Critic([NLayerDiscriminator(6, ndf=8)], distiller.gan_mode)
    distiller, critic = distiller.to(device), critic.to(device)
    g_opt = torch.optim.Adam([p for p in distiller.parameters() if p.requires_grad], lr=1e-3)
    d_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device, enabled=amp_dtype == torch.float16)
    a, b = torch.rand(2, 3, 32, 32, device=device) * 2 - 1, torch.rand(2, 3, 32, 32, device=device) * 2 - 1
    autocast = torch.autocast(device, dtype=amp_dtype)
    out, d_loss = train_step(distiller, critic, critic, g_opt, d_opt, scaler, autocast, a, b)
    grads = torch.cat([p.grad.flatten().float() for p in distiller.refiners.parameters()])
    return out, d_loss, grads


def test_distillation_step_under_cpu_bf16_autocast():
    """A whole step with the default backends (the fused ACK-F ops on CPU) against the reference backends, both
    under CPU bf16 autocast: the same losses, and refiner gradients pointing the same way."""
    fast, fast_d, fast_grads = _distillation_step("auto", torch.bfloat16)
    slow, slow_d, slow_grads = _distillation_step("reference", torch.bfloat16)
    for key in ("g_recon", "g_feat", "ack_path"):
        torch.testing.assert_close(fast.logs[key], slow.logs[key], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fast.loss, slow.loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fast_d, slow_d, rtol=2e-2, atol=2e-2)
    assert torch.isfinite(fast_grads).all() and fast_grads.abs().sum() > 0
    assert torch.nn.functional.cosine_similarity(fast_grads, slow_grads, dim=0) > 0.99


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_distillation_step_under_cuda_bf16_autocast():
    fast, _, fast_grads = _distillation_step("auto", torch.bfloat16, "cuda")
    slow, _, slow_grads = _distillation_step("reference", torch.bfloat16, "cuda")
    torch.testing.assert_close(fast.loss, slow.loss, rtol=2e-2, atol=2e-2)
    assert torch.nn.functional.cosine_similarity(fast_grads, slow_grads, dim=0) > 0.99
