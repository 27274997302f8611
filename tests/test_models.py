"""Generators: the published parameter and MAC counts, named taps, tap replacement; discriminators' outputs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ackd_fast.metrics import count_macs, count_params
from ackd_fast.models import (
    DEFAULT_TAPS,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    UnetGenerator,
    build_generator,
    mobile_resnet_9blocks,
    resnet_9blocks,
    unet_256,
)

PAPER_INPUT = (1, 3, 256, 256)


def test_resnet_9blocks_matches_the_published_teacher():
    g = resnet_9blocks(ngf=64)
    assert count_params(g) == 11_378_179  # "11.38 M"
    macs = count_macs(g, torch.zeros(PAPER_INPUT))
    assert macs == pytest.approx(56.8e9, rel=2e-3)  # "56.8 G" (torchprofile convention)


def test_flop_counter_mode_charges_transposed_convs_per_input():
    # Why count_macs gives FlopCounterMode its own convolution formula: the default one charges a transposed conv
    # its true cost (per input element), which separates its 49.6 G from the papers' 56.8 G. Everything else agrees.
    g = resnet_9blocks(ngf=64)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        g(torch.zeros(PAPER_INPUT))
    # (output - input) positions x C_in x 3x3 x C_out of the two transposed convs: 64->128 at 256->128 channels,
    # 128->256 at 128->64 channels
    upsampling_extra = (128**2 - 64**2) * 256 * 9 * 128 + (256**2 - 128**2) * 128 * 9 * 64
    assert counter.get_total_flops() // 2 == pytest.approx(56_799_264_768 - upsampling_extra, rel=1e-6)


def test_mobile_resnet_9blocks_matches_the_published_student():
    g = mobile_resnet_9blocks(ngf=16)
    assert count_params(g) == 137_347  # "0.137 M"
    assert count_macs(g, torch.zeros(PAPER_INPUT)) == pytest.approx(1.41e9, rel=3e-3)  # "1.41 G"


def test_unet_256_matches_pix2pix():
    g = unet_256(ngf=64)
    assert count_params(g) / 1e6 == pytest.approx(54.41, abs=0.01)
    assert g(torch.zeros(1, 3, 256, 256)).shape == (1, 3, 256, 256)


@pytest.mark.parametrize("name", ["resnet_9blocks", "mobile_resnet_9blocks"])
def test_resnet_taps_are_named_data(name):
    g = build_generator(name, ngf=8)
    assert g.tap_names == DEFAULT_TAPS[name] == ("stem", "block3", "block6", "block9")
    x = torch.randn(2, 3, 32, 32)
    out, feats = g(x, taps=g.tap_names)
    assert out.shape == x.shape and out.abs().max() <= 1
    assert {k: tuple(v.shape) for k, v in feats.items()} == dict.fromkeys(g.tap_names, (2, 32, 8, 8))
    assert g.tap_channels() == dict.fromkeys(g.tap_names, 32)
    assert torch.equal(g(x), out)


def test_replace_continues_the_forward_from_the_given_map():
    g = resnet_9blocks(ngf=8).eval()
    x = torch.randn(2, 3, 32, 32)
    out, feats = g(x, taps=["block6"])
    assert torch.equal(g(x, replace={"block6": feats["block6"]}), out)
    other = torch.randn_like(feats["block6"], requires_grad=True)
    replaced = g(x, replace={"block6": other})
    assert not torch.equal(replaced, out)
    replaced.sum().backward()
    assert other.grad is not None and other.grad.abs().sum() > 0
    # a replaced tap reports the map put in its place; earlier taps are still computed when asked for
    _, feats2 = g(x, taps=["stem", "block6"], replace={"block6": other})
    assert feats2["block6"] is other and torch.equal(feats2["stem"], g(x, taps=["stem"])[1]["stem"])


def test_unknown_tap_names_raise():
    g = resnet_9blocks(ngf=8)
    with pytest.raises(ValueError, match=r"block4.*has taps"):
        g(torch.randn(1, 3, 32, 32), taps=["block4"])
    with pytest.raises(ValueError, match="replace"):
        g(torch.randn(1, 3, 32, 32), replace={"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="multiple of 3"):
        build_generator("resnet_9blocks", 8).__class__(ngf=8, n_blocks=4)
    with pytest.raises(ValueError, match="generator must be one of"):
        build_generator("resnet_6blocks", 8)


def test_unet_taps_have_their_own_shapes_and_can_be_replaced():
    g = UnetGenerator(num_downs=5, ngf=4).eval()
    x = torch.randn(2, 3, 64, 64)
    out, feats = g(x, taps=g.tap_names)
    assert g.tap_names == ("enc1", "enc2", "enc3", "enc4", "enc5", "dec5", "dec4", "dec3", "dec2")
    assert feats["enc1"].shape == (2, 4, 32, 32) and feats["enc5"].shape == (2, 32, 2, 2)
    assert feats["dec3"].shape == (2, 8, 16, 16)
    assert {k: v.shape[1] for k, v in feats.items()} == g.tap_channels()
    assert torch.equal(g(x, replace={"dec3": feats["dec3"]}), out)
    assert not torch.equal(g(x, replace={"dec3": torch.zeros_like(feats["dec3"])}), out)


def test_discriminators():
    d = NLayerDiscriminator(6, ndf=8)
    (logits,) = d(torch.randn(2, 6, 64, 64))
    assert logits.shape == (2, 1, 6, 6)
    ms = MultiscaleDiscriminator(3, ndf=8, num_scales=2)
    outs = ms(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in outs] == [(2, 1, 6, 6), (2, 1, 2, 2)]
