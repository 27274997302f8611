"""Replacement at a tap through a torch.fx split (`ModuleTaps(..., replace_path=...)`): the same output and gradients
as the hook path, bit for bit on CPU float32, for the built-in generators, a U-Net-like model of our own and an
"@input" tap; the fallback to hooks (a model that does not trace, a tap the split cannot cut at) and the refusals of
a forced split; the cache across casts and modes; the split graph kept out of the wrapper's state."""

import pytest
import torch
from torch import nn

from ackd_fast.models import build_generator
from ackd_fast.models.module_taps import REPLACE_PATHS, ModuleTaps


class SkipNet(nn.Module):
    """A small U-Net: the decoder reads an encoder map from before the middle tap, changed in place by an activation
    whose own result only the layers before the tap read, and the input doubled by an in-place statement whose
    result nothing reads (both dead code to a naive split)."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.enc = nn.Conv2d(3, width, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.middle = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, padding=1))
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.out = nn.Conv2d(2 * width + 3, 3, 3, padding=1)

    def forward(self, x):
        skip = self.enc(x)
        image = x.clone()
        image.mul_(2)
        y = self.up(self.middle(self.down(self.act(skip))))
        return torch.tanh(self.out(torch.cat([skip, y, image], 1)))


class Branchy(nn.Module):
    """A forward that branches on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:
            y = -y
        return self.b(y)


class Twice(nn.Module):
    def forward(self, x):
        return x, 2 * x


class Noisy(nn.Module):
    """BatchNorm before and after the tap, dropout after it, a buffer read by a traced module (a get_attr) and a
    branch on `self.training` (baked into each trace)."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.tap = nn.Conv2d(width, width, 3, padding=1)
        self.post = nn.Sequential(nn.BatchNorm2d(width), nn.Dropout(0.5), nn.Conv2d(width, 3, 1))
        self.pair = Twice()
        self.register_buffer("scale", torch.tensor(0.75))

    def forward(self, x):
        y = self.post(self.tap(self.pre(x)) * self.scale)
        a, b = self.pair(y)
        return a + b if self.training else a - b


def _run(tapped: ModuleTaps, x, tap: str, source, feeder: nn.Module, weight, seed: int = 0):
    """Output, grad w.r.t. the replacement and w.r.t. the feeder's weight for `tap` replaced by feeder(source)."""
    feeder.zero_grad()
    t = feeder(source)
    t.retain_grad()
    torch.manual_seed(seed)
    out = tapped(x, replace={tap: t})
    (out * weight).sum().backward()
    return out.detach(), t.grad, feeder.weight.grad.clone()


def _assert_split_is_hook(model: nn.Module, taps: list[str], x: torch.Tensor, skipped: str = ""):
    """Each tap replaced through hooks and through the split: equal outputs and gradients; the split skips `skipped`
    (a module before the first tap)."""
    hook, split = ModuleTaps(model, taps, replace_path="hook"), ModuleTaps(model, taps, replace_path="split")
    assert (hook.replace_path_used, split.replace_path_used) == ("hook", "split")
    _, features = hook(x, taps=taps)
    for tap in taps:
        source = features[tap].detach()
        feeder = nn.Conv2d(source.shape[1], source.shape[1], 1)
        weight = torch.randn_like(model(x))
        want = _run(hook, x, tap, source, feeder, weight)
        got = _run(split, x, tap, source, feeder, weight)
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True)), tap
    called = [n.target for n in split._graphs[(frozenset([taps[0]]), model.training)].graph.nodes
              if n.op == "call_module"]  # fmt: skip
    assert called and not any(f"{c}.".startswith(f"model.{skipped}.") for c in called)


def test_the_split_matches_the_hook_path_on_the_resnet():
    torch.manual_seed(0)
    model = build_generator("resnet_9blocks", 4).eval().requires_grad_(False)
    taps = ["stages.block6", "stages.block3.1", "stages.block9@input"]
    _assert_split_is_hook(model, taps, torch.rand(1, 3, 32, 32) * 2 - 1, skipped="stages.stem")


def test_the_split_matches_the_hook_path_on_the_unet_whose_skips_it_keeps():
    torch.manual_seed(0)
    model = build_generator("unet_256", 4).eval().requires_grad_(False)
    taps = ["stages.dec3", "stages.enc3", "stages.dec5@input"]
    _assert_split_is_hook(model, taps, torch.rand(1, 3, 256, 256) * 2 - 1, skipped="stages.enc4")


def test_the_split_matches_the_hook_path_on_an_own_unet_and_keeps_its_in_place_changes():
    torch.manual_seed(0)
    model = SkipNet().eval().requires_grad_(False)
    _assert_split_is_hook(model, ["middle", "up@input", "down"], torch.randn(2, 3, 16, 16), skipped="down")


def test_a_model_that_does_not_trace_falls_back_to_hooks_and_a_forced_split_is_refused():
    model = Branchy()
    tapped = ModuleTaps(model, ["a"])
    assert tapped.replace_path_used.startswith("hook (torch.fx cannot trace Branchy: symbolically traced variables")
    x, z = torch.randn(1, 3, 4, 4), torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(tapped(x, replace={"a": z}), model.b(-z if z.sum() > 0 else z), rtol=0, atol=0)
    assert not tapped._graphs
    with pytest.raises(ValueError, match=r"^replace_path 'split': torch\.fx cannot trace Branchy: [^\n]*$"):
        ModuleTaps(model, ["a"], replace_path="split")
    with pytest.raises(ValueError, match=r"replace_path must be one of \('auto', 'hook', 'split'\), got 'fx'"):
        ModuleTaps(model, ["a"], replace_path="fx")
    assert REPLACE_PATHS == ("auto", "hook", "split")


def test_taps_the_split_cannot_cut_at_take_the_hooks_under_auto_and_are_refused_when_forced():
    model = build_generator("resnet_9blocks", 4).eval()
    nested = ModuleTaps(model, ["stages.block3", "stages.block3.1"])
    assert nested.replace_path_used.startswith("split (hook for 'stages.block3.1': 'stages.block3.1' is no call")
    noisy = Noisy().eval()
    auto, forced = ModuleTaps(noisy, ["pair@1", "tap"]), ModuleTaps(noisy, ["pair@1", "tap"], replace_path="split")
    x, z = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    a = noisy.post(noisy.tap(noisy.pre(x)) * noisy.scale)
    torch.testing.assert_close(auto(x, replace={"pair@1": z}), a - z, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"cannot replace \['pair@1'\] in Noisy: 'pair@1': a split replaces"):
        forced(x, replace={"pair@1": z})


def test_reading_taps_besides_the_replaced_takes_the_hooks_and_replaced_taps_report_their_replacement():
    torch.manual_seed(0)
    model = SkipNet().eval()
    hook, split = ModuleTaps(model, ["down", "middle"], replace_path="hook"), ModuleTaps(model, ["down", "middle"])
    x, z = torch.randn(1, 3, 16, 16), torch.randn(1, 8, 8, 8)
    out, features = split(x, taps=["middle"], replace={"middle": z})
    assert features["middle"] is z and torch.equal(out, hook(x, replace={"middle": z})) and len(split._graphs) == 1
    out, features = split(x, taps=["down", "middle"], replace={"middle": z})  # "down" is not replaced: hooks
    want, want_features = hook(x, taps=["down", "middle"], replace={"middle": z})
    assert torch.equal(out, want) and torch.equal(features["down"], want_features["down"]) and len(split._graphs) == 1


def test_a_cast_rebuilds_the_split_and_the_split_is_kept_out_of_the_wrappers_state():
    torch.manual_seed(0)
    model = Noisy().eval()
    hook, split = ModuleTaps(model, ["tap"], replace_path="hook"), ModuleTaps(model, ["tap"])
    keys, count = list(split.state_dict()), sum(p.numel() for p in split.parameters())
    x, z = torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8)
    assert torch.equal(split(x, replace={"tap": z}), hook(x, replace={"tap": z})) and split._graphs
    assert list(split.state_dict()) == keys and sum(p.numel() for p in split.parameters()) == count
    assert not any(isinstance(m, torch.fx.GraphModule) for m in split.modules())
    split.double()  # the graph's buffer `scale` was the float32 tensor the cast replaced
    assert not split._graphs and model.scale.dtype == torch.float64
    out = split(x.double(), replace={"tap": z.double()})
    assert out.dtype == torch.float64 and torch.equal(out, hook(x.double(), replace={"tap": z.double()}))
    assert next(iter(split._graphs.values())).get_buffer("model.scale") is model.scale


@pytest.mark.parametrize("train", [False, True])
def test_dropout_and_batchnorm_match_the_hook_path_in_each_mode(train):
    torch.manual_seed(0)
    model = Noisy().train(train)
    hook, split = ModuleTaps(model, ["tap"], replace_path="hook"), ModuleTaps(model, ["tap"])
    x = torch.randn(2, 3, 8, 8)
    _, features = hook(x, taps=["tap"])
    source, feeder, weight = features["tap"].detach(), nn.Conv2d(4, 4, 1), torch.randn(2, 3, 8, 8)
    batches = model.pre[1].num_batches_tracked.item()
    got = _run(split, x, "tap", source, feeder, weight, seed=1)
    assert model.pre[1].num_batches_tracked.item() == batches  # the split does not run what is before the tap
    want = _run(hook, x, "tap", source, feeder, weight, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert list(split._graphs) == [(frozenset(["tap"]), train)]
    model.train(not train)  # the other mode's branch is another graph
    assert all(torch.equal(a, b) for a, b in zip(_run(hook, x, "tap", source, feeder, weight, seed=2),
                                                  _run(split, x, "tap", source, feeder, weight, seed=2), strict=True))
    assert {key[1] for key in split._graphs} == {False, True}
