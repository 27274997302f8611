"""Distilling generators that are no TappedGenerator (issue 30): a class in a file outside the package and a model of
a third-party package (segmentation_models_pytorch's U-Net), named by import path with keyword arguments and tapped
by module path, through every command: train-teacher, distill (ACKD and plain KD), evaluate, export (onnx, pt2, pth),
deploy; evaluate and export in fresh processes that know nothing but the checkpoint (and the module on the path)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_runs import CROP, ENV, SIZE, assert_one_line_error, sample_set

import ackd_fast

OWN_NETS = textwrap.dedent('''
    """A user's own generators, in a file outside ackd_fast."""
    import torch
    from torch import nn


    class TinyUnet(nn.Module):
        """Two downs, two ups, skips: the tail after a tap needs maps from before it."""

        def __init__(self, width: int = 8):
            super().__init__()
            w = width
            self.inc = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU())
            self.down1 = nn.Sequential(nn.Conv2d(w, 2 * w, 4, 2, 1), nn.InstanceNorm2d(2 * w), nn.ReLU())
            self.down2 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.InstanceNorm2d(4 * w), nn.ReLU())
            self.mid = nn.Sequential(nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.ReLU())
            self.up2 = nn.Sequential(nn.ConvTranspose2d(8 * w, 2 * w, 4, 2, 1), nn.ReLU())
            self.up1 = nn.Sequential(nn.ConvTranspose2d(4 * w, w, 4, 2, 1), nn.ReLU())
            self.out = nn.Sequential(nn.Conv2d(2 * w, 3, 3, padding=1), nn.Tanh())

        def forward(self, x):
            a = self.inc(x)
            b = self.down1(a)
            c = self.down2(b)
            u = self.up2(torch.cat([self.mid(c), c], 1))
            u = self.up1(torch.cat([u, b], 1))
            return self.out(torch.cat([u, a], 1))


    def small_unet(width: int = 4) -> nn.Module:
        """A factory: annotated to return a module, so a checkpoint may name it."""
        return TinyUnet(width)


    def unannotated(width: int = 4):
        return TinyUnet(width)


    class Halves(nn.Module):
        """Not an image-to-image map of the input's size (or of its channels, or not a tensor)."""

        def __init__(self, channels: int = 3, as_dict: bool = False):
            super().__init__()
            self.conv = nn.Conv2d(3, channels, 3, 2 if channels == 3 else 1, 1)
            self.as_dict = as_dict

        def forward(self, x):
            return {"out": self.conv(x)} if self.as_dict else self.conv(x)


    class Branchy(nn.Module):
        """A forward that reads a value (no torch.fx trace, no meta-device probe)."""

        def __init__(self, width: int = 8):
            super().__init__()
            self.a = nn.Conv2d(3, width, 3, padding=1)
            self.b = nn.Conv2d(width, width, 3, 2, 1)
            self.c = nn.ConvTranspose2d(width, 3, 4, 2, 1)

        def forward(self, x):
            h = self.a(x)
            if h.abs().mean() > 1e6:
                h = h / 2
            return torch.tanh(self.c(self.b(h)))
''')
TEACHER = ["--generator", "own_nets:TinyUnet", "--generator-kwargs", '{"width": 8}']
STUDENT = ["--student", "own_nets:small_unet", "--student-kwargs", '{"width": 4}']
TAPS = ["--taps", "inc,down1,mid", "--student-taps", "inc,down1,mid", "--heads", "2"]
TINY = ["--load-size", SIZE, "--crop-size", CROP, "--workers", 0, "--batch-size", 2, "--no-progress",
        "--sample-every", 0, "--log-every", 1, "--steps", 2, "--device", "cpu"]  # fmt: skip
SMP_KWARGS = {"encoder_weights": None, "classes": 3, "activation": "tanh", "encoder_depth": 3}  # sizes of 8k
SMP_TEACHER = SMP_KWARGS | {"encoder_name": "resnet18", "decoder_channels": [32, 16, 8]}
SMP_STUDENT = SMP_KWARGS | {"encoder_name": "mobilenet_v2", "decoder_channels": [16, 8, 4]}


@pytest.fixture(scope="module")
def own_nets(tmp_path_factory):
    """The folder of own_nets.py, on sys.path for this process and on PYTHONPATH for the ones it starts."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "own_nets.py").write_text(OWN_NETS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("own_nets", None)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return sample_set(tmp_path_factory.mktemp("paired"))


def fresh_process(args: list, pythonpath: str = "") -> subprocess.CompletedProcess:
    """`ackd-fast ARGS` in a process of its own: what it knows comes from the files and the path alone."""
    env = ENV | ({"PYTHONPATH": pythonpath} if pythonpath else {})
    return subprocess.run([sys.executable, "-m", "ackd_fast.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def own_teacher(own_nets, data_root, tmp_path_factory):
    from ackd_fast import cli

    out = tmp_path_factory.mktemp("own_teacher")
    cli.main(["train-teacher", *TEACHER, "--ndf", "8", "--dataroot", str(data_root), "--out-dir", str(out),
              *map(str, TINY)])
    return out / "ckpt.pt"


def _no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# 40 s: the whole life of a user's generator (two training runs, evaluate and three exports, two in fresh processes)
def test_a_generator_in_a_file_of_its_own_through_every_command(own_nets, own_teacher, data_root, tmp_path, run_cli):
    ckpt = torch.load(own_teacher, weights_only=True)
    assert ckpt["generator"]["name"] == "own_nets:TinyUnet" and ckpt["generator"]["kwargs"] == {"width": 8}
    student_dir = tmp_path / "ackd"
    code, out, err = run_cli(["distill", "--teacher", own_teacher, *STUDENT, *TAPS, "--dataroot", data_root,
                              "--out-dir", student_dir, *TINY])  # fmt: skip
    assert code == 0, err
    assert "student: own_nets:small_unet(width=4)" in out
    assert ("taps (teacher <- student) at 32x32: inc (8 x 32 x 32) <- inc (4 x 32 x 32), down1 (16 x 16 x 16) <- "
            "down1 (8 x 16 x 16), mid (32 x 8 x 8) <- mid (16 x 8 x 8)") in out  # fmt: skip
    assert "teacher: own_nets:TinyUnet(width=8)" in out
    logs = [json.loads(line) for line in (student_dir / "log.jsonl").read_text().splitlines()]
    assert all(r["g_feat"] > 0 and r["ack_path"] > 0 for r in logs if "g_feat" in r)
    # plain KD, taps paired by the probe
    code, out, err = run_cli(["distill", "--teacher", own_teacher, *STUDENT, "--kd", "plain", "--taps", "auto",
                              "--dataroot", data_root, "--out-dir", tmp_path / "plain", *TINY])  # fmt: skip
    assert code == 0, err
    assert "inc (8 x 32 x 32) <- inc (4 x 32 x 32), down1 (16 x 16 x 16) <- down1 (8 x 16 x 16), mid" in out
    # a pair of different resolutions: the student's map is resized to the teacher's, as the summary says
    code, out, err = run_cli(["distill", "--teacher", own_teacher, *STUDENT, "--kd", "plain", "--taps", "inc,mid",
                              "--student-taps", "inc,down1", "--dataroot", data_root, "--out-dir", tmp_path / "resized",
                              *TINY])  # fmt: skip
    assert code == 0, err
    assert "mid (32 x 8 x 8) <- down1 (8 x 16 x 16, resized)" in out

    # fresh processes: evaluate and export read the architecture from the checkpoint
    student = student_dir / "ckpt.pt"
    done = fresh_process(["evaluate", "--checkpoint", student, "--no-fid", "--out-dir", tmp_path / "eval",
                          "--no-progress", "--latency-runs", "0"], str(own_nets))  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)[0]
    assert row["model"] == "ACKD student own_nets:small_unet(width=4)" and row["PSNR"] > 0
    for fmt in ("onnx", "pt2"):
        done = fresh_process(["export", student, "--format", fmt, "--out", tmp_path / f"s.{fmt}", "--size", CROP,
                              "--dynamic"], str(own_nets))  # fmt: skip
        assert done.returncode == 0, done.stderr
    code, _, err = run_cli(["export", student, "--format", "pth", "--out", tmp_path / "s.pth"])
    assert code == 0, err
    code, _, err = run_cli(["export", student, "--format", "peer", "--out", tmp_path / "s.peer"])
    assert_one_line_error(code, err, 2, "--format peer", "own_nets:small_unet(width=4)")

    # what was exported is the student alone: no hooks, no connectors, the checkpoint's weights
    x = torch.rand(2, 3, CROP + 8, CROP + 8) * 2 - 1
    trained = ackd_fast.load_generator(student)
    exported = ackd_fast.load_generator(tmp_path / "s.pth")
    assert type(exported).__name__ == "TinyUnet" and _no_hooks(exported) and _no_hooks(trained)
    assert exported.state_dict().keys() == trained.state_dict().keys()
    with torch.no_grad():
        expected = trained(x)
        torch.testing.assert_close(exported(x), expected, rtol=0, atol=0)
        program = torch.export.load(tmp_path / "s.pt2")
        torch.testing.assert_close(program.module()(x[:1]), expected[:1])
    deployed = ackd_fast.deploy(exported, torch.randn(1, 3, CROP, CROP), method="kernels")
    with torch.no_grad():
        torch.testing.assert_close(deployed(x[:1]), expected[:1], rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "s.json").read_text())["name"] == "own_nets:small_unet"


def test_resume_and_a_student_as_teacher_rebuild_from_the_checkpoint(own_nets, own_teacher, data_root, tmp_path,
                                                                      run_cli):  # fmt: skip
    out = tmp_path / "self"
    args = ["distill", "--teacher", own_teacher, "--recipe", "self", "--taps", "auto", "--kd", "plain",
            "--dataroot", data_root, "--out-dir", out, *TINY, "--ckpt-every", 1]  # fmt: skip
    code, _, err = run_cli([*args, "--stop-at", 1])
    assert code == 0, err
    code, stdout, err = run_cli([*args, "--resume"])
    assert code == 0, err
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2
    assert "student: own_nets:TinyUnet(width=8)" in stdout
    # the distilled student teaches the next one
    code, stdout, err = run_cli(["distill", "--teacher", out / "ckpt.pt", *STUDENT, "--taps", "auto", "--kd", "plain",
                                 "--dataroot", data_root, "--out-dir", tmp_path / "next", *TINY])  # fmt: skip
    assert code == 0, err
    assert "teacher: own_nets:TinyUnet(width=8)" in stdout


def test_a_file_names_only_models(own_nets, own_teacher, tmp_path):
    """A checkpoint whose record names a function that is not annotated to build a module (it could be any function
    of any package) is refused before it is called; a sidecar too."""
    ckpt = torch.load(own_teacher, weights_only=True)
    for name in ("own_nets:unannotated", "subprocess:run"):
        ckpt["generator"] |= {"name": name, "kwargs": {"args": "touch pwned", "shell": True} if "run" in name else {}}
        torch.save(ckpt, tmp_path / "forged.pt")
        with pytest.raises(ValueError, match=f"forged.pt names {name}, which is neither an nn.Module class"):
            ackd_fast.load_generator(tmp_path / "forged.pt")
    assert not (tmp_path / "pwned").exists()
    # the caller may name it: an argument or a flag is the user's word
    ckpt["generator"] |= {"name": "own_nets:unannotated", "kwargs": {"width": 8}}
    torch.save(ckpt, tmp_path / "forged.pt")
    g = ackd_fast.load_generator(tmp_path / "forged.pt", "own_nets:unannotated", kwargs={"width": 8})
    assert type(g).__name__ == "TinyUnet"


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--taps", "inc,down9,mid"], ["--taps: tap 'down9'", "nearest: down2 (32 x 8 x 8), down1 (16 x 16 x 16)"]),
        (["--taps", "re:down.,inc,mid"], ["must match exactly one module path, and it matches 2: down1, down2"]),
        (["--taps", "re:nothing.*,inc,mid"], ["matches none"]),
        (["--taps", "inc,mid", "--student-taps", "inc"], ["--taps names 2 tap(s) and --student-taps 1"]),
        (["--taps", "inc", "--student-taps", "inc"], ["two or more"]),
        (["--taps", "inc,down1,mid", "--student-taps", "inc,down1,mid@1"], ["'mid@1'", "has no element '1'"]),
        (["--taps", "inc,down1,mid", "--heads", "3"], ["--heads 3 must divide", "down1 has 16"]),
        (["--taps", "inc,mid,down1"], ["--taps must name the taps shallow to deep", "got inc,mid,down1"]),
        (["--taps", ""], ["has no default taps", "--taps auto"]),
    ],
)
def test_bad_taps_fail_in_one_line_before_anything_is_written(own_teacher, data_root, tmp_path, run_cli, args, parts):
    student_taps = [] if "--student-taps" in args else ["--student-taps", "inc,down1,mid"]
    code, _, err = run_cli(["distill", "--teacher", own_teacher, *STUDENT, *student_taps, *args,
                            "--dataroot", data_root, "--out-dir", tmp_path / "run", *TINY])  # fmt: skip
    assert_one_line_error(code, err, 2, *parts)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--generator", "no_such_module:Net"], ["cannot import no_such_module"]),
        (["--generator", "own_nets:Missing"], ["own_nets has no attribute 'Missing'"]),
        (["--generator", "own_nets:TinyUnet", "--generator-kwargs", '{"depth": 3}'], ["rejects the keyword"]),
        (["--generator", "own_nets:TinyUnet", "--generator-kwargs", "{width: 3}"], ["must be a JSON object"]),
        (["--generator", "own_nets:TinyUnet", "--generator-kwargs", "[3]"], ["must be a JSON object"]),
        (["--generator", "resnet_9blocks", "--generator-kwargs", '{"width": 3}'], ["is built-in"]),
        (["--generator", "own_nets:Halves"], ["turns 32x32 images into 16x16 ones"]),
        (["--generator", "own_nets:Halves", "--generator-kwargs", '{"channels": 1}'], ["into 1-channel ones"]),
        (["--generator", "own_nets:Halves", "--generator-kwargs", '{"channels": 3, "as_dict": true}'],
         ["returns a dict"]),
        (["--generator", "own_nets"], ["or package.module:callable"]),
    ],
)
def test_bad_models_fail_in_one_line_before_anything_is_written(own_nets, data_root, tmp_path, run_cli, args, parts):
    code, _, err = run_cli(["train-teacher", *args, "--dataroot", data_root, "--out-dir", tmp_path / "run", *TINY])
    assert_one_line_error(code, err, 2, *parts)
    assert not (tmp_path / "run").exists()


# 30 s: a teacher and a student of another package (11 M and 2.2 M parameters), trained, distilled and exported
def test_a_third_party_model_by_import_path_and_kwargs(data_root, tmp_path, run_cli):
    pytest.importorskip("segmentation_models_pytorch")
    tiny = TINY
    teacher = tmp_path / "teacher"
    code, _, err = run_cli(["train-teacher", "--generator", "segmentation_models_pytorch:Unet", "--generator-kwargs",
                            json.dumps(SMP_TEACHER), "--ndf", 8, "--dataroot", data_root, "--out-dir", teacher,
                            *tiny])  # fmt: skip
    assert code == 0, err
    for kd, taps in (("ackd", ["encoder.relu,encoder.layer1,encoder.layer2",
                               "encoder.features.1,encoder.features.3,encoder.features.6"]), ("plain", ["auto", ""])):
        code, out, err = run_cli(["distill", "--teacher", teacher / "ckpt.pt", "--student",
                                  "segmentation_models_pytorch:Unet", "--student-kwargs", json.dumps(SMP_STUDENT),
                                  "--kd", kd, "--taps", taps[0], "--student-taps", taps[1], "--dataroot", data_root,
                                  "--out-dir", tmp_path / kd, *tiny])  # fmt: skip
        assert code == 0, err
        assert "student: segmentation_models_pytorch:Unet(" in out
    student = tmp_path / "ackd" / "ckpt.pt"
    done = fresh_process(["export", student, "--format", "onnx", "--out", tmp_path / "s.onnx", "--size", CROP])
    assert done.returncode == 0, done.stderr
    code, _, err = run_cli(["export", student, "--format", "pt2", "--out", tmp_path / "s.pt2", "--size", CROP])
    assert code == 0, err
    done = fresh_process(["evaluate", "--checkpoint", student, "--no-fid", "--out-dir", tmp_path / "eval",
                          "--no-progress", "--latency-runs", "0"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    g = ackd_fast.load_generator(student)
    assert type(g).__module__.startswith("segmentation_models_pytorch") and _no_hooks(g)
    x = torch.rand(1, 3, CROP, CROP) * 2 - 1
    deployed = ackd_fast.deploy(g, torch.randn(1, 3, CROP, CROP), method="openvino")
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), g(x), rtol=1e-4, atol=1e-4)


def test_the_python_api_takes_modules_and_taps(own_nets, data_root, tmp_path):
    import doctest

    import own_nets as nets

    from ackd_fast import api

    assert doctest.testmod(api).failed == 0
    tiny = {"load_size": SIZE, "crop_size": CROP, "workers": 0, "batch_size": 2, "steps": 2, "progress": False,
            "sample_every": 0, "device": "cpu", "dataroot": str(data_root)}  # fmt: skip
    teacher = nets.TinyUnet(width=8)
    result = api.train_teacher(teacher, generator_kwargs={"width": 8}, out_dir=str(tmp_path / "t"), ndf=8, **tiny)
    rebuilt = ackd_fast.load_generator(result["checkpoint"])
    assert type(rebuilt) is nets.TinyUnet and all(torch.equal(v, teacher.state_dict()[k].cpu())
                                                  for k, v in rebuilt.state_dict().items())  # fmt: skip
    taps = ackd_fast.Taps(teacher=["inc", "down1", "mid"], student=["inc", "down1", "mid"])
    for given in (result["checkpoint"], rebuilt):  # a file, or the module itself (frozen in place)
        out = tmp_path / ("from_file" if isinstance(given, str) else "from_module")
        student = api.distill(given, nets.TinyUnet(width=4), student_kwargs={"width": 4}, taps=taps,
                                    heads=2, out_dir=str(out), **tiny)  # fmt: skip
        assert student["logs"]["g_feat"] > 0
        assert type(ackd_fast.load_generator(student["checkpoint"])) is nets.TinyUnet
    assert not any(p.requires_grad for p in rebuilt.parameters())
    with pytest.raises(TypeError, match=r"unknown settings \['stepz'\]"):
        api.train_teacher("own_nets:TinyUnet", stepz=3)
    with pytest.raises(ValueError, match="as many student taps as teacher taps"):
        ackd_fast.Taps(teacher=["inc", "mid"], student=["inc"])


def _own_config(out, teacher, root, **kw):
    from tiny_runs import tiny_config

    own = {"job": "distill", "teacher": str(teacher), "student": "own_nets:small_unet",
           "student_kwargs": '{"width": 4}', "taps": "inc,down1,mid", "student_taps": "inc,down1,mid", "heads": 2}
    return tiny_config(out, root, **(own | kw))


# 15 s: two gloo processes
def test_ddp_with_a_generator_of_ones_own(own_nets, own_teacher, data_root, tmp_path):
    import torch.multiprocessing as mp
    from test_ddp import WORLD, _rank
    from tiny_runs import free_port

    # --no-residual: every refiner parameter is used, which DDP (not searching for unused ones) needs
    cfg = _own_config(tmp_path, own_teacher, data_root, steps=2, residual=False, kv_stride=2)
    mp.spawn(_rank, args=(free_port(), cfg), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key in ("g", "d"):
        for name, value in ranks[0][key].items():
            assert torch.equal(value, ranks[1][key][name]), f"{key}.{name} differs between the ranks"
    assert all(r["g_feat"] > 0 and r["ack_path"] > 0 for r in ranks[0]["losses"])
    assert ranks[0]["losses"][0]["g_loss"] != ranks[1]["losses"][0]["g_loss"]  # each rank saw its own half


@pytest.mark.parametrize("replace_path", ["hook", "split"])
def test_compile_with_a_generator_of_ones_own_keeps_its_taps(own_nets, own_teacher, data_root, replace_path):
    """torch.compile over the objective's modules, hooks and split registered before it: the distillation terms
    are there and equal to the eager step's (a tap lost under compile would zero them)."""
    import contextlib

    from ackd_fast.assembly import build_optimizers, build_task, compile_task
    from ackd_fast.train import train_step

    cfg = _own_config("unused", own_teacher, data_root, replace_path=replace_path)
    gen = torch.Generator().manual_seed(0)
    batches = [[torch.rand(2, 3, CROP, CROP, generator=gen) * 2 - 1 for _ in "ab"] for _ in range(2)]

    def run(compiled: bool) -> list[dict]:
        torch.manual_seed(0)
        objective, critic, _, _ = build_task(cfg)
        assert objective.teacher.replace_path_used == replace_path
        if compiled:
            compile_task(objective, critic, backend="eager")
        g_opt, d_opt, _, _ = build_optimizers(cfg, objective, critic)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        logs = []
        for a, b in batches:
            out, _ = train_step(objective, critic, critic, g_opt, d_opt, scaler, contextlib.nullcontext(), a, b)
            logs.append({k: v.item() for k, v in out.logs.items()})
        return logs

    eager, compiled = run(False), run(True)
    assert all(step["g_feat"] > 0 and step["ack_path"] > 0 for step in compiled)
    for e, c in zip(eager, compiled, strict=True):
        assert c == pytest.approx(e, rel=1e-5, abs=1e-6)


def test_a_built_in_named_as_student_is_the_recipe_bit_for_bit(data_root, tmp_path):
    """The new path (--student NAME) builds what --recipe compress built, and trains it to the same weights."""
    from tiny_runs import tiny_config

    from ackd_fast.train import train

    teacher = tmp_path / "teacher"
    train(tiny_config(teacher, data_root, steps=1))
    runs = {}
    for name, kw in (("recipe", {}), ("named", {"student": "mobile_resnet_9blocks"})):
        train(tiny_config(tmp_path / name, data_root, job="distill", teacher=str(teacher / "ckpt.pt"), steps=2, **kw))
        runs[name] = torch.load(tmp_path / name / "ckpt.pt", weights_only=True)
    assert runs["named"]["generator"]["name"] == "mobile_resnet_9blocks" and "kwargs" not in runs["named"]["generator"]
    for key, value in runs["recipe"]["g"].items():
        assert torch.equal(value, runs["named"]["g"][key]), key


def test_a_bare_teacher_file_and_a_config_file_name_the_model(own_nets, own_teacher, data_root, tmp_path, run_cli):
    """A state dict alone (no record of its architecture) is read as the --generator the user names; a config file
    gives a model's keyword arguments as a YAML mapping."""
    state = torch.load(own_teacher, weights_only=True)["generator"]["state"]
    torch.save(state, tmp_path / "bare.pth")
    (tmp_path / "run.yaml").write_text("generator: own_nets:TinyUnet\ngenerator-kwargs: {width: 8}\n"
                                       "student: own_nets:small_unet\nstudent-kwargs: {width: 4}\n")  # fmt: skip
    args = ["distill", "--config", tmp_path / "run.yaml", "--teacher", tmp_path / "bare.pth", "--taps", "auto",
            "--kd", "plain", "--dataroot", data_root, "--out-dir", tmp_path / "s", *TINY]  # fmt: skip
    code, out, err = run_cli(args)
    assert code == 0, err
    assert "teacher: own_nets:TinyUnet(width=8)" in out and "student: own_nets:small_unet(width=4)" in out
    # the wrong width for the file: one line naming the file and the first tensor that does not fit
    (tmp_path / "run.yaml").write_text("generator: own_nets:TinyUnet\ngenerator-kwargs: {width: 6}\n")
    code, _, err = run_cli([*args[:-len(TINY) - 2], "--out-dir", tmp_path / "t", *TINY])
    assert_one_line_error(code, err, 1, "bare.pth does not fit own_nets:TinyUnet(width=6)", "inc.0.weight")
    assert not (tmp_path / "t").exists()


def test_a_model_that_reads_values_is_probed_on_the_cpu_and_replaced_by_hooks(own_nets, data_root, tmp_path, run_cli):
    """A forward with a Python branch on a tensor's value runs on neither the meta device nor torch.fx: its shapes
    come from a CPU forward and ACKD's teacher path takes the hooks, as the summary says."""
    code, out, err = run_cli(["taps", "own_nets:Branchy", "--size", CROP])
    assert code == 0, err
    assert "8 x 16 x 16" in out
    code, _, err = run_cli(["train-teacher", "--generator", "own_nets:Branchy", "--ndf", 8, "--dataroot", data_root,
                            "--out-dir", tmp_path / "t", *TINY])  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(["distill", "--teacher", tmp_path / "t" / "ckpt.pt", "--student", "own_nets:Branchy",
                              "--student-kwargs", '{"width": 4}', "--taps", "a,b", "--student-taps", "a,b",
                              "--heads", 2, "--dataroot", data_root, "--out-dir", tmp_path / "s", *TINY])  # fmt: skip
    assert code == 0, err
    assert "--replace-path): hook (torch.fx cannot trace Branchy" in out
    code, _, err = run_cli(["distill", "--teacher", tmp_path / "t" / "ckpt.pt", "--student", "own_nets:Branchy",
                            "--taps", "a,b", "--student-taps", "a,b", "--replace-path", "split", "--dataroot",
                            data_root, "--out-dir", tmp_path / "forced", *TINY])  # fmt: skip
    assert_one_line_error(code, err, 2, "--taps: replace_path 'split': torch.fx cannot trace Branchy")
    code, _, err = run_cli(["export", tmp_path / "s" / "ckpt.pt", "--format", "pt2", "--out", tmp_path / "s.pt2"])
    assert_one_line_error(code, err, 1, "torch.export cannot export the generator", "branches on a tensor's value")
    assert not (tmp_path / "s.pt2").exists()


def test_taps_names_a_bad_model_in_one_line(own_nets, run_cli):
    code, _, err = run_cli(["taps", "nosuch.mod:Net"])
    assert_one_line_error(code, err, 2, "cannot import nosuch.mod")
    code, _, err = run_cli(["taps", "own_nets:TinyUnet", "--kwargs", '{"depth": 2}'])
    assert_one_line_error(code, err, 2, "rejects the keyword arguments")


def test_the_python_api_takes_a_class_defined_in_a_function(data_root, tmp_path):
    """A class no other code can import (defined here) trains; its checkpoint says to load it with model=."""
    from torch import nn

    from ackd_fast import api

    class Local(nn.Module):
        def __init__(self, width: int = 4):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU())
            self.mid = nn.Conv2d(width, width, 3, padding=1)
            self.dec = nn.ConvTranspose2d(width, 3, 4, 2, 1)

        def forward(self, x):
            return torch.tanh(self.dec(self.mid(self.enc(x))))

    tiny = {"load_size": SIZE, "crop_size": CROP, "workers": 0, "batch_size": 2, "steps": 1, "progress": False,
            "sample_every": 0, "device": "cpu", "dataroot": str(data_root)}  # fmt: skip
    teacher = api.train_teacher(Local(8), out_dir=str(tmp_path / "t"), ndf=8, **tiny)
    with pytest.raises(ValueError, match=r"Local is a class defined inside a function.*model="):
        ackd_fast.load_generator(teacher["checkpoint"])
    loaded = ackd_fast.load_generator(teacher["checkpoint"], model=Local(8))
    student = api.distill(loaded, Local(4), taps=api.Taps(["enc", "mid"], ["enc", "mid"]), heads=2,
                          out_dir=str(tmp_path / "s"), **tiny)  # fmt: skip
    assert student["logs"]["g_feat"] > 0
    assert isinstance(ackd_fast.load_generator(student["checkpoint"], model=Local(4)), Local)


def test_bench_deploy_times_a_generator_of_ones_own(own_nets, tmp_path, run_cli):
    code, _, err = run_cli(["bench-deploy", "--arch", "own_nets:TinyUnet", "mobile_resnet_9blocks:4", "--size", 16,
                            "--batch", 1, "--paths", "eager", "--rounds", 1, "--out", tmp_path])  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "bench_deploy.json").read_text())["rows"]
    assert {r["name"] for r in rows} == {"own_nets:TinyUnet", "mobile_resnet_9blocks:4"}
