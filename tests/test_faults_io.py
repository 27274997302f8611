"""Fault probe 2 (issue 31), the files a command reads and writes: export that replaces nothing unasked (7), evaluate
that checks its folder before scoring and prints each row (12), the study's committed records (14), high-bit-depth
and float images and linked folders (15), and one-line messages naming the file or flag (16). Each asserts the exit
code, the one-line message and that nothing was lost or overwritten."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import CROP, ENV, SIZE, assert_one_line_error, tiny_config

from ackd_fast import data, export, study
from ackd_fast.train import train

STUDY = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "2026-12-04-study-cpu"


def _cfg(out, dataroot, **kw):
    return tiny_config(out, dataroot, **({"steps": 1} | kw))


@pytest.fixture(scope="module")
def run(tmp_path_factory, root):
    """A finished one-step teacher run (pix2pix): its folder."""
    out = tmp_path_factory.mktemp("run") / "t"
    train(_cfg(out, root))
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- 7. export


def test_export_refuses_its_input_a_run_folder_and_its_own_sidecar(tmp_path, run, run_cli):
    ckpt = run / "ckpt.pt"
    before = _snapshot(run)
    (tmp_path / "x").mkdir()
    link = tmp_path / "link"
    link.symlink_to(run)
    cases = [
        (ckpt, "pth", "the checkpoint being exported"),  # probe 40: the run would no longer resume
        (link / "ckpt.pt", "peer", "the checkpoint being exported"),  # through a symlink
        (tmp_path / "x" / ".." / "link" / "ckpt.pt", "pt2", "the checkpoint being exported"),  # through ..
        (run / "log.jsonl", "peer", f"lies in the run folder {run.resolve()} (it holds ckpt.pt"),
        (run / "g.onnx", "onnx", "lies in the run folder"),
        (run / "samples" / "step_1.png", "peer", "lies in the run folder"),
    ]
    for out, fmt, message in cases:
        code, _, err = run_cli(["export", ckpt, "--format", fmt, "--out", out, "--size", 32, "--overwrite"])
        assert_one_line_error(code, err, 2, f"--out {out}", message)
    assert _snapshot(run) == before
    # a folder of the user's own inside the run folder is not the run's
    code, _, err = run_cli(["export", ckpt, "--format", "pth", "--out", run / "exports" / "g.pth"])
    assert code == 0 and (run / "exports" / "g.pth").is_file(), err
    # probe 41: the sidecar would replace the weights
    code, _, err = run_cli(["export", ckpt, "--format", "pth", "--out", tmp_path / "model.json"])
    assert_one_line_error(code, err, 2, "model.json would be overwritten by its own JSON sidecar")
    assert not (tmp_path / "model.json").exists()


def test_export_refuses_to_replace_the_sidecar_of_its_input(tmp_path, run, run_cli):
    exported = tmp_path / "g.pth"
    export.export(run / "ckpt.pt", "pth", exported)
    before = _snapshot(tmp_path)
    # g.pt's sidecar would be g.json, the sidecar that tells what g.pth holds
    code, _, err = run_cli(["export", exported, "--format", "pth", "--out", tmp_path / "g.pt", "--overwrite"])
    assert_one_line_error(code, err, 2, "the sidecar of the checkpoint being exported")
    assert _snapshot(tmp_path) == before


def test_export_replaces_an_existing_file_only_with_overwrite(tmp_path, run, run_cli):
    out = tmp_path / "g.pth"
    mine = tmp_path / "g.json"
    mine.write_text('{"my": "notes"}')  # not a sidecar: the pth export would write over it
    code, _, err = run_cli(["export", run / "ckpt.pt", "--format", "pth", "--out", out])
    assert_one_line_error(code, err, 2, f"{mine} exists; add --overwrite")
    assert mine.read_text() == '{"my": "notes"}' and not out.exists()
    peer = tmp_path / "latest_net_G.pth"
    peer.write_bytes(b"precious")
    code, _, err = run_cli(["export", run / "ckpt.pt", "--format", "peer", "--out", peer])
    assert_one_line_error(code, err, 2, f"{peer} exists; add --overwrite")
    assert peer.read_bytes() == b"precious"
    with pytest.raises(ValueError, match="exists; add --overwrite"):  # the Python API: overwrite=False
        export.export(run / "ckpt.pt", "peer", peer)
    code, _, _ = run_cli(["export", run / "ckpt.pt", "--format", "peer", "--out", peer, "--overwrite"])
    assert code == 0 and peer.read_bytes() != b"precious"
    assert export.export(run / "ckpt.pt", "peer", peer, overwrite=True)["files"] == [str(peer)]


@pytest.mark.parametrize("flags, message", [
    (["--format", "tflite"], "format (--format) must be one of"),
    (["--format", "onnx", "--size", "30"], "(--size) must be a positive multiple of 4"),
])  # fmt: skip
def test_export_bad_format_or_size_exits_2(tmp_path, run, run_cli, flags, message):
    code, _, err = run_cli(["export", run / "ckpt.pt", "--out", tmp_path / "g.out", *flags])
    assert_one_line_error(code, err, 2, message)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------- 12. evaluate


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_evaluate_checks_its_folder_before_scoring(tmp_path, run, run_cli, monkeypatch):
    from ackd_fast import report

    scored = []
    monkeypatch.setattr(report, "evaluate_generator", lambda *a, **k: scored.append(1) or {"images": 0})
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, _, err = run_cli(["evaluate", "--checkpoint", run / "ckpt.pt", "--no-fid", "--latency-runs", 0,
                                "--out-dir", locked / "report"])  # fmt: skip
    finally:
        locked.chmod(stat.S_IRWXU)
    assert_one_line_error(code, err, 1, f"cannot write into the report folder (--out-dir) {locked / 'report'}",
                    "Permission denied", "nothing was computed")  # fmt: skip
    assert not scored and not list(locked.iterdir())


def test_evaluate_refuses_an_unwritable_folder_before_scoring_as_root_too(tmp_path, run, run_cli, monkeypatch):
    # the probe's read-only file system, for any user: the probe file's write fails with EROFS
    from ackd_fast import report

    scored = []
    monkeypatch.setattr(report, "evaluate_generator", lambda *a, **k: scored.append(1) or {"images": 0})
    real = Path.write_bytes

    def read_only(self, content):
        if self.name.startswith(".write-test."):
            raise OSError(30, "Read-only file system", str(self))
        return real(self, content)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    before = _snapshot(run)
    code, _, err = run_cli(["evaluate", "--checkpoint", run / "ckpt.pt", "--no-fid", "--latency-runs", 0])
    assert_one_line_error(code, err, 1, f"cannot write into the report folder (--out-dir) {run}: Read-only file system")
    assert not scored and _snapshot(run) == before


def test_evaluate_prints_each_row_when_it_is_scored(tmp_path, run, run_cli, monkeypatch):
    from ackd_fast import report

    def failing_report(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", failing_report)
    code, out, err = run_cli(["evaluate", "--checkpoint", run / "ckpt.pt", "--no-fid", "--latency-runs", 0,
                              "--out-dir", tmp_path / "report"])  # fmt: skip
    assert_one_line_error(code, err, 1, "No space left on device")
    (row,) = json.loads(out)  # the rows, printed before the report was written
    assert row["checkpoint"] == str(run / "ckpt.pt") and row["selected"] == "final (step 1)" and row["PSNR"] > 0


# ----------------------------------------------------------------------------------------- 14. the study's records


def test_the_committed_study_reports_again_from_its_records(tmp_path):
    copy = shutil.copytree(STUDY, tmp_path / "study")
    # the committed records are what scores_from_report writes from the committed results.json
    rebuilt = tmp_path / "rebuilt"
    written = study.scores_from_report(STUDY / "results.json", rebuilt)
    assert len(written) == 1 + 3 * 10 + 4 * 3 + 10
    for path in written:
        assert path.read_bytes() == (STUDY / "runs" / path.relative_to(rebuilt)).read_bytes(), path
    assert "reconstructed" in json.loads((STUDY / "runs" / "ackd" / "seed0" / "score.json").read_text())
    # the README's command, on a copy: the same numbers as the committed report
    proc = subprocess.run([sys.executable, "-m", "ackd_fast.cli", "study", "--report", "--out-dir", copy / "runs"],
                          capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
    committed = json.loads((STUDY / "results.json").read_text())
    again = json.loads((copy / "runs" / "results.json").read_text())
    assert list(again["arms"]) == list(committed["arms"])
    for arm, row in committed["arms"].items():
        if "diagnostics_seed0" in row:
            assert again["arms"][arm].pop("diagnostics_seed0") == {}  # it came from log.jsonl, which was lost
            row.pop("diagnostics_seed0")
        assert again["arms"][arm] == row, arm  # means, stds, each run's score; train_s: the arm's mean again
    assert again["vs_plain"] == committed["vs_plain"] and again["verdict"] == committed["verdict"]
    assert {k: v for k, v in again["teacher"].items() if k != "reconstructed"} == committed["teacher"]
    table = lambda text: text.split("\ncommand:")[0]
    assert table((copy / "runs" / "results.md").read_text()) == table((STUDY / "results.md").read_text())


@pytest.mark.skipif(not (STUDY.parent.parent.parent / ".git").exists(), reason="not a git checkout")
def test_study_records_are_not_ignored_but_checkpoints_are():
    repo = STUDY.parent.parent.parent
    records = [f"benchmarks/results/X/runs/{arm}/seed0/{name}" for arm in ("ackd", "teacher")
               for name in ("score.json", "log.jsonl")]  # fmt: skip
    rest = ["runs/study/ackd/seed0/score.json", "benchmarks/results/X/runs/ackd/seed0/ckpt.pt",
            "benchmarks/results/X/runs/data/train/a.png", "benchmarks/results/X/runs/ackd/seed0/samples/s.png"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *records, *rest], cwd=repo, capture_output=True,
                             text=True).stdout.split()  # fmt: skip
    assert ignored == rest


# ----------------------------------------------------------------------------------------- 15. image data


def _grey(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values).save(path)  # float32: mode F, int32: mode I
    return path


def test_16_bit_and_float_images_keep_their_brightness(tmp_path):
    ramp = np.linspace(0, 1, 40 * 20).reshape(20, 40)
    png = Image.fromarray((ramp * 65535).round().astype(np.uint16))  # a 16-bit grey PNG: I;16 when read back
    png.save(tmp_path / "deep.png")
    tif = _grey(tmp_path / "float.tif", ramp.astype(np.float32))
    expected = np.rint(ramp * 255)
    for path in (tmp_path / "deep.png", tif):
        with Image.open(path) as im:
            assert im.mode in ("I;16", "I", "F"), im.mode
        rgb = np.asarray(data.read_image(path), dtype=np.float64)
        assert rgb.shape == (20, 40, 3) and np.abs(rgb[..., 0] - expected).max() <= 1, path  # not white, not black
        assert data.check_image(path) == ""


@pytest.mark.parametrize("values, reason", [
    (np.full((8, 8), 1.5, np.float32), "holds float values (mode F) in [1.5, 1.5]; expected them in [0, 1]"),
    (np.linspace(-0.25, 0.5, 64, dtype=np.float32).reshape(8, 8), "in [-0.25, 0.5]"),
    (np.full((8, 8), np.nan, np.float32), "not finite (NaN or inf)"),
])  # fmt: skip
def test_float_images_outside_0_1_are_refused_naming_the_file(tmp_path, values, reason):
    path = _grey(tmp_path / "odd.tif", values)
    assert reason in data.check_image(path)
    with pytest.raises(ValueError, match=r"cannot read image .*odd\.tif: ") as e:
        data.read_image(path)
    assert reason in str(e.value)


def test_32_bit_integer_images_beyond_16_bits_are_refused(tmp_path):
    path = _grey(tmp_path / "wide.tif", np.full((8, 8), 70000, np.int32))
    assert data.check_image(path) == "holds integer values (mode I) in [70000, 70000]; expected them in [0, 65535]"


def test_float_images_outside_0_1_stop_training_in_one_line(tmp_path, root, run_cli):
    dataroot = shutil.copytree(root, tmp_path / "data")
    bad = _grey(dataroot / "train" / "hdr.tif", np.full((8, 16), 3.0, np.float32))
    out = tmp_path / "run"
    code, _, err = run_cli(["train-teacher", "--dataroot", dataroot, "--out-dir", out, "--load-size", SIZE,
                            "--crop-size", CROP, "--ngf", 4, "--ndf", 8, "--workers", 0, "--steps", 1])  # fmt: skip
    assert_one_line_error(code, err, 1, str(bad), "expected them in [0, 1]")
    assert not out.exists()


def test_linked_folders_are_listed_once_and_loops_end(tmp_path):
    folder, elsewhere = tmp_path / "train", tmp_path / "ext"
    (folder / "real").mkdir(parents=True)
    (elsewhere / "part2").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 4)).save(folder / "real" / f"{i}.png")
        Image.new("RGB", (8, 4)).save(elsewhere / "part2" / f"{i}.png")
    (folder / "part2").symlink_to(elsewhere / "part2")  # probe 33: 4 of 8 used
    (folder / "loop").symlink_to(folder)  # probe 32: a loop
    (folder / "again").symlink_to(folder / "real")  # the same files by a second path
    (folder / "real" / "twin.png").symlink_to(folder / "real" / "0.png")
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    # real/ is walked once, as again/, the first of its two paths in order; twin.png is 0.png
    files = data.list_images(folder)
    assert files == [folder / sub / f"{i}.png" for sub in ("again", "part2") for i in range(4)]


def test_a_linked_training_folder_is_trained_on(tmp_path, root):
    dataroot = shutil.copytree(root, tmp_path / "data")
    moved = tmp_path / "elsewhere"
    (dataroot / "train").rename(moved)
    (dataroot / "train").mkdir()
    (dataroot / "train" / "linked").symlink_to(moved)
    (dataroot / "train" / "loop").symlink_to(dataroot / "train")
    assert len(data.make_dataset(dataroot, "aligned")) == len(data.list_images(moved)) > 0


def test_a_non_utf8_file_name_trains(tmp_path, root, run_cli):
    dataroot = shutil.copytree(root, tmp_path / "data")
    first = data.list_images(dataroot / "train")[0]
    bad = os.path.join(os.fsencode(dataroot / "train"), b"bad\xffname.png")
    os.rename(os.fsencode(first), bad)
    out = tmp_path / "run"
    code, _, err = run_cli(["train-teacher", "--dataroot", dataroot, "--out-dir", out, "--load-size", SIZE,
                            "--crop-size", CROP, "--ngf", 4, "--ndf", 8, "--workers", 0, "--steps", 1,
                            "--sample-every", 0, "--no-progress"])  # fmt: skip
    assert code == 0, err
    assert (out / "ckpt.pt").is_file()
    files = data.list_images(dataroot / "train")
    assert data.names_digest(files, dataroot) != data.names_digest(files[1:], dataroot)


def test_names_digest_is_unchanged_for_utf8_names(tmp_path):
    import hashlib

    names = ["train/a.png", "train/é/b.png", "train/z.png"]
    expected = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]  # what checkpoints recorded
    assert data.names_digest([tmp_path / n for n in names], tmp_path) == expected


# ----------------------------------------------------------------------------------------- 16. messages


def _bomb(path: Path) -> Path:
    """A PNG whose header claims 20000x20000 pixels (over PIL's limit: a decompression bomb); the header alone, which
    is all that PIL reads before refusing it."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 2501))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def test_a_decompression_bomb_in_the_scored_split_is_named(tmp_path, root, run_cli):
    dataroot = shutil.copytree(root, tmp_path / "data")
    out = tmp_path / "t"
    train(_cfg(out, dataroot))
    bomb = _bomb(dataroot / "test" / "zz_bomb.png")
    before = _snapshot(out)
    code, _, err = run_cli(["evaluate", "--checkpoint", out / "ckpt.pt", "--no-fid", "--latency-runs", 0])
    assert_one_line_error(code, err, 1, f"cannot read image {bomb}", "decompression bomb")
    assert _snapshot(out) == before


@pytest.mark.parametrize("model", ["cyclegan", "pix2pix"])
def test_evaluate_on_data_of_the_other_layout_says_which_layout_the_checkpoint_needs(tmp_path, root, unpaired,
                                                                                     run_cli, model):  # fmt: skip
    own, other = (unpaired, root) if model == "cyclegan" else (root, unpaired)
    out = tmp_path / "run"
    train(_cfg(out, own, model=model))
    before = _snapshot(out)
    code, _, err = run_cli(["evaluate", "--checkpoint", out / "ckpt.pt", "--dataroot", other, "--no-fid",
                            "--latency-runs", 0])  # fmt: skip
    needs, holds = (("unaligned folders (testA/ or valA/)", "aligned data (test/)") if model == "cyclegan"
                    else ("aligned pairs (A|B side by side: test/ or val/)", "unaligned data (testA/)"))  # fmt: skip
    assert_one_line_error(code, err, 1, f"is a --model {model} run, scored on {needs}", f"holds {holds}",
                    "--dataset-mode")  # fmt: skip
    assert _snapshot(out) == before


def test_a_sidecar_whose_config_is_not_an_object_is_named(tmp_path, run, run_cli):
    exported = tmp_path / "g.pth"
    export.export(run / "ckpt.pt", "pth", exported)
    side = json.loads((tmp_path / "g.json").read_text())
    (tmp_path / "g.json").write_text(json.dumps(side | {"config": "x"}))
    code, _, err = run_cli(["evaluate", "--checkpoint", exported, "--no-fid", "--latency-runs", 0])
    assert_one_line_error(code, err, 1, f"{tmp_path / 'g.json'}, the sidecar of {exported}: 'config' must be a "
                          "JSON object", "got str 'x'")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.pth"]


@pytest.mark.parametrize("flags, message", [
    (["--batch", "a"], "--batch takes comma-separated positive ints (e.g. 1,4), got 'a'"),
    (["--batch", "1,0"], "--batch takes comma-separated positive ints"),
    (["--dtypes", "fp8"], "--dtypes takes comma-separated names among fp32, bf16, fp16; got ['fp8']"),
    (["--rounds", "0"], "--rounds must be an int >= 1"),
    (["--paths", "eager,bogus"], "--paths takes comma-separated names among eager, compile"),
    (["--size", "30"], "--size must be a positive multiple of 4"),
    (["--device", "tpu"], "--device must be one of auto, cpu, cuda; got 'tpu'"),
])  # fmt: skip
def test_bench_deploy_checks_every_value_before_timing(tmp_path, run_cli, monkeypatch, flags, message):
    from ackd_fast import bench

    timed = []
    monkeypatch.setattr(bench, "compare_paths", lambda *a, **k: timed.append(1) or [])
    code, _, err = run_cli(["bench-deploy", "--arch", "mobile_resnet_9blocks:4", "--size", 16, "--out",
                            tmp_path / "out", *flags])  # fmt: skip
    assert_one_line_error(code, err, 2, message)
    assert not timed and not (tmp_path / "out").exists()


def test_bench_deploy_checks_its_folder_before_timing(tmp_path, run_cli, monkeypatch):
    from ackd_fast import bench

    timed = []
    monkeypatch.setattr(bench, "compare_paths", lambda *a, **k: timed.append(1) or [])
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run_cli(["bench-deploy", "--arch", "mobile_resnet_9blocks:4", "--size", 16, "--out",
                            blocker / "out"])  # fmt: skip
    assert_one_line_error(code, err, 1, f"cannot write into the results folder (--out) {blocker / 'out'}")
    assert not timed


def test_deploy_says_what_is_wrong_with_the_example_before_compiling(monkeypatch):
    from ackd_fast.deploy import deploy
    from ackd_fast.models import build_generator

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda *a, **k: compiled.append(1))
    g = build_generator("mobile_resnet_9blocks", 4)
    x = torch.randn(1, 3, 16, 16)
    cases = [
        (x.clone().index_fill_(3, torch.tensor([2]), float("nan")), "example_input holds NaN or inf values"),
        (torch.full_like(x, float("inf")), "example_input holds NaN or inf values"),
        (torch.randn(1, 4, 16, 16), "example_input has 4 channels (shape (1, 4, 16, 16)); the generator takes 3"),
        (x.to("meta"), "example_input is on the meta device"),
    ]
    for example, message in cases:
        with pytest.raises(ValueError) as e:
            deploy(g, example)
        assert message in str(e.value) and "a bug" not in str(e.value)
    assert not compiled


def test_deploy_blames_the_generator_for_a_non_finite_output():
    from ackd_fast.deploy import deploy
    from ackd_fast.models import build_generator
    from ackd_fast.ops.inference import kernels_available

    if kernels_available() is not None:
        pytest.skip(f"the inference kernels are not built: {kernels_available()}")

    g = build_generator("mobile_resnet_9blocks", 4)
    with torch.no_grad():
        next(p for p in g.parameters() if p.dim() == 4).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"generator's own \(eager\) output on example_input holds NaN or inf"):
        deploy(g, torch.randn(1, 3, 16, 16), method="kernels")
