"""`ackd-fast export`: pth (reload, same outputs), peer (the peers' keys and shapes, values map back), onnx
(onnxruntime against PyTorch), pt2 (reload, same outputs, a second size when dynamic); bad input, one-line errors."""

import json
import re
from dataclasses import asdict

import pytest
import torch
from peer_layouts import resnet_shapes, unet_shapes

from ackd_fast import cli, export
from ackd_fast.assembly import Config
from ackd_fast.checkpoint import save_checkpoint
from ackd_fast.models import build_generator
from ackd_fast.peers import load_generator, read_generator


@pytest.fixture
def student_ckpt(tmp_path):
    """A run checkpoint holding a mobile student (ngf 4), direction BtoA."""
    g = build_generator("mobile_resnet_9blocks", 4)
    config = asdict(Config(job="distill", direction="BtoA", crop_size=32, student_ngf=4))
    path = tmp_path / "run" / "ckpt.pt"
    path.parent.mkdir()
    save_checkpoint({"config": config, "step": 5, "generator": {"name": "mobile_resnet_9blocks", "ngf": 4,
                     "state": g.state_dict()}}, path)  # fmt: skip
    return path, g.eval()


def _x(size=32):
    return torch.randn(2, 3, size, size) * 1.5


@torch.no_grad()
def test_pth_round_trip_with_its_sidecar(tmp_path, student_ckpt):
    ckpt, g = student_ckpt
    out = tmp_path / "student.pth"
    cli.main(["export", str(ckpt), "--format", "pth", "--out", str(out)])
    side = json.loads((tmp_path / "student.json").read_text())
    assert (side["name"], side["ngf"], side["direction"], side["model"]) == ("mobile_resnet_9blocks", 4, "BtoA",
                                                                            "pix2pix")  # fmt: skip
    assert side["taps"] == ["stem", "block3", "block6", "block9"] and side["config"]["crop_size"] == 32
    assert set(torch.load(out, weights_only=True)) == set(g.state_dict())  # the state dict alone
    back = read_generator(out)
    assert back.source == "exported generator" and back.direction == "BtoA" and back.config["crop_size"] == 32
    x = _x()
    assert torch.equal(back.generator(x), g(x))


@torch.no_grad()
@pytest.mark.parametrize("name", ["resnet_9blocks", "mobile_resnet_9blocks", "unet_256_bn"])
def test_peer_format_has_the_peers_keys_and_maps_back(tmp_path, name):
    g = build_generator(name, 2).eval()
    ckpt = tmp_path / "run" / "ckpt.pt"  # a run's folder: the export goes beside it, not into it
    ckpt.parent.mkdir()
    save_checkpoint({"config": {"model": "pix2pix"}, "step": 1, "generator": {"name": name, "ngf": 2,
                     "state": g.state_dict()}}, ckpt)  # fmt: skip
    out = tmp_path / "latest_net_G.pth"
    result = export.export(ckpt, "peer", out)
    peer = torch.load(out, weights_only=True)
    expected = {"resnet_9blocks": resnet_shapes(2, 6), "mobile_resnet_9blocks": resnet_shapes(2, 6, mobile=True),
                "unet_256_bn": unet_shapes(2, True)}[name]  # fmt: skip
    assert {k: tuple(v.shape) for k, v in peer.items()} == expected and result["files"] == [str(out)]
    x = _x(256 if name.startswith("unet") else 32)[:1]
    assert torch.equal(load_generator(out)(x), g(x))


@torch.no_grad()
def test_onnx_matches_pytorch_in_onnxruntime_at_two_sizes(tmp_path, student_ckpt, capsys):
    import onnxruntime

    ckpt, g = student_ckpt
    out = tmp_path / "g.onnx"
    cli.main(["export", str(ckpt), "--format", "onnx", "--out", str(out), "--size", "32", "--dynamic"])
    said = capsys.readouterr().out
    assert "onnxruntime vs PyTorch: max abs difference" in said
    assert json.loads(said.split("\n", 1)[1])["max_abs_diff"] <= export.ONNX_TOLERANCE
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 32, 32), (1, 3, 40, 48)):  # H and W dynamic (batch 1)
        x = torch.randn(shape)
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert (torch.from_numpy(y) - g(x)).abs().max() <= export.ONNX_TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "run"]  # no temporary files left


def test_onnx_over_the_tolerance_fails_and_writes_nothing(tmp_path, student_ckpt, monkeypatch, run_cli):
    monkeypatch.setattr(export, "onnx_max_abs_diff", lambda *args: 0.5)
    code, _, err = run_cli(["export", str(student_ckpt[0]), "--format", "onnx", "--out", str(tmp_path / "g.onnx"),
                            "--size", "32"])  # fmt: skip
    assert code == 1 and re.search(r"differs from PyTorch by 0\.5 .* nothing written", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@torch.no_grad()
def test_pt2_reloads_with_the_same_outputs_and_a_second_size(tmp_path, student_ckpt):
    ckpt, g = student_ckpt
    out = tmp_path / "g.pt2"
    export.export(ckpt, "pt2", out, size=32, dynamic=True)
    program = torch.export.load(out).module()
    for size in (32, 44):  # H = W dynamic, batch 1
        x = _x(size)[:1]
        assert torch.equal(program(x), g(x))
    export.export(ckpt, "pt2", tmp_path / "static.pt2", size=32)
    x = _x(32)[:1]
    assert torch.equal(torch.export.load(tmp_path / "static.pt2").module()(x), g(x))


def test_bad_input_gets_a_one_line_error(tmp_path, student_ckpt, run_cli):
    ckpt = str(student_ckpt[0])
    no_generator = tmp_path / "no_generator.pt"
    save_checkpoint({"config": {}, "step": 1}, no_generator)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        ([ckpt, "--format", "tflite", "--out", str(tmp_path / "g")], r"format \(--format\) must be one of"),
        ([ckpt, "--format", "onnx", "--out", str(tmp_path / "g.onnx"), "--size", "62"], r"--size\) must be a positive "
         "multiple of 4"),
        ([ckpt, "--format", "pth", "--out", str(blocker / "g.pth")], r"cannot write --out .*a_file/g\.pth"),
        ([ckpt, "--format", "pth", "--out", str(tmp_path)], "it is a directory"),
        ([str(no_generator), "--format", "pth", "--out", str(tmp_path / "g.pth")], "checkpoint without a generator"),
        ([str(tmp_path / "missing.pt"), "--format", "pth", "--out", str(tmp_path / "g.pth")], "does not exist"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, text = run_cli(["export", *argv])
        assert code in (1, 2) and text.startswith("ackd-fast export: error: ") and text.count("\n") == 1, text
        assert re.search(message, text), (message, text)
    assert not (tmp_path / "g.pth").exists() and not (tmp_path / "g.onnx").exists()
