"""The loop: teacher and distillation runs, exact resume, atomic checkpoints, DDP under torchrun, the CLI, the demo."""

import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ackd_fast import cli, data
from ackd_fast.assembly import Config
from ackd_fast.checkpoint import load_checkpoint, save_checkpoint
from ackd_fast.peers import read_generator
from ackd_fast.train import train

SIZE, CROP = 36, 32  # the smallest crop a 3-layer PatchGAN accepts is 32


@pytest.fixture(scope="module")
def paired_root(tmp_path_factory):
    return str(data.build_sample_set(tmp_path_factory.mktemp("paired"), size=SIZE, train_per_photo=2, test_per_photo=2))


@pytest.fixture(scope="module")
def unpaired_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("unpaired")
    return str(data.build_sample_set(root, size=SIZE, train_per_photo=2, test_per_photo=2, unpaired=True))


def _cfg(out, root, **kw):
    # pinned to the CPU: on a GPU machine "auto" would train on CUDA, where resume is not bit for bit
    tiny = {"ngf": 4, "ndf": 8, "student_ngf": 4, "batch_size": 2, "workers": 0, "steps": 2, "device": "cpu"}
    quiet = {"log_every": 1, "sample_every": 2, "ckpt_every": 100, "progress": False}
    return Config(out_dir=str(out), dataroot=root, load_size=SIZE, crop_size=CROP, **(tiny | quiet | kw))


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, paired_root):
    out = tmp_path_factory.mktemp("teacher")
    train(_cfg(out, paired_root, job="teacher", model="pix2pix"))
    return str(out / "ckpt.pt")


def test_teacher_run_writes_checkpoint_log_and_samples(teacher_ckpt):
    run = Path(teacher_ckpt).parent
    ckpt = load_checkpoint(teacher_ckpt)
    assert ckpt["step"] == 2 and ckpt["config"]["model"] == "pix2pix"
    assert set(ckpt) >= {"g", "d", "g_opt", "d_opt", "g_sched", "d_sched", "scaler", "rng", "config", "generator"}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"g_loss", "d_loss", "g_gan", "g_l1", "lr", "img_per_s"} <= set(records[0])
    assert (run / "samples" / "step_0000002.png").is_file()
    loaded = read_generator(teacher_ckpt)
    g, cfg = loaded.generator, loaded.config
    assert cfg["ngf"] == 4 and g(torch.zeros(1, 3, CROP, CROP)).shape == (1, 3, CROP, CROP)


def test_cyclegan_teacher_and_unpaired_distillation(tmp_path, unpaired_root):
    train(_cfg(tmp_path / "t", unpaired_root, job="teacher", model="cyclegan", batch_size=0))
    ckpt = load_checkpoint(tmp_path / "t" / "ckpt.pt")
    assert len(ckpt["d_opt"]["param_groups"][0]["params"]) > 0 and "generator_b.head.7.weight" in ckpt["g"]
    result = train(_cfg(tmp_path / "s", unpaired_root, job="distill", teacher=str(tmp_path / "t" / "ckpt.pt")))
    assert result["step"] == 2 and "g_feat" in result["logs"]


def test_self_distillation_and_discriminator_from_the_teacher(tmp_path, paired_root, teacher_ckpt):
    from ackd_fast.assembly import build_task

    cfg = _cfg(tmp_path, paired_root, job="distill", teacher=teacher_ckpt, recipe="self", mode="fusion")
    distiller, critic, student, spec = build_task(cfg)
    assert spec.record() == {"name": "resnet_9blocks", "ngf": 4} and type(student) is type(distiller.teacher)
    teacher_d = load_checkpoint(teacher_ckpt)["d"]
    for k, v in critic.state_dict().items():
        assert torch.equal(v, teacher_d[k]), k
    assert train(cfg)["step"] == 2


def _states_equal(a, b, path="ckpt"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _states_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _states_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, paired_root, teacher_ckpt):
    # 12 training images, batch 4: 3 steps an epoch, so the 7 steps cross two epoch boundaries and the stop at 4
    # falls inside an epoch.
    cfg = _cfg(tmp_path / "full", paired_root, job="distill", teacher=teacher_ckpt, batch_size=4, steps=7, kv_stride=2)
    train(cfg)
    train(replace(cfg, out_dir=str(tmp_path / "cut"), stop_at=4))
    assert load_checkpoint(tmp_path / "cut" / "ckpt.pt")["step"] == 4
    train(replace(cfg, out_dir=str(tmp_path / "cut"), resume=True))
    full, cut = load_checkpoint(tmp_path / "full" / "ckpt.pt"), load_checkpoint(tmp_path / "cut" / "ckpt.pt")
    for key in ("step", "g", "d", "g_opt", "d_opt", "g_sched", "d_sched"):
        _states_equal(full[key], cut[key], key)

    def losses(run: str) -> list:
        records = map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())
        return [r["g_loss"] for r in records if "g_loss" in r]

    assert losses("full") == losses("cut")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_resume_on_cuda_matches_an_uninterrupted_run_within_tolerance(tmp_path, paired_root, teacher_ckpt, ieee_fp32):
    """On CUDA a resumed run is not bit for bit (ReflectionPad2d's backward adds with atomics, and has no
    deterministic kernel): in fp32 without TF32 it must end within 1e-3 of the uninterrupted run's weights."""
    cfg = _cfg(tmp_path / "full", paired_root, job="distill", teacher=teacher_ckpt, batch_size=4, steps=7,
               kv_stride=2, device="cuda", amp="none", tf32=False)  # fmt: skip
    train(cfg)
    train(replace(cfg, out_dir=str(tmp_path / "cut"), stop_at=4))
    train(replace(cfg, out_dir=str(tmp_path / "cut"), resume=True))
    full, cut = load_checkpoint(tmp_path / "full" / "ckpt.pt"), load_checkpoint(tmp_path / "cut" / "ckpt.pt")
    assert full["step"] == cut["step"] == 7
    for key in ("g", "d"):
        for name, value in full[key].items():
            torch.testing.assert_close(cut[key][name], value, atol=1e-3, rtol=1e-3, msg=f"{key}.{name}")


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.ones(3))
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_torchrun_two_cpu_processes_run_two_ddp_steps(tmp_path, paired_root):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ackd_fast.cli",
        "train-teacher",
        "--dataroot",
        paired_root,
        "--out-dir",
        str(tmp_path),
        "--load-size",
        str(SIZE),
        "--crop-size",
        str(CROP),
        "--ngf",
        "4",
        "--ndf",
        "8",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 2
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and len(records) == 1  # only rank 0 logs (every 10 steps, and the last)


def test_every_flag_has_help_and_bad_values_raise(tmp_path, paired_root):
    assert all(f.metadata["help"] for f in fields(Config) if f.name != "job")
    parser = cli.build_parser()
    for command in ("train-teacher", "distill", "evaluate", "fid-stats", "demo"):
        sub = parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            assert action.help, (command, action.dest)
    with pytest.raises(ValueError, match="job"):
        train(_cfg(tmp_path, paired_root, job="fit"))
    with pytest.raises(ValueError, match="--teacher"):
        train(_cfg(tmp_path, paired_root, job="distill"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        train(_cfg(tmp_path / "run", str(tmp_path / "missing"), job="teacher"))
    assert not (tmp_path / "run").exists()  # a run that fails its checks leaves no folder behind
    with pytest.raises(ValueError, match="--compile-mode must be one of"):
        train(_cfg(tmp_path, paired_root, job="teacher", compile_mode="fast"))
    with pytest.raises(ValueError, match=r"--log-every must be >= 0 \(0: never\); got -1"):
        train(_cfg(tmp_path, paired_root, job="teacher", log_every=-1))
    with pytest.raises(ValueError, match=r"--stop-at > 0 .* --ckpt-every 0"):
        train(_cfg(tmp_path, paired_root, job="teacher", stop_at=1, ckpt_every=0))
    # each command takes the flags of its own job only
    distill = parser.parse_args(["distill", "--teacher", "t.pt", "--compile", "--compile-mode", "reduce-overhead"])
    assert distill.compile_mode == "reduce-overhead" and not hasattr(distill, "ndf")
    assert distill.ngf == 0 and distill.generator == "auto"  # a bare teacher file's architecture, inferred
    teacher = parser.parse_args(["train-teacher", "--ngf", "8"])
    assert teacher.ngf == 8 and not hasattr(teacher, "residual") and not hasattr(teacher, "teacher")
    only = {f.name: f.metadata["only"] for f in fields(Config) if f.name != "job"}
    assert {n for n, job in only.items() if job != "distill"} <= set(vars(teacher))
    assert not {n for n, job in only.items() if job == "distill"} & set(vars(teacher))


def test_every_zero_turns_its_thing_off(tmp_path, paired_root):
    cfg = _cfg(tmp_path, paired_root, job="teacher", log_every=0, sample_every=0, ckpt_every=0, eval_every=0)
    result = train(cfg)
    assert result["step"] == 2 and result["checkpoint"] is None and result["logs"] == {}
    assert (tmp_path / "log.jsonl").read_text() == "" and not (tmp_path / "samples").exists()
    assert not (tmp_path / "ckpt.pt").exists()
    # every 3 steps (and at the last) over 4 steps: steps 3 and 4, each record the mean over its own steps
    result = train(replace(cfg, log_every=3, ckpt_every=3, steps=4, overwrite=True))
    assert [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [3, 4]
    assert load_checkpoint(result["checkpoint"])["step"] == 4


def test_the_report_labels_the_ablation_as_the_paper_does():
    from ackd_fast.report import PUBLISHED, describe_run

    run = {"job": "distill", "ackd": True, "mode": "both", "recipe": "compress", "student_ngf": 16}
    assert describe_run(run | {"residual": True}) == "ACKD student ngf 16"
    assert describe_run(run | {"residual": False}) == "ACKD student ngf 16, w/o ACK-F residual"
    assert describe_run(run | {"mode": "fusion", "recipe": "self"}) == "ACKD self-distilled, ACK-F only"
    assert describe_run(run | {"ackd": False, "residual": False}) == "baseline student ngf 16"
    assert any(r["method"] == "ACKD w/o ACK-F residual" for r in PUBLISHED["edges2shoes"]["rows"])


def test_evaluate_on_the_sample_set_writes_the_report(tmp_path, teacher_ckpt, random_inception_file,
                                                     random_inception_sha256, capsys):  # fmt: skip
    out = tmp_path / "report"
    weights = ["--inception-weights", str(random_inception_file), "--inception-sha256", random_inception_sha256,
               "--kid-subsets", "3"]  # fmt: skip
    latency = ["--latency-runs", "2", "--latency-batch", "2", "--latency-dtypes", "fp32"]
    cli.main(["evaluate", "--checkpoint", teacher_ckpt, *weights, *latency, "--out-dir", str(out)])
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["selected"] == "final (step 2)" and rows[0]["images"] == 4
    row = rows[0]
    assert row["FID"] >= 0 and row["KID"] is not None and 0 < row["PSNR"] < 60 and -1 <= row["SSIM"] <= 1
    assert row["GMACs@256"] > row["GMACs@32"] > 0 and row["params_M"] > 0
    assert {"ms_fp32_b1", "ms_fp32_b2", "img_s_fp32_b2"} <= set(row)
    report = json.loads((out / "results.json").read_text())
    assert report["task"] == "edges2shoes" and report["published"]["rows"][0]["fid"] == 24.18
    assert any("not pytorch-fid's published file" in n for n in report["info"]["notes"])
    md = (out / "results.md").read_text()
    assert "| ACKD | 22.10 |" in md and "teacher resnet_9blocks ngf 4" in md and "fid_vs_macs.png" in md
    assert ".md" not in md.replace("results.md", "")  # the report cites the papers, not files outside the repo
    assert (out / "fid_vs_macs.png").is_file() and (out / "fid_reference.npz").is_file()


def test_select_on_val_keeps_the_best_generator_and_evaluate_reports_both(tmp_path, paired_root, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # no Inception weights: PSNR selects
    run = tmp_path / "run"
    train(_cfg(run, paired_root, job="teacher", steps=3, eval_every=1, select_on="val", val_size=3))
    assert "no FID/KID during training" in capsys.readouterr().out
    evals = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "eval" in r]
    assert [(r["step"], r["eval"], r["images"]) for r in evals] == [(1, "val", 3), (2, "val", 3), (3, "val", 3)]
    best = load_checkpoint(run / "best.pt")
    psnrs = {r["step"]: r["psnr"] for r in evals}
    assert best["selection"]["step"] == max(psnrs, key=psnrs.get) and best["selection"]["metric"] == "psnr"
    assert load_checkpoint(run / "ckpt.pt")["evaluation"]["best"] == best["selection"]
    cli.main(["evaluate", "--checkpoint", str(run / "ckpt.pt"), "--no-fid", "--latency-runs", "0"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["selected"].split(" ")[0] for r in rows] == ["final", "best"] and rows[0]["FID"] is None
    assert (run / "results.md").is_file() and (run / "results.json").is_file()


def test_evaluation_flags_check_their_values(tmp_path, paired_root, unpaired_root, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="--eval-every > 0"):
        train(_cfg(tmp_path, paired_root, job="teacher", select_on="val"))
    with pytest.raises(ValueError, match="--select-on must be one of"):
        train(_cfg(tmp_path, paired_root, job="teacher", select_on="test", eval_every=1))
    with pytest.raises(ValueError, match=r"needs FID.*--inception-weights"):
        train(_cfg(tmp_path, unpaired_root, job="teacher", model="cyclegan", select_on="val", eval_every=1))
    from ackd_fast.metrics import InceptionWeightsError

    with pytest.raises(InceptionWeightsError, match=r"missing\.pth"):
        missing = str(tmp_path / "missing.pth")
        train(_cfg(tmp_path, paired_root, job="teacher", eval_every=1, inception_weights=missing))


def test_fid_stats_command_writes_statistics(tmp_path, paired_root, random_inception_file, random_inception_sha256):
    from ackd_fast.metrics import load_stats

    folder = Path(paired_root) / "test"
    cli.main(
        [
            "fid-stats",
            str(folder),
            str(tmp_path / "ref.npz"),
            "--size",
            "32",
            "--inception-weights",
            str(random_inception_file),
            "--inception-sha256",
            random_inception_sha256,
        ]
    )
    stats = load_stats(tmp_path / "ref.npz")
    assert stats["mu"].shape == (2048,) and stats["features"].shape == (4, 2048) and stats["protocol"]["images"] == 4


@pytest.mark.parametrize("sample_set", ["sketch", "edges"])
def test_demo_end_to_end_in_miniature(tmp_path, sample_set):
    from ackd_fast.demo import DemoConfig, run_demo

    dc = DemoConfig(out_dir=str(tmp_path), sample_set=sample_set, teacher_steps=2, student_steps=2, seeds=2,
                    tile_stride=72, progress=False)  # fmt: skip
    result = run_demo(dc)
    models = [r["model"] for r in result["rows"]]
    trivial = ["trivial: training targets' mean colour", "trivial: the input itself"]
    assert models == [*trivial, "teacher (resnet_9blocks)", "ACKD student", "plain-KD student", "no-KD student"]
    assert result["trivial"] == max(result["rows"][: len(trivial)], key=lambda r: r["PSNR"])
    students = result["rows"][-3:]
    for row in students:
        assert row["seeds"] == 2 and len(row["PSNR_runs"]) == 2 and row["PSNR_mean"] == row["PSNR"]
        assert row["PSNR_std"] == pytest.approx(np.std(row["PSNR_runs"], ddof=1))
        assert row["SSIM_std"] >= 0 and row["train_s_mean"] > 0 and row["params_M"] == pytest.approx(0.137, abs=1e-3)
        assert row["GMACs@256"] == pytest.approx(1.41, 0.01)
    lead = result["leads"]["ackd_minus_plain"]
    assert lead["PSNR_mean"] == pytest.approx(students[0]["PSNR_mean"] - students[1]["PSNR_mean"])
    for kd in ("ackd", "plain", "none"):
        for seed in (0, 1):
            assert (tmp_path / kd / f"seed{seed}" / "ckpt.pt").is_file()
    assert load_checkpoint(tmp_path / "plain" / "seed1" / "ckpt.pt")["config"]["kd"] == "plain"
    for name in ("grid.png", "losses.png", "results.json", "results.md"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "results.json").read_text())["seeds"] == [0, 1]


# the scaler skips fp16 steps while it finds its scale, which the scheduler reports
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_steps_run(tmp_path, paired_root, teacher_ckpt, amp):
    # fp16 goes through the gradient scaler (whose first step may be skipped while it finds its scale)
    result = train(_cfg(tmp_path, paired_root, job="distill", teacher=teacher_ckpt, amp=amp, kv_stride=2))
    assert result["step"] == 2 and all(v == v for v in result["logs"].values())  # no NaN
    assert load_checkpoint(tmp_path / "ckpt.pt")["scaler"] != {} or amp == "bf16"


def test_compile_task_compiles_every_module_the_step_calls(paired_root, teacher_ckpt):
    from ackd_fast.assembly import build_task, compile_task

    objective, critic, _, _ = build_task(_cfg("unused", paired_root, job="distill", teacher=teacher_ckpt))
    compile_task(objective, critic, backend="eager")
    called = [objective.teacher, objective.student, *objective.refiners, *objective.connectors, *critic.discriminators]
    assert len(objective.refiners) == 3 and all(m._compiled_call_impl is not None for m in called)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_reduce_overhead_captures_and_replays_a_distillation_step_as_eager_runs_it(ieee_fp32):
    import contextlib

    from torch._dynamo.utils import counters

    from ackd_fast.assembly import build_distiller, build_optimizers, compile_task
    from ackd_fast.losses import Critic
    from ackd_fast.models import NLayerDiscriminator, mobile_resnet_9blocks, resnet_9blocks
    from ackd_fast.train import train_step

    cfg = Config(job="distill", kv_stride=2, steps=4)
    gen = torch.Generator("cuda").manual_seed(0)
    batches = [[torch.rand(2, 3, 64, 64, device="cuda", generator=gen) * 2 - 1 for _ in "ab"] for _ in range(4)]

    def run(mode):
        torch.manual_seed(0)
        teacher, student = resnet_9blocks(ngf=8), mobile_resnet_9blocks(ngf=4)
        objective = build_distiller(cfg, teacher, "resnet_9blocks", student, "mobile_resnet_9blocks", True).cuda()
        critic = Critic([NLayerDiscriminator(6, ndf=8)], objective.gan_mode).cuda()
        if mode:
            compile_task(objective, critic, mode=mode)
        g_opt, d_opt, _, _ = build_optimizers(cfg, objective, critic)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        losses = []
        for a, b in batches:
            if mode:
                torch.compiler.cudagraph_mark_step_begin()
            out, d_loss = train_step(objective, critic, critic, g_opt, d_opt, scaler, contextlib.nullcontext(), a, b)
            losses.append([out.loss.item(), d_loss.item(), *(v.item() for v in out.logs.values())])
        return torch.tensor(losses, dtype=torch.float64)

    eager = run(None)
    counters.clear()
    graphs = run("reduce-overhead")
    assert counters["inductor"]["cudagraph_skips"] == 0  # every compiled graph ran as a CUDA graph
    torch.testing.assert_close(graphs, eager, rtol=1e-3, atol=1e-4)
