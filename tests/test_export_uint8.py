"""`export --io uint8` (issue 32, 5): an ONNX or torch.export file that takes and gives uint8 (B, H, W, 3) RGB images,
checked against `ackd-fast translate` on the same images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ackd_fast import export
from ackd_fast.checkpoint import save_checkpoint
from ackd_fast.models import build_generator

SIZES = [(16, 16), (24, 20)]  # (width, height): the export's size, and another (dynamic shapes)


@pytest.fixture
def translated(tmp_path, np_rng, run_cli):
    """(checkpoint, {image file: translate's output file})."""
    generator = build_generator("resnet_9blocks", 4)
    ckpt = tmp_path / "run" / "ckpt.pt"
    ckpt.parent.mkdir()
    save_checkpoint({"config": None, "step": 1,
                     "generator": {"name": "resnet_9blocks", "ngf": 4, "state": generator.state_dict()}}, ckpt)
    photos = tmp_path / "photos"  # fmt: skip
    photos.mkdir()
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(np_rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    code, _, err = run_cli(["translate", ckpt, "--input", photos, "--output", tmp_path / "out"])
    assert code == 0, err
    return ckpt, {photos / f"{i}.png": tmp_path / "out" / f"{i}.png" for i in range(len(SIZES))}


def _uint8(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))[None]  # (1, H, W, 3)


def test_onnx_uint8_gives_what_translate_writes(tmp_path, translated, run_cli):
    onnxruntime = pytest.importorskip("onnxruntime")
    ckpt, outputs = translated
    out = tmp_path / "g.onnx"
    code, stdout, err = run_cli(["export", ckpt, "--format", "onnx", "--io", "uint8", "--size", 16, "--dynamic",
                                 "--out", out])  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout.split("\n", 1)[1])["io"] == "uint8"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert given.type == returned.type == "tensor(uint8)"
    for image, translated_file in outputs.items():
        (y,) = session.run(None, {given.name: _uint8(image)})
        assert y.dtype == np.uint8 and y.shape == _uint8(translated_file).shape
        assert np.abs(y.astype(int) - _uint8(translated_file).astype(int)).max() <= export.UINT8_TOLERANCE


@torch.no_grad()
def test_pt2_uint8_gives_what_translate_writes(tmp_path, translated):
    ckpt, outputs = translated
    out = tmp_path / "g.pt2"
    export.export(ckpt, "pt2", out, size=16, io="uint8")
    program = torch.export.load(out).module()
    image, translated_file = next(iter(outputs.items()))  # the export's size (pt2 is dynamic in H = W only)
    y = program(torch.from_numpy(_uint8(image).copy()))
    assert y.dtype == torch.uint8
    assert np.abs(y.numpy().astype(int) - _uint8(translated_file).astype(int)).max() <= export.UINT8_TOLERANCE


@pytest.mark.parametrize("flags, message", [(["--format", "pth", "--io", "uint8"], "--io uint8 is for --format onnx"),
                                            (["--format", "onnx", "--io", "rgb"], "--io")])  # fmt: skip
def test_bad_io_exits_2(tmp_path, translated, run_cli, flags, message):
    ckpt, _ = translated
    code, _, err = run_cli(["export", ckpt, *flags, "--out", tmp_path / "g.x"])
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "g.x").exists()
