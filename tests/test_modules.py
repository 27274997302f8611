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
    assert info["ops"]["ack_attention"]["cpu"] == "reference"
    assert info["ops"]["ack_fusion"]["cpu"] == ("extension" if ops.EXTENSION_LOADED else "reference")
    assert info["ops"]["ack_fusion"]["cuda"] == ("extension" if info["extension"]["cuda_compiled"] else "reference")
    assert info["cuda_device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def test_unknown_backend_is_refused():
    with pytest.raises(
        ValueError, match=r"backend for ack_attention must be one of \('auto', 'triton', 'reference'\), got 'cuda'"
    ):
        ACKAttention(8, [8], backend="cuda")
    with pytest.raises(ValueError, match="backend for ack_fusion must be one of"):
        ACKFusion(8, [8], backend="triton")


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setitem(ops.BACKENDS, "ack_fusion", ("extension", "reference"))
    monkeypatch.setattr(ops, "EXTENSION_LOADED", False)
    monkeypatch.setattr(ops, "EXTENSION_ERROR", "ImportError: gone")
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
def test_fusion_auto_uses_reference_where_the_extension_lacks_the_dtype():
    deep, sources = inputs(2, torch.bfloat16)
    assert ops.resolve_backend("ack_fusion", "auto", "cpu", torch.bfloat16) == "reference"
    assert ops.resolve_backend("ack_fusion", "auto", "cpu", torch.float32) == "extension"
    forced = build(ACKFusion, sources, backend="extension").to(torch.bfloat16)
    with pytest.raises(
        RuntimeError, match=r"backend 'extension' for ack_fusion cannot run on cpu: its cpu kernels take"
    ):
        forced(deep, sources)
