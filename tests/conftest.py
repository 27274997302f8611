import os
import random
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    # No GPU: the Triton kernels run in the interpreter on CPU tensors. Triton reads the variable when a kernel
    # module is imported, so it is set here, before any test imports one. With a GPU the real compiler runs.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Fresh random inputs every run; ACKD_TEST_SEED=<n> replays a run (the seed is in the report header).
RUN_SEED = int(os.environ.get("ACKD_TEST_SEED", random.SystemRandom().randrange(2**31)))

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
    ),
]


def pytest_report_header(config):
    return f"ackd_fast test seed: ACKD_TEST_SEED={RUN_SEED}"


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(RUN_SEED ^ zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
