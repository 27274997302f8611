"""Safe checkpoints: what we write loads with weights_only=True, a pickle that would run code is refused everywhere a
file is read (and runs nothing), RNG states round-trip as tensors and resume on fewer GPUs."""

import os
import random

import numpy as np
import pytest
import torch

from ackd_fast import cli
from ackd_fast.assembly import Config
from ackd_fast.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ackd_fast.data import build_sample_set
from ackd_fast.peers import load_generator, read_generator
from ackd_fast.train import train

SIZE, CROP = 36, 32


class WritesAFile:
    """A pickle payload: unpickling it calls os.system, which creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_saved_checkpoints_load_with_weights_only(tmp_path):
    state = {"step": 3, "w": torch.arange(4.0), "cfg": {"name": "x", "betas": (0.5, 0.999), "none": None},
             "rng": rng_state()}  # fmt: skip
    save_checkpoint(state, tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["step"] == 3 and raw["cfg"]["betas"] == (0.5, 0.999) and torch.equal(raw["w"], state["w"])
    assert isinstance(raw["rng"]["numpy"]["keys"], torch.Tensor)
    save_checkpoint({"fid": np.float64(2.5), "n": np.int64(3)}, tmp_path / "np.pt")
    assert torch.load(tmp_path / "np.pt", weights_only=True) == {"fid": 2.5, "n": 3}
    with pytest.raises(TypeError, match=r"state\['cfg'\]\['path'\] is a pathlib"):
        save_checkpoint({"cfg": {"path": tmp_path}}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "bad.pt.tmp").exists()


def test_rng_states_round_trip():
    state = rng_state()
    before = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]


def test_cuda_states_restore_only_on_devices_that_exist(monkeypatch):
    state = rng_state()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]  # saved on 3 GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, int(s[0]))))
    set_rng_state(state)
    assert restored == [(0, 0), (1, 1)]


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"config": {"model": "pix2pix"}, "generator": WritesAFile(marker)}, path)
    return path, marker


def test_a_pickle_that_runs_code_is_refused_by_the_python_api(evil):
    path, marker = evil
    for read in (load_checkpoint, load_generator, read_generator):
        with pytest.raises(ValueError, match=r"refused to load .*evil\.pt: .* would run code"):
            read(path)
    assert not marker.exists()


def test_a_pickle_that_runs_code_is_refused_by_distill_evaluate_and_resume(tmp_path, evil, capsys):
    path, marker = evil
    root = str(build_sample_set(tmp_path / "data", size=SIZE, train_per_photo=1, test_per_photo=1))
    out = tmp_path / "distill"
    for argv in (["distill", "--teacher", str(path), "--dataroot", root, "--out-dir", str(out)],
                 ["evaluate", "--checkpoint", str(path), "--dataroot", root, "--no-fid", "--out-dir", str(out)]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and "refused to load" in err
        assert not out.exists()
    run = tmp_path / "run"
    run.mkdir()
    os.replace(path, run / "ckpt.pt")
    cfg = Config(job="teacher", out_dir=str(run), dataroot=root, load_size=SIZE, crop_size=CROP, ngf=4, ndf=8,
                 batch_size=2, workers=0, steps=2, progress=False, resume=True, device="cpu")  # fmt: skip
    with pytest.raises(ValueError, match=r"refused to load .*ckpt\.pt"):
        train(cfg)
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == ["ckpt.pt"]
