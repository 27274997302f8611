import os
import random
import zlib

import pytest
import torch

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
