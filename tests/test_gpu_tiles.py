"""Every GPU tile of the ACK-A kernels computes the right numbers (issue 23): each tile of
`configs.gpu_candidates`, for every dot class (16-bit, tf32, full fp32) and BLOCK_D class (<= 64, 128), launched
directly (not only the autotuner's pick) for the forward, dK/dV and dQ kernels on odd shapes with several sources,
against the fp64 reference with test_ack_attention's tolerances. Outputs start as NaN: every element is written.

Needs a GPU (the interpreter has a single tile); the GPU suite runs this file first.
"""

import pytest
import torch

from ackd_fast import reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

QUERY = (9, 7)
SOURCES = [(5, 9), (13, 10), (3, 3)]
ATOL = {torch.float32: 1e-6, torch.float16: 2e-4, torch.bfloat16: 2e-3}
# (dtype, fp32 matmul precision): each dot class once; bf16 beside fp16 (same class, other rounding)
DOT_CLASSES = [(torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "tf32"), (torch.float32, "ieee")]
HEAD_DIMS = (48, 128)  # BLOCK_D 64 ("small") and 128 ("large"); 48 also masks the padded channels


def _cases():
    from ackd_fast.kernels import configs

    for dtype, precision in DOT_CLASSES:
        for head_dim in HEAD_DIMS:
            element = torch.empty((), dtype=dtype).element_size()
            # tl.dot's precision under this torch setting: full fp32 runs as tf32x3 (ack_attention._precision)
            dot_precision = "tf32x3" if (dtype, precision) == (torch.float32, "ieee") else precision
            for kernel in ("forward", "dkdv", "dq", "dkdv_fused"):
                arch = configs.arch_of(torch.cuda.get_device_capability()) if torch.cuda.is_available() else 90
                for tile in configs.gpu_candidates(kernel, element, configs.block_d(head_dim), dot_precision, arch):
                    shape = f"{tile.block_m}x{tile.block_n}w{tile.num_warps}s{tile.num_stages}"
                    name = f"{kernel}-{str(dtype)[6:]}-{precision}-d{head_dim}-{shape}"
                    yield pytest.param(kernel, dtype, precision, head_dim, tile, id=name)


def _launch(launch, tile=None):
    """One launch of kernels.ack_attention: with `tile`, the raw JIT kernel at that tile; else the autotuner."""
    import triton

    from ackd_fast.kernels import ack_attention as kernels

    fn = kernels.KERNELS[launch.kernel]
    if tile is None:
        fn[launch.grid](**launch.args)
        return
    while not isinstance(fn, triton.JITFunction):
        fn = fn.fn
    meta = {"BLOCK_M": tile.block_m} | ({"BLOCK_N": tile.block_n} if tile.block_n else {})
    args = {**launch.args, **meta}
    # the flags the kernel's heuristics would set (EVEN_M, ...), which the raw JIT kernel takes as arguments
    args.update({name: rule(args) for name, rule in kernels.HEURISTICS[launch.kernel].items()})
    fn[launch.grid(meta)](**args, num_warps=tile.num_warps, num_stages=tile.num_stages)


@pytest.mark.parametrize(("kernel", "dtype", "precision", "head_dim", "tile"), list(_cases()))
def test_every_tile_matches_the_fp64_reference(kernel, dtype, precision, head_dim, tile, monkeypatch):
    from ackd_fast.kernels import ack_attention as kernels

    monkeypatch.setattr(kernels, "fp32_matmul_precision", lambda: precision)
    heads, batch = 2, 2
    g = torch.Generator("cuda").manual_seed(hash((kernel, head_dim, tile)) % 2**31)

    def feature_map(hw, channels_last=False):
        x = torch.randn(batch, heads * head_dim, *hw, device="cuda", generator=g).to(dtype)
        return x.to(memory_format=torch.channels_last) if channels_last else x

    q = feature_map(QUERY)
    keys = [feature_map(hw, channels_last=j % 2 == 1) for j, hw in enumerate(SOURCES)]
    values = [feature_map(hw) for hw in SOURCES]
    grad = torch.randn(q.shape, device="cuda", generator=g, dtype=torch.float64)

    def nan_like(x):
        return torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)

    # the exact values and gradients, and PyTorch's own error in this dtype (the tolerance's scale)
    leaves = [t.double().requires_grad_() for t in (q, *keys, *values)]
    exact_out = reference.ack_attention(leaves[0], leaves[1:4], leaves[4:], heads)
    exact = [exact_out.detach(), *torch.autograd.grad(exact_out, leaves, grad)]
    same = [t.detach().requires_grad_() for t in (q, *keys, *values)]
    matmul = torch.backends.cuda.matmul
    saved, matmul.fp32_precision = matmul.fp32_precision, precision  # PyTorch in the kernels' precision
    try:
        same_out = reference.ack_attention(same[0], same[1:4], same[4:], heads)
        same_dtype = [same_out.detach(), *torch.autograd.grad(same_out, same, grad.to(dtype))]
    finally:
        matmul.fp32_precision = saved

    lse = torch.full((batch * heads, QUERY[0] * QUERY[1]), float("nan"), device="cuda")
    (out, lse), forward = kernels.forward_launches(q, keys, values, heads, out=nan_like(q), lse=lse)
    _launch(forward[0], tile if kernel == "forward" else None)
    results = {"out": (out, exact[0], same_dtype[0])}
    if kernel != "forward":
        dq, dkeys, dvalues = nan_like(q), [nan_like(k.contiguous()) for k in keys], [nan_like(v) for v in values]
        (dq, dkeys, dvalues), backward = kernels.backward_launches(
            grad.to(dtype), q, keys, values, out, lse, heads, dq=dq, dkeys=dkeys, dvalues=dvalues,
            fused=kernel == "dkdv_fused",
        )  # fmt: skip
        for launch in backward:
            _launch(launch, tile if launch.kernel == kernel else None)
        if kernel == "dq":
            results = {"dq": (dq, exact[1], same_dtype[1])}
        else:
            results = {f"dkeys[{j}]": (dkeys[j], exact[2 + j], same_dtype[2 + j]) for j in range(3)}
            results |= {f"dvalues[{j}]": (dvalues[j], exact[5 + j], same_dtype[5 + j]) for j in range(3)}
            if kernel == "dkdv_fused":  # its dQ, through the fp32 sum and the conversion
                results["dq"] = (dq, exact[1], same_dtype[1])
    torch.cuda.synchronize()
    for name, (got, want, torch_same) in results.items():
        assert not got.isnan().any(), f"{name}: elements left unwritten"
        err = (got.double() - want).abs().max().item()
        ref_err = (torch_same.double() - want).abs().max().item()
        message = f"{name}: error {err:.3g}, PyTorch in {dtype} ({precision}): {ref_err:.3g}"
        assert err <= 2 * ref_err + ATOL[dtype], message
