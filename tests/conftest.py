import os
import random
import tempfile
import zlib

import pytest
import torch

# The FID statistics cache of the tests' runs: a folder of this session, not the user's ~/.cache (subprocesses too)
os.environ["ACKD_FAST_CACHE"] = tempfile.mkdtemp(prefix="ackd_fast_test_cache_")

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


@pytest.fixture
def np_rng():
    """A numpy generator drawn from the test's torch seed, so ACKD_TEST_SEED replays numpy draws too."""
    import numpy as np

    return np.random.default_rng(int(torch.randint(0, 2**31, ())))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The built-in paired tile set at the tiny size (tiny_runs.SIZE), one per test module."""
    from tiny_runs import sample_set

    return sample_set(tmp_path_factory.mktemp("paired"))


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory):
    """The same tiles as an unpaired (CycleGAN) set."""
    from tiny_runs import sample_set

    return sample_set(tmp_path_factory.mktemp("unpaired"), unpaired=True)


@pytest.fixture(scope="session")
def random_inception_file(tmp_path_factory):
    """A state dict in the layout of pytorch-fid's Inception (torchvision's InceptionV3 with 1008 classes, no aux
    head) with random weights: it stands in for pt_inception-2015-12-05, which cannot be downloaded here."""
    import torchvision

    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def random_inception_sha256(random_inception_file):
    """The stand-in's digest: what --inception-sha256 must say for it to be read (it is not the published file)."""
    from ackd_fast.metrics import file_sha256

    return file_sha256(random_inception_file)


@pytest.fixture
def ieee_fp32():
    """Full fp32 CUDA matmuls and convolutions (no TF32) for the test, restored after (with the fp32_precision API:
    monkeypatch cannot restore its attributes, and the legacy allow_tf32 must not be mixed in)."""
    knobs = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [k.fp32_precision for k in knobs]
    for k in knobs:
        k.fp32_precision = "ieee"
    yield
    for k, value in zip(knobs, saved, strict=True):
        k.fp32_precision = value


@pytest.fixture
def run_cli(capsys):
    """run_cli(argv) -> (exit code, stdout, stderr) of `ackd-fast ARGV` in this process (0 when main returns)."""
    from ackd_fast import cli

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            cli.main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
