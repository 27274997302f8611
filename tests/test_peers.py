"""Loading the peers' generators (GAN Compression, OMGD, pytorch-CycleGAN-and-pix2pix): every layout gives the
peer's own forward bit for bit (fp32, inputs inside and outside [-1, 1]); every bad file is refused with an error
naming it; a miniature distillation from a peer teacher and discriminator on a train/ + val/ folder."""

import json
import re

import numpy as np
import pytest
import torch
from peer_layouts import (
    discriminator_forward,
    discriminator_shapes,
    old_instance_norm_stats,
    random_state,
    resnet_forward,
    resnet_shapes,
    unet_forward,
    unet_shapes,
)
from PIL import Image

import ackd_fast
from ackd_fast import cli
from ackd_fast.checkpoint import load_checkpoint
from ackd_fast.metrics import count_params
from ackd_fast.models import build_generator
from ackd_fast.peers import load_discriminator, read_generator, to_peer_state_dict

GAN_COMPRESSION, CYCLEGAN_PIX2PIX = 6, 5  # where a residual block's second conv sits


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


def _inputs(size, gen):
    inside = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    outside = torch.randn(2, 3, size, size, generator=gen) * 3  # mostly outside [-1, 1]
    assert outside.abs().max() > 1
    return inside, outside


def _save(state, path):
    torch.save(state, path)  # as their save_networks does: the bare state dict
    return path


@pytest.mark.parametrize(
    "layout, block_conv2, clamp",
    [("GAN Compression / OMGD", GAN_COMPRESSION, True), ("pytorch-CycleGAN-and-pix2pix", CYCLEGAN_PIX2PIX, False)],
)
def test_resnet_9blocks_gives_the_peers_output_bit_for_bit(tmp_path, gen, layout, block_conv2, clamp):
    state = random_state(resnet_shapes(5, block_conv2), gen)
    g = ackd_fast.load_generator(_save(state, tmp_path / "latest_net_G.pth"))
    assert not g.training and type(g).__name__ == "ResnetGenerator" and g.ngf == 5
    inside, outside = _inputs(20, gen)
    with torch.no_grad():
        assert torch.equal(g(inside), resnet_forward(state, inside, block_conv2, mobile=False, clamp=clamp))
        # GAN Compression's and OMGD's ResnetGenerator clamp their input, as ours does; pytorch-CycleGAN-and-pix2pix's
        # does not, so there the outputs agree on images (inside [-1, 1]) only
        expected = resnet_forward(state, outside, block_conv2, mobile=False, clamp=True)
        assert torch.equal(g(outside), expected)
        if not clamp:
            assert not torch.equal(expected, resnet_forward(state, outside, block_conv2, mobile=False, clamp=False))
    assert read_generator(tmp_path / "latest_net_G.pth").source == f"{layout} layout".replace(
        "pytorch-CycleGAN-and-pix2pix", "pytorch-CycleGAN-and-pix2pix / OMGD"
    )


def test_the_published_sizes_load():
    for shapes, params in ((resnet_shapes(64, GAN_COMPRESSION), 11_378_179),
                           (resnet_shapes(16, GAN_COMPRESSION, mobile=True), 137_347),
                           (resnet_shapes(64, GAN_COMPRESSION, mobile=True), 1_987_075)):  # fmt: skip
        assert sum(int(np.prod(s)) for s in shapes.values()) == params


def test_old_pytorch_cyclegan_files_with_instance_norm_statistics(tmp_path, gen):
    shapes = resnet_shapes(3, CYCLEGAN_PIX2PIX) | old_instance_norm_stats(3)
    assert len(shapes) == 117  # instead of 48
    state = random_state(shapes, gen)
    g = ackd_fast.load_generator(_save(state, tmp_path / "latest_net_G_A.pth"))
    x = _inputs(16, gen)[0]
    with torch.no_grad():
        assert torch.equal(g(x), resnet_forward(state, x, CYCLEGAN_PIX2PIX, mobile=False, clamp=False))


@pytest.mark.parametrize("ngf", [4, 16])
def test_mobile_resnet_9blocks_of_gan_compression_and_omgd(tmp_path, gen, ngf):
    state = random_state(resnet_shapes(ngf, GAN_COMPRESSION, mobile=True), gen)
    loaded = read_generator(_save(state, tmp_path / "best_net_G16.pth"))
    assert (loaded.name, loaded.ngf, loaded.config) == ("mobile_resnet_9blocks", ngf, None)
    with torch.no_grad():
        for x in _inputs(16, gen):  # their MobileResnetGenerator does not clamp, nor does ours
            assert torch.equal(loaded.generator(x), resnet_forward(state, x, GAN_COMPRESSION, mobile=True, clamp=False))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_unet_256_of_pytorch_cyclegan_and_omgd(tmp_path, gen, batch_norm):
    state = random_state(unet_shapes(2, batch_norm), gen)
    loaded = read_generator(_save(state, tmp_path / "latest_net_G.pth"))
    assert (loaded.name, loaded.ngf) == ("unet_256_bn" if batch_norm else "unet_256", 2)
    assert not loaded.generator.training  # dropout off, batch norm on its running statistics
    with torch.no_grad():
        for x in _inputs(256, gen):
            x = x[:1]
            assert torch.equal(loaded.generator(x), unet_forward(state, x, batch_norm))
    taps = loaded.generator(x, taps=["enc3", "dec5"])[1]
    assert set(taps) == {"enc3", "dec5"}


def test_unet_256_bn_matches_pix2pix_parameter_count():
    assert count_params(build_generator("unet_256_bn", 64)) == sum(
        int(np.prod(s)) for k, s in unet_shapes(64, True).items() if not k.endswith(("running_mean", "running_var",
                                                                                        "num_batches_tracked"))
    )  # fmt: skip


@pytest.mark.parametrize("name", ["resnet_9blocks", "mobile_resnet_9blocks", "unet_256", "unet_256_bn"])
def test_peer_layout_round_trip(tmp_path, name):
    ours = build_generator(name, 3).eval()
    peer = to_peer_state_dict(ours, name)
    expected = {
        "resnet_9blocks": resnet_shapes(3, GAN_COMPRESSION),
        "mobile_resnet_9blocks": resnet_shapes(3, GAN_COMPRESSION, mobile=True),
        "unet_256": unet_shapes(3, False),
        "unet_256_bn": unet_shapes(3, True),
    }[name]
    assert {k: tuple(v.shape) for k, v in peer.items()} == expected
    back = read_generator(_save(peer, tmp_path / "g.pth"))
    assert back.name == name and back.ngf == 3
    for k, v in ours.state_dict().items():
        assert torch.equal(back.generator.state_dict()[k], v), k


def test_name_and_ngf_given_must_fit(tmp_path, gen):
    path = _save(random_state(resnet_shapes(4, GAN_COMPRESSION, mobile=True), gen), tmp_path / "latest_net_G.pth")
    assert ackd_fast.load_generator(path, "mobile_resnet_9blocks", 4).ngf == 4
    with pytest.raises(ValueError, match=r"latest_net_G\.pth fits no known generator ngf 8.*shape"):
        ackd_fast.load_generator(path, ngf=8)
    with pytest.raises(ValueError, match=r"fits no known generator.*tried resnet_9blocks"):
        ackd_fast.load_generator(path, "resnet_9blocks")
    with pytest.raises(ValueError, match="name must be one of"):
        ackd_fast.load_generator(path, "resnet_6blocks")


# ----------------------------------------------------------------------------------------- bad files


def test_a_random_dict_is_refused_naming_the_file_and_what_was_tried(tmp_path):
    path = _save({"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(2)}, tmp_path / "random.pth")
    with pytest.raises(ValueError) as e:
        ackd_fast.load_generator(path)
    msg = str(e.value)
    assert str(path) in msg and "fits no known generator" in msg and "\n" not in msg
    for name in ("resnet_9blocks", "mobile_resnet_9blocks", "unet_256", "unet_256_bn"):
        assert name in msg
    _save({"config": {"x": 1}, "step": 3}, tmp_path / "no_generator.pt")
    with pytest.raises(ValueError, match=r"no_generator\.pt is a checkpoint without a generator"):
        ackd_fast.load_generator(tmp_path / "no_generator.pt")
    _save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt is not a generator state dict: it holds a list"):
        ackd_fast.load_generator(tmp_path / "list.pt")


def test_a_truncated_file_is_refused(tmp_path, gen):
    path = _save(random_state(resnet_shapes(2, GAN_COMPRESSION), gen), tmp_path / "latest_net_G.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"latest_net_G\.pth is not a PyTorch checkpoint \(truncated or corrupt"):
        ackd_fast.load_generator(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        ackd_fast.load_generator(tmp_path / "missing.pth")


def test_a_discriminator_given_as_generator_is_refused(tmp_path, gen):
    path = _save(random_state(discriminator_shapes(6, 8), gen), tmp_path / "latest_net_D.pth")
    with pytest.raises(ValueError, match=r"latest_net_D\.pth fits no known generator: .* has no key"):
        ackd_fast.load_generator(path)


def test_a_unet_given_with_the_wrong_norm_is_refused(tmp_path, gen):
    batch = _save(random_state(unet_shapes(2, True), gen), tmp_path / "bn.pth")
    match = r"bn\.pth fits no known generator: as unet_256 .* has no key 'model.model.0.bias'"
    with pytest.raises(ValueError, match=match):
        ackd_fast.load_generator(batch, "unet_256")
    instance = _save(random_state(unet_shapes(2, False), gen), tmp_path / "in.pth")
    match = r"in\.pth fits no known generator: as unet_256_bn .* has no key 'model.model.1.model.2.weight'"
    with pytest.raises(ValueError, match=match):
        ackd_fast.load_generator(instance, "unet_256_bn")


def test_discriminator_of_gan_compression_loads_with_its_forward(tmp_path, gen):
    state = random_state(discriminator_shapes(6, 8), gen)
    d = load_discriminator(_save(state, tmp_path / "latest_net_D.pth"))
    x = torch.randn(2, 6, 32, 32, generator=gen)
    with torch.no_grad():
        assert torch.equal(d(x)[0], discriminator_forward(state, x))
    _save(random_state(resnet_shapes(2, GAN_COMPRESSION), gen), tmp_path / "g.pth")
    with pytest.raises(ValueError, match=r"g\.pth is not a PatchGAN \(n_layers\) discriminator"):
        load_discriminator(tmp_path / "g.pth")


# ----------------------------------------------------------------------------------------- distill from a peer


def _train_val_folder(root, rng, n_train=6, n_val=3, size=36):
    for phase, n in (("train", n_train), ("val", n_val)):
        (root / phase / "sub").mkdir(parents=True)
        for i in range(n):
            ab = rng.integers(0, 256, (size, 2 * size, 3), dtype=np.uint8)
            Image.fromarray(ab).save(root / phase / ("sub" if i % 2 else "") / f"{i}.PNG")
    return root


def test_miniature_distill_from_a_peer_teacher_and_discriminator(tmp_path, gen, np_rng, capsys):
    root = _train_val_folder(tmp_path / "edges2shoes-r", np_rng)
    teacher = _save(random_state(resnet_shapes(4, GAN_COMPRESSION), gen), tmp_path / "latest_net_G.pth")
    d_state = random_state(discriminator_shapes(6, 8), gen)
    disc = _save(d_state, tmp_path / "latest_net_D.pth")
    out = tmp_path / "run"
    flags = ["--dataroot", str(root), "--load-size", "36", "--crop-size", "32", "--student-ngf", "4",
             "--batch-size", "2", "--workers", "0", "--log-every", "1", "--sample-every", "0", "--no-progress",
             "--kv-stride", "2"]  # fmt: skip
    cli.main(["distill", "--teacher", str(teacher), "--teacher-d", str(disc), "--out-dir", str(out), *flags,
              "--steps", "2", "--eval-every", "2"])  # fmt: skip
    said = capsys.readouterr().out
    assert "resnet_9blocks ngf 4 (GAN Compression / OMGD layout)" in said and "--teacher-d" in said
    assert "on the val split" in said
    evals = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval" in r]
    assert [(r["step"], r["eval"], r["images"]) for r in evals] == [(2, "val", 3)]
    config = load_checkpoint(out / "ckpt.pt")["config"]
    assert (config["model"], config["direction"], config["generator"], config["ngf"]) == ("pix2pix", "AtoB", "auto", 0)

    # the student's discriminator started as the peer's
    from ackd_fast.assembly import Config, build_task

    cfg = Config(job="distill", teacher=str(teacher), teacher_d=str(disc), generator="auto", ngf=0, student_ngf=4)
    _, critic, _, _ = build_task(cfg)
    for k, v in critic.discriminators[0].state_dict().items():
        assert torch.equal(v, d_state[k]), k

    cli.main(["evaluate", "--checkpoint", str(out / "ckpt.pt"), "--no-fid", "--latency-runs", "0"])
    rows = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the line saying the split
    assert rows[0]["images"] == 3 and rows[0]["PSNR"] > 0
    report = json.loads((out / "results.json").read_text())
    assert report["info"]["split"] == "val" and report["task"] == "edges2shoes"
    assert any("no test split" in n for n in report["info"]["notes"])
    assert (out / "results.md").is_file()

    # a bare teacher without --teacher-d: a fresh discriminator, and the log says so
    cli.main(["distill", "--teacher", str(teacher), "--out-dir", str(tmp_path / "fresh"), *flags, "--steps", "1"])
    assert "the discriminator starts fresh" in capsys.readouterr().out


def test_distill_flags_for_a_bare_teacher_are_checked_before_anything_is_written(tmp_path, gen, np_rng, run_cli):
    root = _train_val_folder(tmp_path / "data", np_rng, n_train=2, n_val=1)
    teacher = _save(random_state(resnet_shapes(4, GAN_COMPRESSION, mobile=True), gen), tmp_path / "t.pth")
    out = tmp_path / "run"
    code, _, err = run_cli(["distill", "--teacher", teacher, "--generator", "resnet_9blocks", "--dataroot", root,
                            "--out-dir", out])  # fmt: skip
    message = r"t\.pth is a mobile_resnet_9blocks ngf 4 generator .* not the resnet_9b"
    assert code == 1 and err.count("\n") == 1 and re.search(message, err), err
    d3 = _save(random_state(discriminator_shapes(3, 8), gen), tmp_path / "d3.pth")
    with pytest.raises(ValueError, match=r"--teacher-d .*d3\.pth takes 3-channel input"):
        from ackd_fast.assembly import Config, build_task

        build_task(Config(job="distill", teacher=str(teacher), teacher_d=str(d3), generator="auto", ngf=0))
    random_file = _save({"w": torch.zeros(2)}, tmp_path / "random.pth")
    code, _, err = run_cli(["distill", "--teacher", str(random_file), "--dataroot", str(root), "--out-dir", str(out)])
    assert code in (1, 2) and err.count("\n") == 1 and re.search(r"random\.pth fits no known generator", err), err
    assert not out.exists()
