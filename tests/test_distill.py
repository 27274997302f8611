"""ACKD distillation: losses fall on a fixed batch, the switches do what they say, the teacher stays frozen."""

import independent
import pytest
import torch

from ackd_fast.distill import Distiller
from ackd_fast.losses import Critic
from ackd_fast.models import NLayerDiscriminator, UnetGenerator, mobile_resnet_9blocks, resnet_9blocks
from ackd_fast.modules import ACKRefiner

TAPS = ("stem", "block3", "block6", "block9")


def _distiller(paired=True, **kw):
    torch.manual_seed(0)  # the same networks whatever ran before
    teacher, student = resnet_9blocks(ngf=8), mobile_resnet_9blocks(ngf=4)
    d = Distiller(teacher, student, TAPS, TAPS, paired=paired, gan_mode="hinge" if paired else "lsgan", **kw)
    critic = Critic([NLayerDiscriminator(6 if paired else 3, ndf=8)], d.gan_mode)
    critic.requires_grad_(False)  # the generator side of a step
    return d, critic


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    d, critic = _distiller(kv_stride=2)
    teacher_before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    opt = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=2e-3, betas=(0.5, 0.999))
    a, b = _batch()
    history = []
    for _ in range(20):  # the refined targets move while the refiners learn: the feature loss first rises
        out = d(a, b, critic)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({k: v.item() for k, v in out.logs.items()} | {"loss": out.loss.item()})
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"]
    assert last["g_feat"] < first["g_feat"] and last["g_recon"] < first["g_recon"]
    assert last["ack_path"] < first["ack_path"]
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert not any(p.requires_grad for p in d.teacher.parameters())


def test_refiners_and_connectors_follow_the_taps():
    d, _ = _distiller()
    # GAN Compression's four taps are all distilled; the first has no sources, so no refiner
    assert len(d.refiners) == 3 and len(d.connectors) == 4
    for k, r in enumerate(d.refiners, start=1):
        assert isinstance(r, ACKRefiner)
        assert r.attention.source_channels == [32] * k and r.fusion.source_channels == [32] * k
    assert [c.in_channels for c in d.connectors] == [16] * 4 and [c.out_channels for c in d.connectors] == [32] * 4
    for c in d.connectors:  # the peers' init: normal(0, 0.02) weights, zero biases
        assert c.weight.std().item() == pytest.approx(0.02, rel=0.3) and not c.bias.any()


@pytest.mark.parametrize("mode", ["attention", "fusion", "both"])
@pytest.mark.parametrize("residual", [True, False])
def test_modes_and_residual(mode, residual):
    if mode == "attention" and not residual:  # --no-residual is ACK-F's, and this mode has no ACK-F
        with pytest.raises(ValueError, match=r"residual=False .*mode='attention'"):
            _distiller(mode=mode, residual=residual)
        return
    d, critic = _distiller(mode=mode, residual=residual, kv_stride=2)
    r = d.refiners[0]
    assert (r.attention is not None) == (mode != "fusion") and (r.fusion is not None) == (mode != "attention")
    assert r.attention is None or r.attention.residual  # ACK-A keeps its residual in the paper's ablation
    assert r.fusion is None or r.fusion.residual == residual
    a, b = _batch()
    out = d(a, b, critic)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    # Every refiner parameter trains, ACK-A's included when ACK-F has no residual (DDP needs no unused-parameter
    # search then).
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in r.parameters())


@pytest.mark.parametrize("mode", ["fusion", "both"])
def test_without_ack_f_residual_the_refined_map_still_reads_ack_a_and_the_deep_map(mode):
    # fp64, odd sizes, sources of other channels and resolutions than the deep map
    deep = torch.randn(2, 8, 7, 5, dtype=torch.float64, requires_grad=True)
    sources = [torch.randn(2, 8, 7, 5, dtype=torch.float64), torch.randn(2, 4, 11, 9, dtype=torch.float64)]
    r = ACKRefiner(8, [8, 4], mode=mode, residual=False, heads=2).double()
    with torch.no_grad():  # off the initial values, so no term hides behind a 0 or a 1
        for p in r.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    got = r(deep, sources)
    # ACK-A with its residual, then ACK-F without its residual over the sources and the map it refines
    attended = deep if r.attention is None else independent.attention_module(r.attention, deep, sources)
    assert r.attention is None or r.attention.residual
    want = independent.fusion_module(r.fusion, attended, [*sources, attended])
    torch.testing.assert_close(got, want)
    (got * torch.randn_like(got)).sum().backward()  # a random projection: an instance norm's output has fixed norm
    assert deep.grad.abs().sum() > 0
    if r.attention is not None:
        assert all(p.grad.abs().sum() > 0 for p in r.attention.parameters())
    with pytest.raises(ValueError, match="at most 3 sources"):
        ACKRefiner(8, [8, 8, 8, 8], mode=mode, residual=False)


@pytest.mark.parametrize("ack_train", ["teacher-path", "joint"])
def test_ack_train_decides_whether_the_feature_loss_reaches_the_refiners(ack_train):
    d, critic = _distiller(ack_train=ack_train)
    a, b = _batch()
    d(a, b, critic).logs["g_feat"].backward()
    grads = [p.grad for p in d.refiners.parameters()]
    if ack_train == "teacher-path":
        assert all(g is None for g in grads)
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is not None for p in d.student.stages.parameters())  # the head lies past the last tap


def test_baseline_has_no_ackd_and_unpaired_reconstructs_the_teacher():
    d, critic = _distiller(kd="none")
    assert len(d.refiners) == len(d.connectors) == 0
    a, b = _batch()
    out = d(a, b, critic)
    assert set(out.logs) == {"g_recon", "g_gan"}
    u, ucritic = _distiller(paired=False, kv_stride=2)
    out = u(a, b, ucritic)
    with torch.no_grad():
        t = u.teacher(a)
    assert out.logs["g_recon"].item() == pytest.approx((out.fake - t).abs().mean().item(), rel=1e-5)
    real, fake = out.d_pairs[0]
    assert real.shape[1] == fake.shape[1] == 3


def test_teacher_stays_in_eval_and_bad_config_raises():
    d, _ = _distiller()
    d.train()
    assert not d.teacher.training and d.student.training
    with pytest.raises(ValueError, match="same number"):
        Distiller(resnet_9blocks(ngf=8), mobile_resnet_9blocks(ngf=4), TAPS, TAPS[:3], True, "hinge")
    with pytest.raises(ValueError, match="teacher_taps"):
        Distiller(resnet_9blocks(ngf=8), mobile_resnet_9blocks(ngf=4), ("stem", "x"), TAPS[:2], True, "hinge")
    with pytest.raises(ValueError, match="ack_train"):
        _distiller(ack_train="both")
    with pytest.raises(ValueError, match="kd"):
        _distiller(kd="refined")


def test_plain_kd_pulls_the_connected_student_taps_to_the_teachers_own():
    # GAN Compression's distillation: the same connectors and taps as ACKD, no refiners, no teacher path.
    d, critic = _distiller(kd="plain")
    assert len(d.refiners) == 0 and [c.out_channels for c in d.connectors] == [32] * 4
    a, b = _batch()
    out = d(a, b, critic)
    assert set(out.logs) == {"g_recon", "g_gan", "g_feat"}
    with torch.no_grad():
        _, t_feats = d.teacher(a, taps=TAPS)
        _, s_feats = d.student(a, taps=TAPS)
        expected = sum(
            torch.nn.functional.mse_loss(phi(s_feats[n]).double(), t_feats[n].double())
            for phi, n in zip(d.connectors, TAPS, strict=True)
        )
    assert out.logs["g_feat"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(
        (100 * out.logs["g_recon"] + out.logs["g_gan"] + out.logs["g_feat"]).item(), rel=1e-6
    )
    out.logs["g_feat"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.connectors.parameters())
    assert all(p.grad is not None for p in d.student.stages.parameters())
    assert not any(p.requires_grad for p in d.teacher.parameters())
    # a few steps on a fixed batch lower the feature loss
    opt = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=2e-3, betas=(0.5, 0.999))
    history = []
    for _ in range(10):
        out = d(a, b, critic)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append(out.logs["g_feat"].item())
    assert history[-1] < history[0]


def test_kd_switch_from_the_config_and_the_no_ackd_alias():
    from ackd_fast import cli

    parse = cli.build_parser().parse_args
    assert parse(["distill", "--teacher", "t.pt"]).kd == "ackd"
    assert parse(["distill", "--teacher", "t.pt", "--kd", "plain"]).kd == "plain"
    assert cli._config(parse(["distill", "--teacher", "t.pt", "--no-ackd"]), "distill").kd == "none"


def test_unet_teacher_with_named_taps_of_other_shapes():
    # A U-Net's taps differ in channels and resolution from each other and from the student's; the config names them.
    teacher, student = UnetGenerator(num_downs=5, ngf=4), mobile_resnet_9blocks(ngf=4)
    d = Distiller(teacher, student, ("enc2", "enc3", "dec3"), ("stem", "block3", "block9"), True, "hinge", kv_stride=1)
    assert [r.attention.source_channels for r in d.refiners] == [[8], [8, 16]]
    critic = Critic([NLayerDiscriminator(6, ndf=8)], "hinge")
    critic.requires_grad_(False)
    a, b = _batch()
    out = d(a, b, critic)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in d.connectors.parameters())


def test_ack_path_every_runs_the_teacher_path_on_every_nth_step_only():
    d, critic = _distiller(ack_path_every=3)
    a, b = _batch()
    refiner_params = list(d.refiners.parameters())
    logged, updated = [], []
    for _ in range(6):
        for p in d.parameters():
            p.grad = None
        out = d(a, b, critic)
        out.loss.backward()
        logged.append(out.logs["ack_path"].item())
        updated.append(any(p.grad is not None and p.grad.abs().sum() > 0 for p in refiner_params))
    assert updated == [True, False, False, True, False, False]
    assert [v > 0 for v in logged] == updated  # the path loss (times 3) on its steps, 0 between
    assert int(d.steps_taken) == 6 and "steps_taken" in d.state_dict()  # resumed with the run
    # the logged value is 3x the path loss, its gradient that of one path step
    every1, _ = _distiller(ack_path_every=1)
    every1.load_state_dict({k: v for k, v in d.state_dict().items() if k != "steps_taken"}, strict=False)
    d.steps_taken.zero_()
    for p in d.parameters():
        p.grad = None
    out3, out1 = d(a, b, critic), every1(a, b, critic)
    assert out3.logs["ack_path"].item() == pytest.approx(3 * out1.logs["ack_path"].item(), rel=1e-5)
    out3.logs["ack_path"].backward()
    out1.logs["ack_path"].backward()
    for p3, p1 in zip(d.refiners.parameters(), every1.refiners.parameters(), strict=True):
        torch.testing.assert_close(p3.grad, p1.grad)


def test_ack_path_every_is_checked():
    with pytest.raises(ValueError, match="ack_path_every must be an int >= 1"):
        _distiller(ack_path_every=0)
    with pytest.raises(ValueError, match="needs ack_train 'teacher-path' or 'masked'"):
        _distiller(ack_path_every=2, ack_train="joint")
