"""`ackd-fast translate` (issue 32, 1): a folder of mixed sizes and formats translated by a run checkpoint, an exported
generator and a peer-layout file, each output compared with the generator's own forward; the index page's rows;
A|B pairs and CycleGAN directions; and the bad inputs, each refused in one line with nothing written."""

import html.parser
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import assert_one_line_error
from torch.nn import functional as F

from ackd_fast import export, metrics
from ackd_fast.checkpoint import save_checkpoint
from ackd_fast.models import build_generator

NGF = 4
# (relative path, (width, height)): sizes that are multiples of 4 and sizes that are not, every format the datasets read
IMAGES = {
    "a.png": (16, 12),
    "b.jpg": (18, 22),
    "sub/c.bmp": (24, 16),
    "sub/d.webp": (12, 20),
    "sub/deeper/e.tif": (13, 9),
    "f.ppm": (16, 16),
}


def _write_images(folder: Path, rng: np.random.Generator, images=IMAGES) -> Path:
    for rel, (w, h) in images.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # smooth content (noise at a quarter of the size, enlarged), as photographs are: JPEG keeps it close
        coarse = Image.fromarray(rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8))
        coarse.resize((w, h), Image.BILINEAR).save(path)
    return folder


def _run_checkpoint(path: Path, generator, model="pix2pix", direction="AtoB", reverse=None) -> Path:
    """What train.generator_state writes (plus, for a CycleGAN teacher's ckpt.pt, its objective's generator_b)."""
    config = {"job": "teacher", "model": model, "direction": direction, "generator": "resnet_9blocks", "ngf": NGF}
    state = {"config": config, "step": 3,
             "generator": {"name": "resnet_9blocks", "ngf": NGF, "state": generator.state_dict()}}  # fmt: skip
    if reverse is not None:
        state["g"] = {f"generator.{k}": v for k, v in generator.state_dict().items()} | {
            f"generator_b.{k}": v for k, v in reverse.state_dict().items()
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, path)
    return path


@pytest.fixture
def generator():
    return build_generator("resnet_9blocks", NGF).eval()


@pytest.fixture
def images(tmp_path, np_rng):
    return _write_images(tmp_path / "photos", np_rng)


def _expected(generator, path: Path, half: str = "") -> np.ndarray:
    """The generator's forward on the image read as the datasets read it, padded by reflection to a multiple of 4
    and cropped back, quantised as the metrics quantise."""
    im = Image.open(path).convert("RGB")
    if half:
        w, h = im.size
        im = im.crop((0, 0, w // 2, h)) if half == "A" else im.crop((w // 2, 0, w, h))
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    h, w = x.shape[-2:]
    with torch.no_grad():
        y = generator(F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect"))[..., :h, :w]
    return metrics.quantize(y)[0].permute(1, 2, 0).numpy()


def _check_outputs(generator, inputs: Path, out: Path) -> None:
    for rel in IMAGES:
        result = np.asarray(Image.open(out / rel).convert("RGB")).astype(int)
        expected = _expected(generator, inputs / rel).astype(int)
        assert result.shape == expected.shape, rel
        lossy = Path(rel).suffix == ".jpg"
        # a batch's convolutions may round differently from one image's: at most one step of uint8 apart
        diff = np.abs(result - expected)
        assert diff.mean() < 4 if lossy else diff.max() <= 1, (rel, diff.mean(), diff.max())


class _Rows(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.headers, self.in_header = [], [], False

    def handle_endtag(self, tag):
        self.in_header = self.in_header and tag != "th"

    def handle_starttag(self, tag, attrs):
        self.in_header = tag == "th"
        if tag == "tr":
            self.rows.append([])
        elif tag == "img":
            self.rows[-1].append(dict(attrs)["src"])

    def handle_data(self, text):
        if self.in_header:
            self.headers.append(text)


def _index(out: Path) -> _Rows:
    page = _Rows()
    page.feed((out / "index.html").read_text())
    return page


def test_a_run_checkpoint_translates_a_folder_of_mixed_sizes_and_formats(tmp_path, images, generator, run_cli):
    ckpt = _run_checkpoint(tmp_path / "run" / "ckpt.pt", generator)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["translate", ckpt, "--input", images, "--output", out, "--index", "--batch-size", 2])
    assert code == 0, err
    result = json.loads(stdout)
    assert result["images"] == len(IMAGES) and result["skipped"] == []
    _check_outputs(generator, images, out)
    page = _index(out)
    assert page.headers == ["name", "input", "output"]
    rows = page.rows[1:]
    assert len(rows) == len(IMAGES)
    for rel, (input_src, output_src) in zip(sorted(IMAGES), rows, strict=True):
        assert (out / output_src).resolve() == (out / rel).resolve()
        assert (out / input_src).resolve() == (images / rel).resolve()


@pytest.mark.parametrize("fmt", ["pth", "peer"])
def test_an_exported_and_a_peer_layout_generator_translate_as_the_model_does(tmp_path, images, generator, fmt,
                                                                            run_cli):  # fmt: skip
    ckpt = _run_checkpoint(tmp_path / "run" / "ckpt.pt", generator)
    exported = tmp_path / "exported" / "latest_net_G.pth"
    export.export(ckpt, fmt, exported)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["translate", exported, "--input", images, "--output", out])
    assert code == 0, err
    assert json.loads(stdout)["source"] == ("exported generator" if fmt == "pth" else "GAN Compression / OMGD layout")
    _check_outputs(generator, images, out)
    assert not (out / "index.html").exists()


def test_size_resizes_every_image(tmp_path, images, generator, run_cli):
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    out = tmp_path / "out"
    code, _, err = run_cli(["translate", ckpt, "--input", images / "a.png", images / "sub", "--output", out,
                            "--size", 8])  # fmt: skip
    assert code == 0, err
    # a file given alone keeps its name, a folder's images their path relative to it
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "c.bmp", "d.webp", "deeper/e.tif"]
    assert {Image.open(out / p).size for p in written} == {(8, 8)}


def test_aligned_pairs_show_input_output_and_target(tmp_path, np_rng, generator, run_cli):
    pairs = _write_images(tmp_path / "pairs", np_rng, {"p1.png": (32, 12), "p2.png": (24, 8)})
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    for direction, half, target_half in (("AtoB", "A", "B"), ("BtoA", "B", "A")):
        out = tmp_path / f"out_{direction}"
        ckpt = _run_checkpoint(tmp_path / direction / "ckpt.pt", generator, direction=direction)
        code, _, err = run_cli(["translate", ckpt, "--input", pairs, "--output", out, "--aligned", "--index"])
        assert code == 0, err
        for name in ("p1.png", "p2.png"):
            result = np.asarray(Image.open(out / name)).astype(int)
            assert np.abs(result - _expected(generator, pairs / name, half).astype(int)).max() <= 1
        page = _index(out)
        assert page.headers == ["name", "input", "output", "target"]
        input_src, output_src, target_src = page.rows[1]
        whole = np.asarray(Image.open(pairs / "p1.png"))
        sides = {"A": whole[:, :16], "B": whole[:, 16:]}
        assert (np.asarray(Image.open(out / input_src)) == sides[half]).all()
        assert (np.asarray(Image.open(out / target_src)) == sides[target_half]).all()
        assert output_src == "p1.png"


def test_a_cyclegan_checkpoint_needs_a_direction_and_maps_both(tmp_path, images, generator, run_cli):
    reverse = build_generator("resnet_9blocks", NGF).eval()
    ckpt = _run_checkpoint(tmp_path / "run" / "ckpt.pt", generator, model="cyclegan", reverse=reverse)
    code, _, err = run_cli(["translate", ckpt, "--input", images, "--output", tmp_path / "none"])
    assert_one_line_error(code, err, 2, str(ckpt), "CycleGAN", "--direction AtoB or BtoA")
    assert not (tmp_path / "none").exists()
    for direction, g in (("AtoB", generator), ("BtoA", reverse)):
        out = tmp_path / direction
        code, _, err = run_cli(["translate", ckpt, "--input", images, "--output", out, "--direction", direction])
        assert code == 0, err
        _check_outputs(g, images, out)
    best = _run_checkpoint(tmp_path / "run2" / "best.pt", generator, model="cyclegan")  # one generator only
    code, _, err = run_cli(["translate", best, "--input", images, "--output", tmp_path / "x", "--direction", "BtoA"])
    assert_one_line_error(code, err, 1, str(best), "for AtoB only")


def test_unreadable_files_are_skipped_with_a_warning_or_refused_with_strict(tmp_path, images, generator, run_cli):
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    (images / "broken.png").write_bytes(b"not a png")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "strict"
    code, _, err = run_cli(["translate", ckpt, "--input", images, notes, "--output", out, "--strict"])
    assert_one_line_error(code, err, 1, "--strict", str(images / "broken.png"), str(notes), "2 of the")
    assert not out.exists()
    out = tmp_path / "lenient"
    code, stdout, err = run_cli(["translate", ckpt, "--input", images, notes, "--output", out])
    assert code == 0, err
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipping") for w in warnings)
    assert str(images / "broken.png") in err and str(notes) in err
    assert json.loads(stdout)["images"] == len(IMAGES)
    assert not (out / "broken.png").exists()


def test_an_output_folder_inside_an_input_folder_is_refused(tmp_path, images, generator, run_cli):
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    before = sorted(images.rglob("*"))
    code, _, err = run_cli(["translate", ckpt, "--input", images, "--output", images / "sub" / "out"])
    assert_one_line_error(code, err, 2, "inside the input folder", str(images))
    assert sorted(images.rglob("*")) == before


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, images, generator, run_cli):
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "c.bmp").write_bytes(b"mine")
    code, _, err = run_cli(["translate", ckpt, "--input", images, "--output", out])
    assert_one_line_error(code, err, 2, "exist", str(out / "sub" / "c.bmp"), "--overwrite")
    assert (out / "sub" / "c.bmp").read_bytes() == b"mine"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["c.bmp"]  # nothing else written
    code, _, err = run_cli(["translate", ckpt, "--input", images, "--output", out, "--overwrite"])
    assert code == 0, err
    assert Image.open(out / "sub" / "c.bmp").size == (24, 16)


def test_two_inputs_written_to_one_file_are_refused(tmp_path, images, generator, run_cli):
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((images / "a.png").read_bytes())
    code, _, err = run_cli(["translate", ckpt, "--input", images, other, "--output", tmp_path / "out"])
    assert_one_line_error(code, err, 2, str(images / "a.png"), str(other / "a.png"), "separate --output")
    assert not (tmp_path / "out").exists()


def test_a_generator_that_cannot_take_rgb_is_refused(tmp_path, images, run_cli, monkeypatch):
    from ackd_fast import translate

    grey = build_generator("resnet_9blocks", NGF, in_channels=1)
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", build_generator("resnet_9blocks", NGF))
    # no file format of ours holds a 1-channel generator yet (read_generator builds RGB ones): the reader is stubbed
    real = translate.read_generator

    def grey_file(path):
        g = real(path)
        g.generator = grey
        return g

    monkeypatch.setattr(translate, "read_generator", grey_file)
    code, _, err = run_cli(["translate", ckpt, "--input", images, "--output", tmp_path / "out"])
    assert_one_line_error(code, err, 1, str(ckpt), "1-channel", "3 channels")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [(["--batch-size", 0], "--batch-size"), (["--size", -1], "--size"), (["--device", "tpu"], "--device")],
)
def test_bad_flag_values_exit_2(tmp_path, images, generator, run_cli, flags, message):
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    code, _, err = run_cli(["translate", ckpt, "--input", images, "--output", tmp_path / "out", *flags])
    assert_one_line_error(code, err, 2, message)
    assert not (tmp_path / "out").exists()


def test_a_missing_input_is_named(tmp_path, generator, run_cli):
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    code, _, err = run_cli(["translate", ckpt, "--input", tmp_path / "nowhere", "--output", tmp_path / "out"])
    assert_one_line_error(code, err, 1, str(tmp_path / "nowhere"))


def test_fast_goes_through_deploy_with_the_same_outputs(tmp_path, images, generator, run_cli, monkeypatch):
    from ackd_fast import translate

    # deploy's "kernels" path: the same rewrite as --fast's kernels+inductor on a CPU, without the minute of compiling
    monkeypatch.setattr(translate, "fast_method", lambda device, dtype: "kernels")
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["translate", ckpt, "--input", images, "--output", out, "--fast", "--batch-size", 4])
    assert code == 0, err
    assert "ackd_fast." in json.loads(stdout)["method"]  # the kernels swapped in
    _check_outputs(generator, images, out)


def test_amp_bf16_stays_close_to_fp32(tmp_path, images, generator, run_cli):
    ckpt = _run_checkpoint(tmp_path / "ckpt.pt", generator)
    for amp in ("none", "bf16"):
        code, stdout, err = run_cli(["translate", ckpt, "--input", images / "a.png", "--output", tmp_path / amp,
                                     "--amp", amp])  # fmt: skip
        assert code == 0, err
        assert ("bf16" in json.loads(stdout)["method"]) == (amp == "bf16")
    fp32, bf16 = (np.asarray(Image.open(tmp_path / amp / "a.png")).astype(int) for amp in ("none", "bf16"))
    assert np.abs(fp32 - _expected(generator, images / "a.png").astype(int)).max() <= 1
    assert 0 < np.abs(fp32 - bf16).mean() < 8  # bf16 rounds (8 bits of mantissa), it does not compute another image
    code, _, err = run_cli(["translate", ckpt, "--input", images, "--output", tmp_path / "x", "--amp", "fp16"])
    assert code == 2 and "--amp" in err and not (tmp_path / "x").exists()
