"""FID reference statistics on demand (issue 32, 4): computed once, cached under a checksum of the real files and the
protocol, reused while nothing changed, computed again when a file or the size changes, and named in the results."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ackd_fast import data, evaluation
from ackd_fast.models import build_generator

SIZE = 16


@pytest.fixture
def setup(tmp_path, random_inception_file, random_inception_sha256):
    root = data.build_sample_set(tmp_path / "data", size=SIZE, train_per_photo=1, test_per_photo=1)
    generator = tmp_path / "g.pth"
    torch.save(build_generator("resnet_9blocks", 4).state_dict(), generator)
    flags = ["evaluate", "--checkpoint", generator, "--dataroot", root, "--dataset-mode", "aligned",
             "--inception-weights", random_inception_file, "--inception-sha256", random_inception_sha256,
             "--kid-subsets", 2, "--latency-runs", 0, "--no-progress", "--fid-cache", tmp_path / "cache"]  # fmt: skip
    return root, flags, tmp_path


def _evaluate(run_cli, flags, out):
    code, stdout, err = run_cli([*flags, "--out-dir", out])
    assert code == 0, err
    info = json.loads((out / "results.json").read_text())["info"]
    return json.loads(stdout)[0], info, err


class _Features(torch.nn.Module):
    """A stand-in for the Inception network: 8 features per image (pytorch-fid's output is a list of maps)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return [self.conv(x).mean((2, 3), keepdim=True)]


@pytest.fixture
def counted(monkeypatch):
    """The sizes of the real image sets whose statistics were computed (not reused)."""
    computed = []
    real_image_stats = evaluation.image_stats

    def counting(images, *args, **kwargs):
        computed.append(len(images))
        return real_image_stats(images, *args, **kwargs)

    monkeypatch.setattr(evaluation, "image_stats", counting)
    return computed


def test_statistics_are_reused_until_a_file_the_size_or_the_weights_change(tmp_path, counted):
    root = data.build_sample_set(tmp_path / "data", size=SIZE, train_per_photo=1, test_per_photo=1)
    cache, inception = tmp_path / "cache", _Features()

    def stats(size=SIZE, sha="a" * 64):
        dataset = data.make_dataset(root, "aligned", "test", train=False, load_size=size, crop_size=size)
        return evaluation.cached_reference_stats(dataset, inception, sha, cache, phases=("train", "test"))

    first = stats()
    (path,) = cache.glob("*.npz")
    assert counted == [2] and first["protocol"]["cache"] == f"computed, cached in {path}"
    assert first["protocol"]["split"] == "test" and first["protocol"]["inception_sha256"] == "a" * 64
    again = stats()
    assert counted == [2] and again["protocol"]["cache"] == f"reused {path}"
    assert np.array_equal(again["mu"], first["mu"]) and np.array_equal(again["features"], first["features"])
    test_image = sorted((root / "test").glob("*.png"))[0]
    pixels = np.asarray(Image.open(test_image)).copy()
    pixels[0, -1] ^= 255  # a pixel of the B half: the size or the time of the file changes
    Image.fromarray(pixels).save(test_image)
    changed = stats()
    assert counted == [2, 2] and changed["protocol"]["cache"].startswith("computed")
    assert not np.array_equal(changed["mu"], first["mu"])
    stats(size=8)
    stats(sha="b" * 64)
    assert counted == [2, 2, 2, 2] and len(list(cache.glob("*.npz"))) == 4
    current = Path(changed["protocol"]["cache"].removeprefix("computed, cached in "))
    current.write_bytes(b"torn")  # an unreadable cache file is computed again and replaced
    assert stats()["protocol"]["cache"] == f"computed, cached in {current}" and counted == [2] * 5
    assert stats()["protocol"]["cache"] == f"reused {current}" and counted == [2] * 5
    dataset = data.make_dataset(root, "aligned", "test", train=False, load_size=SIZE, crop_size=SIZE)
    off = evaluation.cached_reference_stats(dataset, inception, "a" * 64, "none")
    assert off["protocol"]["cache"] == "off" and counted == [2] * 6 and len(list(cache.glob("*.npz"))) == 4


def test_evaluate_reuses_them_and_names_the_split_in_the_results(setup, run_cli, monkeypatch, counted):
    from ackd_fast import metrics

    # pytorch-fid's sqrtm of two 2048x2048 matrices takes 20 s on this CPU: a stand-in distance
    monkeypatch.setattr(metrics, "frechet_distance", lambda mu1, s1, mu2, s2: float(np.abs(mu1 - mu2).sum()))
    _, flags, tmp_path = setup
    row, info, err = _evaluate(run_cli, flags, tmp_path / "r1")
    (cached,) = (tmp_path / "cache").glob("*.npz")
    assert info["fid_reference_cache"] == f"computed, cached in {cached}" and "computed, cached" in err
    assert info["fid_reference_split"] == "test (B of each pair, 2 images)"
    assert "fid_reference_cache" in (tmp_path / "r1" / "results.md").read_text()
    again, info, _ = _evaluate(run_cli, flags, tmp_path / "r2")
    assert counted == [2] and info["fid_reference_cache"] == f"reused {cached}"
    assert again["FID"] == pytest.approx(row["FID"])
    assert (tmp_path / "r2" / "fid_reference.npz").is_file()  # the report's own copy, as before
