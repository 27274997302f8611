"""The method's switches (issue 24): refiner compositions and inits, the masked teacher path, GAN Compression's
baseline (four taps, normal(0, 0.02) init, per-task loss weights) and the refiners' diagnostics."""

import independent
import pytest
import torch

from ackd_fast.assembly import LOSS_PRESETS, Config, loss_weights
from ackd_fast.distill import Distiller
from ackd_fast.losses import Critic
from ackd_fast.models import (
    NLayerDiscriminator,
    build_discriminator,
    build_generator,
    mobile_resnet_9blocks,
    resnet_9blocks,
)
from ackd_fast.modules import ACKRefiner

TAPS = ("stem", "block3", "block6", "block9")


def _maps(seed=0, dtype=torch.float64):
    # odd sizes, a source of other channels and resolution than the deep map
    g = torch.Generator().manual_seed(seed)
    deep = torch.randn(2, 8, 7, 5, dtype=dtype, generator=g)
    sources = [torch.randn(2, 8, 7, 5, dtype=dtype, generator=g), torch.randn(2, 4, 11, 9, dtype=dtype, generator=g)]
    return deep, sources


def _perturb(module, scale=0.3):
    with torch.no_grad():  # off the initial values, so no term hides behind a 0 or a 1
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("composition", ["parallel", "chained"])
@pytest.mark.parametrize("mode", ["attention", "fusion", "both"])
def test_identity_init_gives_the_deep_map_exactly(composition, mode):
    deep, sources = _maps()
    r = ACKRefiner(8, [8, 4], mode=mode, composition=composition, init="identity", heads=2).double()
    assert torch.equal(r(deep, sources), deep)
    deep.requires_grad_(True)
    out = r(deep, sources)
    (out * torch.randn_like(out)).sum().backward()
    trained = [n for n, p in r.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert trained, "the zeroed last layers still receive gradient"


@pytest.mark.parametrize("residual", [True, False])
def test_chained_composition_matches_the_formula_in_fp64(residual):
    deep, sources = _maps(1)
    deep.requires_grad_(True)
    r = ACKRefiner(8, [8, 4], composition="chained", residual=residual, heads=2).double()
    _perturb(r)
    got = r(deep, sources)
    # T* = F + ConvBlock(Wo O): ACK-A's branch without its residual, then ACK-F's conv block on it alone
    assert not r.attention.residual and r.fusion.source_channels == [8]
    branch = independent.attention_module(r.attention, deep, sources)
    want = independent.fusion_module(r.fusion, deep, [branch])
    if not residual:  # the ablation removes exactly the F + of ACK-F
        torch.testing.assert_close(want, independent.fusion_module(r.fusion, torch.zeros_like(deep), [branch]))
    torch.testing.assert_close(got, want)
    (got * torch.randn_like(got)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in r.parameters())


def test_parallel_is_attention_then_fusion_over_the_sources():
    deep, sources = _maps(2)
    r = ACKRefiner(8, [8, 4], composition="parallel", heads=2).double()
    _perturb(r)
    attended = independent.attention_module(r.attention, deep, sources)
    torch.testing.assert_close(r(deep, sources), independent.fusion_module(r.fusion, attended, sources))


def test_normal_init_and_bad_switches():
    torch.manual_seed(0)
    r = ACKRefiner(64, [64, 64], init="normal")
    convs = [m for m in r.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(abs(c.weight.std().item() - 0.02) < 0.005 for c in convs)
    assert all(c.bias is None or not c.bias.any() for c in convs)
    assert abs(r.fusion.norm2_weight.mean().item() - 1) < 0.01 and not r.fusion.norm2_bias.any()
    with pytest.raises(ValueError, match="composition"):
        ACKRefiner(8, [8], composition="serial")
    with pytest.raises(ValueError, match="init"):
        ACKRefiner(8, [8], init="zeros")


def test_generators_and_discriminators_start_as_the_peers():
    torch.manual_seed(0)
    for net in (build_generator("resnet_9blocks", 8), build_discriminator("n_layers", 6, 8)):
        convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        weights = torch.cat([c.weight.flatten() for c in convs])
        assert abs(weights.std().item() - 0.02) < 0.002 and abs(weights.mean().item()) < 0.002
        assert all(not c.bias.any() for c in convs if c.bias is not None)
    with pytest.raises(ValueError, match="init"):
        build_generator("resnet_9blocks", 8, init="xavier")


def _distiller(**kw):
    torch.manual_seed(0)
    teacher, student = resnet_9blocks(ngf=8), mobile_resnet_9blocks(ngf=4)
    d = Distiller(teacher, student, TAPS, TAPS, paired=True, gan_mode="hinge", kv_stride=2, heads=2, **kw)
    critic = Critic([NLayerDiscriminator(6, ndf=8)], "hinge")
    critic.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1)
    return d, critic, batch


def test_masked_teacher_path_needs_the_sources_and_targets_the_whole_map():
    d, critic, (a, b) = _distiller(ack_train="masked", mask_ratio=0.5)
    x = torch.ones(4, 3, 64, 64)
    masked = d.mask(x)
    assert 0.45 < (masked == 0).float().mean().item() < 0.55
    assert torch.equal((masked == 0).all(1), (masked == 0).any(1))  # a pixel is masked in all its channels
    out = d(a, b, critic)
    out.logs["ack_path"].backward(retain_graph=True)
    # the path loss trains every refiner, and the student's targets carry no gradient to them
    for r in d.refiners:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in r.parameters())
    d.zero_grad()
    out.logs["g_feat"].backward()
    assert all(p.grad is None or not p.grad.any() for p in d.refiners.parameters())
    # the targets are the refinement of the unmasked maps
    with torch.no_grad():
        _, t_feats = d.teacher(a, taps=TAPS)
        feats = [t_feats[n] for n in TAPS]
        _, targets = d._teacher_path(a, b, d.teacher(a), feats)
        for got, want in zip(targets, d.refine(feats), strict=True):
            torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="mask_ratio"):
        _distiller(ack_train="masked", mask_ratio=1.0)


@pytest.mark.parametrize("kd", ["ackd", "plain"])
def test_every_tap_is_distilled_the_first_to_the_teachers_own(kd):
    d, critic, (a, b) = _distiller(kd=kd)
    assert len(d.connectors) == len(TAPS)
    out = d(a, b, critic)
    with torch.no_grad():
        _, t_feats = d.teacher(a, taps=TAPS)
        _, s_feats = d.student(a, taps=TAPS)
        targets = [t_feats[n] for n in TAPS]
        if kd == "ackd":
            targets = [targets[0], *d.refine(targets)]
        want = sum(
            torch.nn.functional.mse_loss(phi(s_feats[n]).double(), t.double())
            for phi, n, t in zip(d.connectors, TAPS, targets, strict=True)
        )
    assert out.logs["g_feat"].item() == pytest.approx(want.item(), rel=1e-5)


def test_diagnostics_say_what_the_refiners_do():
    d, _, (a, _) = _distiller(refiner_init="identity")
    diag = d.diagnostics(a[:1])
    for k in (1, 2, 3):
        assert diag[f"tap{k}/rel_dev"] == 0  # the identity init
        assert diag[f"tap{k}/src_effect"] == 0  # ... ignores the sources
        shares = [diag[f"tap{k}/share{j}"] for j in range(k)]
        assert sum(shares) == pytest.approx(1, abs=1e-5) and all(0 <= s <= 1 for s in shares)
        assert 0 <= diag[f"tap{k}/entropy"] <= 1 + 1e-6
        assert [diag[f"tap{k}/w{j}"] for j in range(k)] == pytest.approx([1 / k] * k)
    _perturb(d.refiners)
    diag = d.diagnostics(a[:1])
    assert all(diag[f"tap{k}/rel_dev"] > 0 and diag[f"tap{k}/src_effect"] > 0 for k in (1, 2, 3))
    assert _distiller(kd="plain")[0].diagnostics(a[:1]) == {}


def test_loss_presets_by_data_folder_and_explicit_weights_win():
    assert loss_weights(Config(dataroot="database/maps")) == LOSS_PRESETS["map2sat"]
    assert loss_weights(Config(dataroot="/d/horse2zebra/")) == LOSS_PRESETS["horse2zebra"]
    assert loss_weights(Config(dataroot="database/edges2shoes-r")) == LOSS_PRESETS["edges2shoes"]
    assert loss_weights(Config(dataroot="my_folder")) == LOSS_PRESETS["sample"]
    assert LOSS_PRESETS["map2sat"] == {"lambda_recon": 10.0, "lambda_gan": 1.0, "lambda_feat": 0.01}
    got = loss_weights(Config(dataroot="database/maps", loss_preset="cityscapes", lambda_feat=0.5))
    assert got == {"lambda_recon": 100.0, "lambda_gan": 1.0, "lambda_feat": 0.5}
    with pytest.raises(ValueError, match="loss_preset"):
        loss_weights(Config(loss_preset="facades"))
