"""Taps by module path for a generator that is no TappedGenerator (issue 30's groundwork): what a tap reads and what
replacing it does, against the same computation written out; names that fit no module, or several; shapes from a
meta probe; and ACKD distillation between two such generators."""

import re

import pytest
import torch
import yaml
from torch import nn

from ackd_fast.distill import Distiller
from ackd_fast.losses import Critic
from ackd_fast.models import NLayerDiscriminator, TappedGenerator
from ackd_fast.models.module_taps import ModuleTaps, resolve_tap


class Twice(nn.Module):
    """A block with a tuple output: (x, 2x)."""

    def forward(self, x):
        return x, 2 * x


class OwnGenerator(nn.Module):
    """An encoder-decoder written as a user would, with no tap machinery of ours."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())  # fmt: skip
        self.middle = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.pair = Twice()
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(),
                                nn.Conv2d(width, 3, 3, padding=1), nn.Tanh())  # fmt: skip

    def forward(self, x):
        a, b = self.pair(self.middle(self.down(x)))
        return self.up(a + b)


def test_taps_read_what_the_modules_compute_and_replacing_one_changes_the_rest():
    model = OwnGenerator().eval()
    tapped = ModuleTaps(model, ["down", "re:mid+le", "pair@1", "up@input", "up.1"])
    assert not isinstance(model, TappedGenerator) and tapped.tap_names[1] == "re:mid+le"
    x = torch.randn(2, 3, 16, 16)
    out, feats = tapped(x, taps=tapped.tap_names)
    down = model.down(x)
    middle = model.middle(down)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    torch.testing.assert_close(feats["down"], down)
    torch.testing.assert_close(feats["re:mid+le"], middle)
    torch.testing.assert_close(feats["pair@1"], 2 * middle)
    torch.testing.assert_close(feats["up@input"], 3 * middle)
    torch.testing.assert_close(feats["up.1"], model.up[1](model.up[0](3 * middle)))
    z = torch.randn_like(middle)
    replaced, got = tapped(x, taps=["re:mid+le", "up@input"], replace={"re:mid+le": z})
    torch.testing.assert_close(replaced, model.up(3 * z))
    torch.testing.assert_close(got["re:mid+le"], z)  # a replaced tap reports what was put in its place
    second = torch.randn_like(middle)
    torch.testing.assert_close(tapped(x, replace={"pair@1": second}), model.up(middle + second))
    torch.testing.assert_close(tapped(x, replace={"up@input": z}), model.up(z))
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)  # outside the wrapper the hooks do nothing
    assert tapped.detach() is model and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_names_that_fit_no_module_or_several_are_refused_naming_what_is_there():
    model = OwnGenerator()
    with pytest.raises(ValueError, match=r"has no module 'midle'; nearest: middle"):
        resolve_tap(model, "midle")
    with pytest.raises(ValueError, match=r"must match exactly one module path, and it matches none"):
        resolve_tap(model, "re:nothing.*")
    with pytest.raises(ValueError, match=r"matches 2: down\.0, down\.2"):
        resolve_tap(model, r"re:down\.[02]")
    with pytest.raises(ValueError, match="is not a regular expression"):
        resolve_tap(model, "re:(")
    with pytest.raises(ValueError, match="distinct"):
        ModuleTaps(model, ["down", "down"])
    tapped = ModuleTaps(model, ["pair@5", "down"])
    with pytest.raises(ValueError, match=r"the output of 'pair' is a tuple, which has no element '5'"):
        tapped(torch.randn(1, 3, 8, 8), taps=["pair@5"])
    with pytest.raises(ValueError, match=r"names unknown taps \['up'\]"):
        tapped(torch.randn(1, 3, 8, 8), taps=["up"])


def test_a_meta_probe_gives_every_taps_shape_and_allocates_nothing():
    tapped = ModuleTaps(OwnGenerator(width=4), ["down", "middle", "pair@0", "up.0"])
    assert tapped.probe(32) == {"down": (8, 16, 16), "middle": (8, 16, 16), "pair@0": (8, 16, 16), "up.0": (4, 32, 32)}
    assert tapped.tap_channels() == {"down": 8, "middle": 8, "pair@0": 8, "up.0": 4}
    assert all(p.device.type == "cpu" for p in tapped.parameters())  # the model itself was not moved


@pytest.mark.parametrize("kd", ["ackd", "plain"])
def test_two_own_generators_distill_through_their_module_paths(kd):
    torch.manual_seed(0)
    taps = ["down", "middle", "pair@0"]
    teacher, student = ModuleTaps(OwnGenerator(width=8), taps), ModuleTaps(OwnGenerator(width=4), taps)
    d = Distiller(teacher, student, taps, taps, paired=True, gan_mode="hinge", kd=kd, heads=2)
    critic = Critic([NLayerDiscriminator(6, ndf=8)], d.gan_mode)
    critic.requires_grad_(False)
    assert [c.in_channels for c in d.connectors] == [8, 8, 8] and [c.out_channels for c in d.connectors] == [16] * 3
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    out = d(a, b, critic)
    out.loss.backward()
    assert out.logs["g_feat"] > 0
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    if kd == "ackd":  # the refiners learn through the teacher's own layers after the replaced tap
        assert all(p.grad is not None for r in d.refiners for p in r.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------- models by import path


def test_a_generator_in_a_file_outside_the_package_is_built_by_import_path(tmp_path, monkeypatch):
    from ackd_fast.models.by_path import import_model, is_import_path

    (tmp_path / "my_gans.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width=4):\n"
        "        super().__init__()\n"
        "        self.body = nn.Conv2d(3, width, 3, padding=1)\n"
        "        self.head = nn.Conv2d(width, 3, 1)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x))\n"
        "def factory():\n"
        "    return 'not a module'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = import_model("my_gans:Net", '{"width": 6}')
    assert model.body.out_channels == 6 and is_import_path("my_gans:Net") and not is_import_path("resnet_9blocks")
    assert ModuleTaps(model, ["body"]).probe(8) == {"body": (6, 8, 8)}
    for path, kwargs, message in [
        ("my_gans", None, "must look like package.module:callable"),
        ("no_such_module_here:Net", None, "cannot import no_such_module_here (ModuleNotFoundError"),
        ("my_gans:Missing", None, "my_gans has no attribute 'Missing'"),
        ("my_gans:Net", '{"depth": 3}', "rejects the keyword arguments {'depth': 3}"),
        ("my_gans:Net", "{width: 3}", "must be a JSON object"),
        ("my_gans:Net", "[3]", "must be a JSON object with string keys"),
        ("my_gans:factory", None, "returned a str, not an nn.Module"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            import_model(path, kwargs)


# ----------------------------------------------------------------------------------------- the module table, auto taps


def test_the_module_table_gives_shapes_strides_and_macs_in_forward_order():
    from ackd_fast.metrics import count_macs
    from ackd_fast.models.module_taps import module_table

    model = OwnGenerator(width=4)
    rows = {r.path: r for r in module_table(model, 32)}
    assert list(rows)[:5] == ["down.0", "down.1", "down.2", "down.3", "down"]
    assert rows["down.2"].shape == (8, 16, 16) and rows["down.2"].stride == 2 and rows["pair"].shape is None
    assert rows["down.0"].macs == 32 * 32 * 4 * 3 * 9  # output elements x input channels x kernel area
    top = sum(rows[name].macs for name in ("down", "middle", "up"))
    assert top == count_macs(model, torch.zeros(1, 3, 32, 32))


def test_auto_taps_take_the_last_map_of_each_scale_and_pair_by_resolution():
    from ackd_fast.models import mobile_resnet_9blocks, resnet_9blocks
    from ackd_fast.models.module_taps import auto_taps, pair_taps

    assert auto_taps(OwnGenerator(), 32) == [("down.1", (4, 32, 32)), ("middle", (8, 16, 16))]
    teacher, student = auto_taps(resnet_9blocks(ngf=8), 64), auto_taps(mobile_resnet_9blocks(ngf=4), 64)
    # the reflection pads (70 and 18 px) do not count as a change of scale
    assert [path for path, _ in teacher] == ["stages.stem.3", "stages.stem.6", "stages.block9", "head.2"]
    assert pair_taps(teacher, student) == [("stages.stem.3", "stages.stem.3"), ("stages.stem.6", "stages.stem.6"),
                                           ("stages.block9", "stages.block9")]  # fmt: skip


# ----------------------------------------------------------------------------------------- distill by module path


def test_distilling_through_module_paths_is_the_run_through_stage_names_bit_for_bit(tmp_path, root, capsys):
    from tiny_runs import tiny_config

    from ackd_fast.checkpoint import load_checkpoint
    from ackd_fast.train import train

    teacher = tmp_path / "teacher"
    train(tiny_config(teacher, root, steps=1))
    runs = {}
    for label, taps in (("stages", ""), ("paths", "stages.stem,stages.block3,stages.block6,re:stages\\.block9")):
        out = tmp_path / label
        capsys.readouterr()
        train(tiny_config(out, root, job="distill", teacher=str(teacher / "ckpt.pt"), steps=2, taps=taps,
                          student_taps=taps.replace("re:stages\\.block9", "stages.block9")))  # fmt: skip
        runs[label] = load_checkpoint(out / "ckpt.pt")
        summary = capsys.readouterr().out
        first = "stem (16 x 8 x 8) <- stem (16 x 8 x 8)" if label == "stages" else "stages.stem (16 x 8 x 8) <- stages"
        assert "taps (teacher <- student) at 32x32: " + first in summary
    a, b = runs["stages"]["generator"]["state"], runs["paths"]["generator"]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the student's keys as always


def test_a_tap_path_that_fits_nothing_is_one_line_naming_the_nearest(tmp_path, root, run_cli):
    from tiny_runs import CROP, SIZE, assert_one_line_error, tiny_config

    from ackd_fast.train import train

    teacher = tmp_path / "teacher"
    train(tiny_config(teacher, root, steps=1))
    code, _, err = run_cli(["distill", "--teacher", teacher / "ckpt.pt", "--dataroot", root, "--load-size", SIZE,
                            "--crop-size", CROP, "--student-ngf", 4, "--workers", 0, "--batch-size", 2,
                            "--out-dir", tmp_path / "s", "--taps", "stages.stem,stages.blok3", "--student-taps",
                            "stem,block3"])  # fmt: skip
    assert_one_line_error(code, err, 2, "tap 'stages.blok3'", "nearest: stages.block3 (16 x 8 x 8)")
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------- ackd-fast taps


def test_the_taps_command_lists_modules_and_suggests_pairs_distill_takes(tmp_path, root, run_cli, monkeypatch):
    (tmp_path / "own_gans.py").write_text(
        "import torch.nn as nn\n"
        "def encoder_decoder(width=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),\n"
        "                         nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),\n"
        "                         nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(),\n"
        "                         nn.Conv2d(width, 3, 3, padding=1), nn.Tanh())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_cli(["taps", "own_gans:encoder_decoder", "--kwargs", '{"width": 6}', "--size", 32])
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["2"][1] == "Conv2d" and rows["2"][2:5] == ["12", "x", "16"] and rows["2"][-2:] == ["2", "0.17"]
    code, out, err = run_cli(["taps", "resnet_9blocks", "--ngf", 4, "--size", 32, "--depth", 2])
    assert code == 0 and "stages.block3 " in out and out.count(" *\n") == 4 and "stages.block3.0 " not in out, err
    code, out, err = run_cli(["taps", "--teacher", "resnet_9blocks", "--student", "mobile_resnet_9blocks",
                              "--ngf", 4, "--size", 32])  # fmt: skip
    assert code == 0, err
    snippet = yaml.safe_load(out.split("# distill --config snippet")[1].split("\n", 1)[1])
    assert snippet["taps"] == "stages.stem.3,stages.stem.6,stages.block9" == snippet["student-taps"]
    assert "connector 1x1 conv 16 -> 16" in out
    config = tmp_path / "taps.yaml"
    config.write_text(yaml.safe_dump(snippet))
    from tiny_runs import tiny_config

    from ackd_fast.train import train

    train(tiny_config(tmp_path / "teacher", root, steps=1))
    code, _, err = run_cli(["distill", "--config", config, "--teacher", tmp_path / "teacher" / "ckpt.pt",
                            "--dataroot", root, "--load-size", 36, "--crop-size", 32, "--student-ngf", 4,
                            "--workers", 0, "--batch-size", 2, "--steps", 1, "--out-dir", tmp_path / "s"])  # fmt: skip
    assert code == 0, err
    from tiny_runs import assert_one_line_error

    code, _, err = run_cli(["taps", "no_such_thing"])
    assert_one_line_error(code, err, 2, "'no_such_thing' is no built-in generator")
    code, _, err = run_cli(["taps"])
    assert_one_line_error(code, err, 2, "give MODEL, or --teacher and --student")


def test_taps_auto_pairs_teacher_and_student_by_resolution_and_says_so(tmp_path, root, capsys):
    from tiny_runs import tiny_config

    from ackd_fast.errors import UsageError
    from ackd_fast.train import train

    train(tiny_config(tmp_path / "teacher", root, steps=1))
    teacher = str(tmp_path / "teacher" / "ckpt.pt")
    capsys.readouterr()
    train(tiny_config(tmp_path / "s", root, job="distill", teacher=teacher, steps=1, taps="auto"))
    summary = capsys.readouterr().out
    for pair in ("stages.stem.3 (4 x 32 x 32) <- stages.stem.3", "stages.stem.6 (8 x 16 x 16) <- stages.stem.6",
                 "stages.block9 (16 x 8 x 8) <- stages.block9"):  # fmt: skip
        assert pair in summary, summary
    with pytest.raises(UsageError, match="--taps auto pairs the student's taps too"):
        train(tiny_config(tmp_path / "t", root, job="distill", teacher=teacher, steps=1, taps="auto",
                          student_taps="stem,block3"))  # fmt: skip
