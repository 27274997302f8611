"""`evaluate --save-images DIR` (issue 32, 2): the images scored, one folder per checkpoint, the inputs and targets as
scored, and the index page that translate writes; nothing there replaced."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ackd_fast import data, metrics
from ackd_fast.models import build_generator

SIZE = 16


@pytest.fixture
def setup(tmp_path):
    root = data.build_sample_set(tmp_path / "data", size=SIZE, train_per_photo=1, test_per_photo=2)
    generators = {}
    for name in ("first", "second"):
        generators[name] = build_generator("resnet_9blocks", 4).eval()
        (tmp_path / name).mkdir()
        torch.save(generators[name].state_dict(), tmp_path / name / "g.pth")
    flags = ["evaluate", "--checkpoint", tmp_path / "first" / "g.pth", tmp_path / "second" / "g.pth", "--dataroot",
             root, "--dataset-mode", "aligned", "--no-fid", "--latency-runs", 0, "--no-progress", "--out-dir",
             tmp_path / "report"]  # fmt: skip
    return root, flags, generators, tmp_path


def _as_tensor(path):
    return torch.from_numpy(np.asarray(Image.open(path)).copy()).permute(2, 0, 1)


def test_save_images_writes_what_was_scored_and_its_index(setup, run_cli):
    root, flags, generators, tmp_path = setup
    saved = tmp_path / "scored"
    code, stdout, err = run_cli([*flags, "--save-images", saved])
    assert code == 0, err
    rows = json.loads(stdout)
    names = sorted(p.name for p in (root / "test").glob("*.png"))
    assert len(names) == 4
    for label, name in (("first_g", "first"), ("second_g", "second")):
        assert sorted(p.name for p in (saved / label).iterdir()) == names
        for image in names:
            x = data.to_tensor(Image.open(saved / "inputs" / image))[None]
            with torch.no_grad():
                expected = metrics.quantize(generators[name](x))[0].int()
            assert (_as_tensor(saved / label / image).int() - expected).abs().max() <= 1
    # the targets as scored: their PSNR against the outputs is the table's
    psnr = []
    for n in names:
        error = (_as_tensor(saved / "first_g" / n).double() - _as_tensor(saved / "targets" / n).double()) ** 2
        psnr.append(10 * np.log10(255**2 / error.mean().item()))
    assert np.mean(psnr) == pytest.approx(rows[0]["PSNR"], abs=1e-3)
    page = (saved / "index.html").read_text()
    assert page.count("<tr>") == 1 + len(names)
    for column in ("input", "first_g", "second_g", "target"):
        assert f"<th>{column}</th>" in page
    assert f'src="first_g/{names[0]}"' in page and f'src="targets/{names[0]}"' in page
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert report["info"]["saved_images"] == str(saved / "index.html")


def test_save_images_replaces_nothing_and_stays_out_of_the_data(setup, run_cli):
    root, flags, _, tmp_path = setup
    saved = tmp_path / "scored"
    (saved / "inputs").mkdir(parents=True)
    mine = saved / "inputs" / sorted(p.name for p in (root / "test").glob("*.png"))[0]
    mine.write_bytes(b"mine")
    code, _, err = run_cli([*flags, "--save-images", saved])
    assert code == 2 and err.count("\n") == 1 and str(mine) in err, err
    assert mine.read_bytes() == b"mine" and sorted(saved.rglob("*")) == [saved / "inputs", mine]
    assert not (tmp_path / "report").exists()
    code, _, err = run_cli([*flags, "--save-images", root / "test" / "out"])
    assert code == 2 and "inside the input folder" in err, err
    assert not (root / "test" / "out").exists()
