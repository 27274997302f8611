"""ACK-A off the Triton path (issue 22): PyTorch's fused attention against the fp64 reference, gradients too, and
memory linear in the tokens (the reference holds the whole score matrix)."""

import json
import subprocess
import sys

import pytest
import torch

from ackd_fast import ops, reference
from ackd_fast.modules import ACKAttention

# odd token counts, each source its own, and a head dim the Triton kernels do not take
QUERY = (9, 7)
SOURCES = [(5, 9), (13, 10), (3, 3), (7, 4)]


@pytest.mark.parametrize(("count", "heads", "head_dim", "layout"),
                         [(1, 2, 16, "nchw"), (3, 1, 48, "channels_last"), (4, 2, 200, "nchw"),
                          (2, 3, 8, "strided")])  # fmt: skip
def test_sdpa_matches_the_fp64_reference_with_gradients(count, heads, head_dim, layout):
    g = torch.Generator().manual_seed(count)
    c = heads * head_dim

    def feature_map(hw):
        if layout == "strided":  # every other column of a wider map: neither layout's strides
            return torch.randn(2, c, hw[0], 2 * hw[1], dtype=torch.float64, generator=g)[..., ::2]
        x = torch.randn(2, c, *hw, dtype=torch.float64, generator=g)
        return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x

    q = feature_map(QUERY).requires_grad_()
    keys = [feature_map(hw).requires_grad_() for hw in SOURCES[:count]]
    values = [feature_map(hw).requires_grad_() for hw in SOURCES[:count]]
    grad = torch.randn(q.shape, dtype=torch.float64, generator=g)
    leaves = [q, *keys, *values]
    got = ops.sdpa_attention(q, keys, values, heads, scale=0.3)
    want = reference.ack_attention(q, keys, values, heads, scale=0.3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(got, leaves, grad), torch.autograd.grad(want, leaves, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # fp32, values and gradients, within fp32's rounding of the fp64 result
    leaves32 = [x.detach().float().requires_grad_() for x in leaves]
    got32 = ops.sdpa_attention(leaves32[0], leaves32[1 : 1 + count], leaves32[1 + count :], heads)
    want64 = reference.ack_attention(q, keys, values, heads)
    torch.testing.assert_close(got32.double(), want64, rtol=1e-4, atol=1e-5)
    grads32 = torch.autograd.grad(got32, leaves32, grad.float())
    for a, b in zip(grads32, torch.autograd.grad(want64, leaves, grad), strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_module_runs_sdpa_under_auto_off_the_gpu():
    m = ACKAttention(8, [8, 4], heads=2).double()
    assert ops.resolve_backend("ack_attention", "auto", "cpu", torch.float64) == "sdpa"
    deep = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    sources = [torch.randn(2, 8, 4, 4, dtype=torch.float64), torch.randn(2, 4, 6, 2, dtype=torch.float64)]
    ref = ACKAttention(8, [8, 4], heads=2, backend="reference").double()
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(deep, sources), ref(deep, sources), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="heads"):
        ops.sdpa_attention(deep, [deep], [deep], heads=3)


_PEAK = """
import json, re, sys, torch
from ackd_fast import ops, reference

def resident_peak_mib():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024

path, heads, d = sys.argv[1], 2, 32  # 2,048 query tokens, 3 sources of 2,048
q = torch.randn(1, heads * d, 64, 32, requires_grad=True)
kv = [torch.randn(1, heads * d, 32, 64, requires_grad=True) for _ in range(3)]
with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current resident size
    f.write("5")
before = resident_peak_mib()
fn = ops.sdpa_attention if path == "sdpa" else reference.ack_attention
out = fn(q, kv, kv, heads)
out.sum().backward()
print(json.dumps({"peak_mib": resident_peak_mib() - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak resident size from /proc")
def test_sdpa_memory_is_linear_in_the_tokens():
    """One forward+backward at 2,048 x 6,144 tokens, 2 heads: the score matrix alone is 96 MiB in fp32, which the
    reference holds (with its softmax and gradient); SDPA holds the maps, their token copies and its outputs
    (a few MiB)."""

    def peak(path):
        out = subprocess.run([sys.executable, "-c", _PEAK, path], capture_output=True, text=True, check=True,
                             env={"OMP_NUM_THREADS": "1", "PATH": ""}, timeout=300)  # fmt: skip
        return json.loads(out.stdout)["peak_mib"]

    sdpa, materialised = peak("sdpa"), peak("reference")
    assert sdpa < 40 and materialised > 96, (sdpa, materialised)
