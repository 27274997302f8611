"""The CUDA extension's ack_accumulate kernels, read in their SASS for sm_80 and sm_90 (no GPU needed).

The first GPU run found these kernels bound by index arithmetic: 64-bit integer divisions and fp64 resize weights
per element in the fp32 and bf16 kernels. Their rewrite (csrc/accumulate_tiles.h) keeps offsets inside a plane in
int32 and computes taps in the accumulation type from scales settled on the host. This checks the result in the
machine code of every instantiation: for fp32/fp16/bf16 with int32 offsets, no fp64 arithmetic and no 64-bit
integer division; where a kernel vectorises, 128-bit global loads and stores. (The emulation tests in
test_fusion_ops.py check the same kernels' values.)
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

# fp64 arithmetic, and the start of a 64-bit unsigned division's reciprocal (the routine __internal_udiv64 runs)
FP64 = ("DFMA", "DMUL", "DADD", "MUFU.RCP64H")
DIV64 = ("I2F.U64.RP",)
# accumulate_<direction>_kernel<vec, scalar_t, acc_t, index_t> as mangled by the Itanium ABI
KERNEL = re.compile(r"accumulate_(forward|backward)_kernelILi(\d+)E(f|d|N3c104HalfE|N3c108BFloat16E)[fd]([il])E")
SCALAR = {"f": "float32", "d": "float64", "N3c104HalfE": "float16", "N3c108BFloat16E": "bfloat16"}


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
            direction, vec, scalar, index = match.groups()
            found[(direction, int(vec), SCALAR[scalar], "int32" if index == "i" else "int64")] = counts
    return found


def test_every_variant_is_built(kernels):
    for direction in ("forward", "backward"):
        for dtype, full in (("float32", 4), ("float64", 2), ("float16", 8), ("bfloat16", 8)):
            for vec in (1, full):
                for index in ("int32", "int64"):
                    assert (direction, vec, dtype, index) in kernels, (direction, vec, dtype, index)


def test_no_fp64_and_no_64_bit_division_in_narrow_kernels(kernels):
    for (direction, vec, dtype, index), counts in kernels.items():
        if dtype == "float64" or index == "int64":
            continue
        ops_list = list(counts.elements())
        found = {op: sass.count(ops_list, op) for op in FP64 + DIV64}
        assert not any(found.values()), f"{direction} kernel<{vec}, {dtype}, {index}>: {found}"


def test_vector_kernels_load_and_store_128_bits(kernels):
    for (direction, vec, dtype, index), counts in kernels.items():
        if vec == 1:
            continue
        ops_list = list(counts.elements())
        assert sass.count(ops_list, "STG.E.128") >= 1, f"{direction} kernel<{vec}, {dtype}, {index}>"
        assert sass.count(ops_list, "LDG.E.128") >= 1, f"{direction} kernel<{vec}, {dtype}, {index}>"
