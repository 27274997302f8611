"""Files from elsewhere run no code and cost no more memory than their size (issue 31, points 1 and 2): a pickle
as the Inception weights (given, or in the torch hub cache), a checkpoint whose zip records are compressed, and a
sidecar whose config asks for huge images. Each is refused in one line naming the file, before anything in it runs."""

import json
import os
import pickle
import zipfile

import pytest
import torch
from tiny_runs import assert_one_line_error, sample_set, tiny_config

from ackd_fast import checkpoint, metrics
from ackd_fast.train import train


class _Payload:
    """Unpickling this runs os.system: the attack a weights file can carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_file(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"Conv2d_1a_3x3.conv.weight": _Payload(marker)}, f, protocol=2)
    return path, marker


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = sample_set(tmp_path_factory.mktemp("paired"))
    out = tmp_path_factory.mktemp("teacher")
    train(tiny_config(out, root, steps=2))
    return out / "ckpt.pt", root


def test_a_pickle_as_inception_weights_is_refused_unread(evil_file, teacher, run_cli, tmp_path):
    evil, marker = evil_file
    ckpt, root = teacher
    digest = metrics.file_sha256(evil)
    commands = [
        ["fid-stats", root / "test", tmp_path / "s.npz", "--inception-weights", evil],
        ["evaluate", "--checkpoint", ckpt, "--inception-weights", evil, "--latency-runs", 0,
         "--out-dir", tmp_path / "r"],
    ]
    for argv in commands:
        code, _, err = run_cli(argv)
        assert_one_line_error(code, err, 1, str(evil), f"sha256 {digest}", metrics.INCEPTION_SHA256, "refused unread")
        assert not marker.exists()
    # The user vouches for the file by its digest: it is read, with weights_only=True, and still runs nothing.
    for argv in commands:
        code, _, err = run_cli([*argv, "--inception-sha256", digest])
        assert_one_line_error(code, err, 1, str(evil), "would run code")
        assert not marker.exists()
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "r" / "results.json").exists()


def test_a_pickle_as_inception_weights_stops_training_before_its_first_step(evil_file, teacher, tmp_path):
    evil, marker = evil_file
    _, root = teacher
    cfg = tiny_config(tmp_path / "run", root, steps=2, eval_every=1, inception_weights=str(evil))
    with pytest.raises(ValueError, match="refused unread"):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_pickle_in_the_torch_hub_cache_is_refused_unread(evil_file, teacher, run_cli, tmp_path, monkeypatch):
    evil, marker = evil_file
    ckpt, _ = teacher
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / metrics.INCEPTION_FILE).write_bytes(evil.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    code, _, err = run_cli(["evaluate", "--checkpoint", ckpt, "--latency-runs", 0, "--out-dir", tmp_path / "r"])
    assert_one_line_error(code, err, 1, str(hub / metrics.INCEPTION_FILE), "refused unread")
    assert not marker.exists()


def test_the_published_digest_is_the_default_and_a_bad_one_is_a_usage_error(run_cli, tmp_path):
    assert metrics.INCEPTION_SHA256.startswith(metrics.INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0])
    code, _, err = run_cli(["fid-stats", tmp_path, tmp_path / "s.npz", "--inception-sha256", "xyz"])
    assert_one_line_error(code, err, 2, "--inception-sha256 must be 64 hexadecimal digits", "'xyz'")


def _deflated_copy(src, dest, extra_bytes: int) -> None:
    """`src` (a torch.save zip) re-zipped with DEFLATE, plus a record of `extra_bytes` zeros: what probe 55 sent."""
    with zipfile.ZipFile(src) as z_in, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z_out:
        for info in z_in.infolist():
            z_out.writestr(info.filename, z_in.read(info.filename))
        prefix = z_in.infolist()[0].filename.split("/")[0]
        z_out.writestr(f"{prefix}/data/999", bytes(extra_bytes))


def test_a_checkpoint_with_compressed_records_is_refused_before_torch_reads_it(tmp_path, monkeypatch, run_cli):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(3)}, plain)
    bomb = tmp_path / "bomb.pth"
    _deflated_copy(plain, bomb, 64 << 20)
    assert bomb.stat().st_size < 1 << 20  # 64 MiB of records in under 1 MiB of file

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(ValueError, match=r"refused to load .*bomb\.pth: its record .* is compressed"):
        checkpoint.load_tensors(bomb)
    code, _, err = run_cli(["export", bomb, "--format", "pth", "--out", tmp_path / "out.pth"])
    assert_one_line_error(code, err, 1, str(bomb), "is compressed")
    assert not (tmp_path / "out.pth").exists()
    monkeypatch.undo()
    assert torch.equal(checkpoint.load_tensors(plain)["w"], torch.zeros(3))  # what torch.save writes still loads


def test_records_that_declare_more_bytes_than_the_file_are_refused(tmp_path):
    path = tmp_path / "forged.pth"
    torch.save({"w": torch.zeros(4)}, path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    # the central directory's uncompressed size of the first record, forged to 1 GiB (and its compressed size)
    central = raw.rfind(b"PK\x01\x02", 0, len(raw))
    while central > 0 and raw[central + 46 : central + 46 + len(info.filename)] != info.filename.encode():
        central = raw.rfind(b"PK\x01\x02", 0, central)
    raw[central + 20 : central + 28] = (1 << 30).to_bytes(4, "little") * 2
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"forged\.pth"):
        checkpoint.load_tensors(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crop_size": 8192, "load_size": 8192}, "--crop-size must be >= 4 and <= 4096"),
        ({"ngf": "abc"}, "--ngf must be a number"),
    ],
)
def test_an_export_sidecar_config_is_checked_as_flags_are(teacher, run_cli, tmp_path, change, message):
    ckpt, _ = teacher
    exported = tmp_path / "g.pth"
    code, _, err = run_cli(["export", ckpt, "--format", "pth", "--out", exported])
    assert code == 0, err
    side = tmp_path / "g.json"
    sidecar = json.loads(side.read_text())
    sidecar["config"] |= change
    side.write_text(json.dumps(sidecar))
    code, _, err = run_cli(["evaluate", "--checkpoint", exported, "--no-fid", "--latency-runs", 0,
                            "--out-dir", tmp_path / "r"])  # fmt: skip
    assert_one_line_error(code, err, 1, str(exported), "carries a run config that is not valid", message)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ngf": "abc"}, "'ngf' must be a positive int, got 'abc'"),
        ({"name": "nope"}, "'name' must be one of"),
        ({"direction": 5}, "'direction' must be one of AtoB, BtoA"),
        ({"model": "x"}, "'model' must be one of pix2pix, cyclegan"),
        ({"ngf": 10**9}, "4 output channels, not the ngf 1000000000 asked for"),  # nothing that wide is built
    ],
)
def test_an_export_sidecar_is_checked_before_its_values_are_used(teacher, run_cli, tmp_path, change, message):
    ckpt, _ = teacher
    exported = tmp_path / "g.pth"
    assert run_cli(["export", ckpt, "--format", "pth", "--out", exported])[0] == 0
    side = tmp_path / "g.json"
    side.write_text(json.dumps(json.loads(side.read_text()) | change))
    code, _, err = run_cli(["export", exported, "--format", "peer", "--out", tmp_path / "peer.pth"])
    assert_one_line_error(code, err, 1, message)
    assert str(side) in err or str(exported) in err
    assert not (tmp_path / "peer.pth").exists()
