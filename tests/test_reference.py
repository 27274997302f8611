"""The reference spec against independent fp64 computations, and its gradients by gradcheck."""

import independent
import pytest
import torch
from torch.autograd import gradcheck

from ackd_fast import reference

f64 = torch.float64


def maps(*shapes, dtype=f64, requires_grad=False):
    return [torch.randn(s, dtype=dtype, requires_grad=requires_grad) for s in shapes]


def projection(c_out, c_in, bias=True):
    return (torch.randn(c_out, c_in, 1, 1, dtype=f64) / c_in**0.5, torch.randn(c_out, dtype=f64) if bias else None)


# ----------------------------------------------------------------------------------------------------- ACK-A

ATTENTION_CASES = [  # (heads, d, query HxW, source HxWs)
    (1, 16, (9, 7), [(5, 9)]),
    (2, 5, (9, 7), [(5, 9), (13, 10)]),
    (3, 4, (4, 6), [(5, 9), (13, 10), (3, 3)]),
    (2, 3, (1, 1), [(2, 3), (1, 1), (3, 1), (4, 4)]),
]


@pytest.mark.parametrize(("heads", "d", "qsize", "ssizes"), ATTENTION_CASES)
def test_ack_attention_matches_independent(heads, d, qsize, ssizes):
    b, c = 2, heads * d
    (q,) = maps((b, c, *qsize))
    keys = maps(*[(b, c, *s) for s in ssizes])
    values = maps(*[(b, c, *s) for s in ssizes])
    got = reference.ack_attention(q, keys, values, heads)
    torch.testing.assert_close(got, independent.attention(q, keys, values, heads), rtol=1e-10, atol=1e-10)


def test_ack_attention_scale_and_single_softmax():
    """A custom scale is used, and the softmax runs across sources: splitting one source in two changes nothing."""
    b, heads, d = 1, 2, 4
    (q,) = maps((b, heads * d, 3, 5))
    k, v = maps((b, heads * d, 2, 6), (b, heads * d, 2, 6))
    whole = reference.ack_attention(q, [k], [v], heads, scale=0.3)
    split = reference.ack_attention(q, [k[..., :1, :], k[..., 1:, :]], [v[..., :1, :], v[..., 1:, :]], heads, scale=0.3)
    torch.testing.assert_close(whole, split, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole, independent.attention(q, [k], [v], heads, scale=0.3), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride", [2, 3])
def test_pool_tokens_keeps_border(stride):
    (x,) = maps((2, 3, 7, 5))
    got = reference.pool_tokens(x, stride)
    torch.testing.assert_close(got, independent.avg_pool_ceil(x, stride), rtol=1e-12, atol=1e-12)
    assert reference.pool_tokens(x, 1) is x


@pytest.mark.parametrize(("kv_stride", "residual"), [(1, True), (2, False), (3, True)])
def test_ack_attention_block_matches_independent(kv_stride, residual):
    b, c, heads, inner = 2, 6, 2, 8
    src_channels, src_sizes = [6, 3, 5], [(7, 5), (4, 9), (11, 8)]
    (deep,) = maps((b, c, 5, 6))
    sources = maps(*[(b, cj, *s) for cj, s in zip(src_channels, src_sizes, strict=True)])
    q_proj, out_proj = projection(inner, c), projection(c, inner)
    k_projs = [projection(inner, cj) for cj in src_channels]
    v_projs = [projection(inner, cj, bias=False) for cj in src_channels]
    got = reference.ack_attention_block(
        deep,
        sources,
        q_proj=q_proj,
        k_projs=k_projs,
        v_projs=v_projs,
        out_proj=out_proj,
        heads=heads,
        kv_stride=kv_stride,
        residual=residual,
    )
    pooled = [independent.avg_pool_ceil(a, kv_stride) if kv_stride > 1 else a for a in sources]
    q = independent.proj(deep, *q_proj)
    keys = [independent.proj(a, *p) for a, p in zip(pooled, k_projs, strict=True)]
    values = [independent.proj(a, *p) for a, p in zip(pooled, v_projs, strict=True)]
    want = independent.proj(independent.attention(q, keys, values, heads), *out_proj)
    want = deep + want if residual else want
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_ack_attention_half_precision_close_to_fp64():
    """The spec runs in the input dtype; in fp16 it stays within fp16 rounding of the fp64 answer."""
    heads, d = 2, 16
    (q,) = maps((1, heads * d, 5, 7))
    keys = maps((1, heads * d, 6, 4), (1, heads * d, 3, 3))
    values = maps((1, heads * d, 6, 4), (1, heads * d, 3, 3))
    exact = reference.ack_attention(q, keys, values, heads)
    half = reference.ack_attention(q.half(), [k.half() for k in keys], [v.half() for v in values], heads)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), exact, rtol=2e-2, atol=2e-2)


def test_ack_attention_gradcheck():
    heads, d = 2, 3
    (q,) = maps((1, heads * d, 3, 2), requires_grad=True)
    keys = maps((1, heads * d, 2, 3), (1, heads * d, 1, 2), requires_grad=True)
    values = maps((1, heads * d, 2, 3), (1, heads * d, 1, 2), requires_grad=True)
    assert gradcheck(
        lambda q, k0, k1, v0, v1: reference.ack_attention(q, [k0, k1], [v0, v1], heads), (q, *keys, *values)
    )


def test_ack_attention_block_gradcheck():
    c, heads, inner = 4, 2, 4
    (deep,) = maps((1, c, 3, 3), requires_grad=True)
    sources = maps((1, 2, 5, 3), (1, c, 2, 2), requires_grad=True)
    params = [
        projection(inner, c),
        projection(inner, 2),
        projection(inner, c),
        projection(inner, 2),
        projection(inner, c),
        projection(c, inner),
    ]
    flat = [t.requires_grad_() for p in params for t in p]

    def block(deep, a0, a1, *_):
        q, k0, k1, v0, v1, o = params
        return reference.ack_attention_block(
            deep, [a0, a1], q_proj=q, k_projs=[k0, k1], v_projs=[v0, v1], out_proj=o, heads=heads, kv_stride=2
        )

    assert gradcheck(block, (deep, *sources, *flat))


# ----------------------------------------------------------------------------------------------------- ACK-F

RESIZE_CASES = [((7, 5), (13, 11)), ((13, 11), (7, 5)), ((8, 6), (4, 3)), ((3, 4), (9, 12)), ((5, 5), (5, 8))]


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
@pytest.mark.parametrize(("src", "dst"), RESIZE_CASES)
def test_resize_matches_independent(mode, src, dst):
    (x,) = maps((2, 3, *src))
    torch.testing.assert_close(reference.resize(x, dst, mode), independent.resize(x, dst, mode), rtol=1e-10, atol=1e-10)


def test_resize_same_size_is_identity():
    (x,) = maps((1, 2, 4, 5))
    assert reference.resize(x, (4, 5), "bilinear") is x


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_ack_accumulate_matches_independent(mode, count):
    sizes = [(7, 5), (13, 11), (3, 9), (9, 7)][:count]
    sources = maps(*[(2, 4, *s) for s in sizes])
    weights = torch.randn(count, dtype=f64)
    got = reference.ack_accumulate(sources, weights, (9, 7), mode)
    want = sum(w * independent.resize(a, (9, 7), mode) for w, a in zip(weights.tolist(), sources, strict=True))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act", reference.ACTIVATIONS)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_instance_norm_act_residual_matches_independent(act, affine, with_residual):
    x, r = maps((3, 5, 7, 6), (3, 5, 7, 6))
    weight, bias = (torch.randn(5, dtype=f64), torch.randn(5, dtype=f64)) if affine else (None, None)
    residual = r if with_residual else None
    got = reference.instance_norm_act_residual(x, weight, bias, residual, act, eps=1e-3)
    want = independent.instance_norm(x, weight, bias, residual, act, eps=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_instance_norm_rejects_unknown_activation():
    with pytest.raises(ValueError, match="act must be one of"):
        reference.instance_norm_act_residual(torch.randn(1, 1, 2, 2), act="gelu")


def test_resize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        reference.resize(torch.randn(1, 1, 2, 2), (3, 3), "bicubic")


def fusion_params(c, src_channels):
    return {
        "align_projs": [projection(c, cj) if cj != c else None for cj in src_channels],
        "weights": torch.randn(len(src_channels), dtype=f64),
        "conv1_weight": torch.randn(c, c, 3, 3, dtype=f64) / (3 * c**0.5),
        "norm1": (torch.randn(c, dtype=f64), torch.randn(c, dtype=f64)),
        "conv2_weight": torch.randn(c, c, 3, 3, dtype=f64) / (3 * c**0.5),
        "norm2": (torch.randn(c, dtype=f64), torch.randn(c, dtype=f64)),
    }


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
@pytest.mark.parametrize("residual", [True, False])
def test_ack_fusion_block_matches_independent(mode, residual):
    """Also checks that aligning before resizing (the reference's order) equals docs/DESIGN.md's resize-then-align."""
    c, src_channels, src_sizes = 4, [4, 3, 6], [(9, 7), (4, 3), (13, 11)]
    (deep,) = maps((2, c, 7, 6))
    sources = maps(*[(2, cj, *s) for cj, s in zip(src_channels, src_sizes, strict=True)])
    p = fusion_params(c, src_channels)
    got = reference.ack_fusion_block(deep, sources, residual=residual, mode=mode, **p)
    acc = 0
    for a, align, w in zip(sources, p["align_projs"], p["weights"], strict=True):
        r = independent.resize(a, (7, 6), mode)
        acc = acc + w * (r if align is None else independent.proj(r, *align))
    h = independent.instance_norm(independent.conv3x3(acc, p["conv1_weight"]), *p["norm1"], act="relu")
    h = independent.conv3x3(h, p["conv2_weight"])
    want = independent.instance_norm(h, *p["norm2"], deep if residual else None, act="none")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", reference.RESIZE_MODES)
def test_ack_accumulate_gradcheck(mode):
    sources = maps((1, 2, 5, 3), (1, 2, 2, 4), requires_grad=True)
    weights = torch.randn(2, dtype=f64, requires_grad=True)
    assert gradcheck(lambda a, b, w: reference.ack_accumulate([a, b], w, (3, 4), mode), (*sources, weights))


def test_instance_norm_act_residual_gradcheck():
    x, r = maps((2, 3, 4, 3), (2, 3, 4, 3), requires_grad=True)
    weight, bias = torch.randn(3, dtype=f64, requires_grad=True), torch.randn(3, dtype=f64, requires_grad=True)
    assert gradcheck(lambda *t: reference.instance_norm_act_residual(*t, act="relu"), (x, weight, bias, r))


def test_ack_fusion_block_gradcheck():
    c = 3
    (deep,) = maps((1, c, 4, 3), requires_grad=True)
    sources = maps((1, 2, 5, 5), (1, c, 2, 3), requires_grad=True)
    p = fusion_params(c, [2, c])
    leaves = [
        p["align_projs"][0][0],
        p["align_projs"][0][1],
        p["weights"],
        p["conv1_weight"],
        *p["norm1"],
        p["conv2_weight"],
        *p["norm2"],
    ]
    for t in leaves:
        t.requires_grad_()
    assert gradcheck(
        lambda deep, a0, a1, *_: reference.ack_fusion_block(deep, [a0, a1], **p), (deep, *sources, *leaves)
    )


def test_weighted_sum_spec():
    xs = maps((2, 3), (2, 3), (2, 3))
    w = torch.randn(3, dtype=f64)
    torch.testing.assert_close(reference.weighted_sum(xs, w), w[0] * xs[0] + w[1] * xs[1] + w[2] * xs[2])
