"""The CUDA extension's kernels (ack_accumulate, instance_norm_act_residual), read in their SASS for sm_80 and sm_90
(no GPU needed).

The first GPU run found these kernels bound by index arithmetic: 64-bit integer divisions and fp64 resize weights
per element in the fp32 and bf16 kernels. Their rewrite (csrc/tiles.h) keeps offsets inside a plane in int32,
decodes tiles in 32-bit arithmetic and computes resize taps in the accumulation type from scales settled on the
host. This checks the result in the machine code of every instantiation: for fp32/fp16/bf16 with int32 offsets, no
fp64 arithmetic, no 64-bit integer division and no local memory (register arrays stay in registers); where a kernel
vectorises, 128-bit global loads (and stores, where it writes a map). (The emulation tests in test_fusion_ops.py
check the same kernels' values.)
"""

import re

import pytest
import torch

from ackd_fast import ops
from ackd_fast.kernels import sass

pytestmark = [
    pytest.mark.skipif(not ops.EXTENSION_LOADED, reason=f"ackd_fast._C did not load: {ops.EXTENSION_ERROR}"),
    pytest.mark.skipif(sass.cuobjdump() is None, reason="no cuobjdump (Triton's NVIDIA backend)"),
]

# fp64 arithmetic, the start of a 64-bit unsigned division's reciprocal (the routine __internal_udiv64 runs), and
# local memory (register arrays indexed at run time, or spills)
FP64 = ("DFMA", "DMUL", "DADD", "MUFU.RCP64H")
DIV64 = ("I2F.U64.RP",)
LOCAL = ("LDL", "STL")
# <kernel>_kernel<..., scalar_t, acc_t, index_t> as mangled by the Itanium ABI; `vec` is its first int argument
KERNEL = re.compile(r"((?:accumulate|norm)_[a-z_]+?_kernel)I(.*?)(f|d|N3c104HalfE|N3c108BFloat16E)[fd]([il])EEv")
SCALAR = {"f": "float32", "d": "float64", "N3c104HalfE": "float16", "N3c108BFloat16E": "bfloat16"}
# kernels that write no map (their results are per-chunk or per-plane values): no 128-bit stores expected
NO_MAP_STORES = ("norm_chunk_stats_kernel", "norm_chunk_grad_kernel")


@pytest.fixture(scope="module", params=[80, 90], ids=["sm_80", "sm_90"])
def kernels(request):
    if torch.ops.ackd_fast.cuda_version() < 0:
        pytest.skip("ackd_fast._C was built without CUDA kernels")
    from ackd_fast import _C

    listing = sass.dump(_C.__file__, request.param)
    found = {}
    for name, counts in sass.functions(listing).items():
        match = KERNEL.search(name)
        if match:
            kernel, args, scalar, index = match.groups()
            vec = re.search(r"Li(\d+)E", args)
            key = (kernel, int(vec.group(1)) if vec else 1, SCALAR[scalar], "int32" if index == "i" else "int64", args)
            found[key] = counts
    return found


def test_every_variant_is_built(kernels):
    built = {key[:4] for key in kernels}
    for kernel in ("accumulate_forward_kernel", "accumulate_backward_kernel", "norm_chunk_stats_kernel",
                   "norm_pixels_kernel", "norm_planes_forward_kernel", "norm_planes_backward_kernel"):  # fmt: skip
        for dtype, full in (("float32", 4), ("float64", 2), ("float16", 8), ("bfloat16", 8)):
            for vec in (1, full):
                for index in ("int32", "int64") if not kernel.startswith("norm_planes") else ("int32",):
                    assert (kernel, vec, dtype, index) in built, (kernel, vec, dtype, index)


def test_no_fp64_no_64_bit_division_and_no_local_memory_in_narrow_kernels(kernels):
    assert len(kernels) > 50
    for (kernel, _, dtype, index, args), counts in kernels.items():
        if dtype == "float64" or index == "int64":
            continue
        ops_list = list(counts.elements())
        found = {op: sass.count(ops_list, op) for op in FP64 + DIV64}
        assert not any(found.values()), f"{kernel}<{args}{dtype}, {index}>: {found}"
        # ptxas may spill a register or two outside the loops (seen: one 8-byte spill around the output loop of
        # two kernels); a register array indexed at run time shows as dozens of local accesses
        local = {op: sass.count(ops_list, op) for op in LOCAL}
        assert sum(local.values()) <= 4, f"{kernel}<{args}{dtype}, {index}>: {local}"


def test_vector_kernels_load_and_store_128_bits(kernels):
    for (kernel, vec, dtype, index, args), counts in kernels.items():
        if vec == 1:
            continue
        ops_list = list(counts.elements())
        assert sass.count(ops_list, "LDG.E.128") >= 1, f"{kernel}<{args}{dtype}, {index}>"
        if kernel not in NO_MAP_STORES:
            assert sass.count(ops_list, "STG.E.128") >= 1, f"{kernel}<{args}{dtype}, {index}>"
