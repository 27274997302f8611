"""The rewrite `ackd_fast.deploy` runs before compiling a generator for the CPU: `with_kernels` swaps modules for
the inference ops of `ackd_fast.ops.inference` where those compute exactly what the module computes. Each
MobileResnetBlock becomes `ackd_fast::mobile_block` (depthwise 3x3 with its statistics in one sweep, pointwise GEMM
with the norm folded into its weights, norm and ReLU applied as the next depthwise reads, residual: 7 passes over
the map); each other plain instance norm (+ ReLU) becomes `ackd_fast::instance_norm_act_residual`; the head's
reflection pad, few-channel 7x7 conv and tanh become `ackd_fast::narrow_conv2d`."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ackd_fast.models.mobile_resnet import MobileResnetBlock, SeparableConv2d
from ackd_fast.ops.inference import MAX_NARROW_OUT


class FusedMobileBlock(nn.Module):
    """A MobileResnetBlock as one `ackd_fast::mobile_block` call. The convs' biases are left out: each conv feeds an
    instance norm, which subtracts any per-channel constant."""

    def __init__(self, block: MobileResnetBlock, eps: float):
        super().__init__()
        first, second = block.body[1], block.body[5]
        self.eps = eps
        for name, conv in (("dw1", first[0]), ("pw1", first[2]), ("dw2", second[0]), ("pw2", second[2])):
            self.register_buffer(name, conv.weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        # channels_last, the kernel's own layout: said here, inductor writes it directly (else it copies per call)
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.ops.ackd_fast.mobile_block(x, self.dw1, self.pw1, self.dw2, self.pw2, self.eps)


class NarrowConv2d(nn.Module):
    """act(conv2d(reflection_pad2d(x, pad), weight, bias)) for a stride-1, unpadded conv with 1 to 4 output channels,
    by `ackd_fast::narrow_conv2d` (which pads and reads channels_last maps itself)."""

    def __init__(self, conv: nn.Conv2d, act: str, pad: int = 0):
        super().__init__()
        self.act, self.pad = act, pad
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.ackd_fast.narrow_conv2d(x, self.weight, self.bias, self.act, self.pad)


def _plain_norm_eps(m: nn.Module) -> float | None:
    """eps of an InstanceNorm2d that only normalizes (no affine, no running statistics), else None."""
    plain = isinstance(m, nn.InstanceNorm2d) and not m.affine and not m.track_running_stats
    return m.eps if plain else None


def _block_eps(block: MobileResnetBlock) -> float | None:
    """The eps of a MobileResnetBlock whose layout is the one mobile_block computes, else None."""
    body = list(block.body)
    kinds = [nn.ReflectionPad2d, SeparableConv2d, nn.InstanceNorm2d, nn.ReLU, nn.ReflectionPad2d, SeparableConv2d,
             nn.InstanceNorm2d]  # fmt: skip
    if len(body) != len(kinds) or not all(type(m) is k for m, k in zip(body, kinds, strict=True)):
        return None
    if any(tuple(body[i].padding) != (1, 1, 1, 1) for i in (0, 4)):
        return None
    norms = [body[2], body[6], body[1][1], body[5][1]]
    eps = {_plain_norm_eps(n) for n in norms}
    if len(eps) != 1 or None in eps:
        return None
    channels = body[1][0].in_channels
    for sep in (body[1], body[5]):
        dw, pw = sep[0], sep[2]
        dw_ok = dw.kernel_size == (3, 3) and dw.groups == channels == dw.out_channels and dw.padding == (0, 0)
        pw_ok = pw.kernel_size == (1, 1) and pw.in_channels == pw.out_channels == channels and pw.groups == 1
        if not (dw_ok and pw_ok and dw.stride == pw.stride == (1, 1) and dw.dilation == (1, 1)):
            return None
    return eps.pop()


def _even_reflect_pad(m: nn.Module | None) -> int | None:
    """p of a ReflectionPad2d that pads every side by p, else None."""
    if type(m) is not nn.ReflectionPad2d or len(set(m.padding)) != 1:
        return None
    return m.padding[0]


def _is_narrow_conv(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.out_channels <= MAX_NARROW_OUT
        and m.groups == 1
        and m.stride == (1, 1)
        and m.dilation == (1, 1)
        and m.padding == (0, 0)
    )


class FusedInstanceNorm(nn.Module):
    """A plain InstanceNorm2d (and the ReLU after it) as one `ackd_fast::instance_norm_act_residual` call: its CPU
    kernel sums channels_last maps in registers over row chunks, where inductor's Welford reduction took 3-6x
    longer on the generators' maps."""

    def __init__(self, eps: float, act: str):
        super().__init__()
        self.eps, self.act = eps, act

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.ackd_fast.instance_norm_act_residual(x, None, None, None, self.act, self.eps)[0]


def with_kernels(generator: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A copy of `generator` whose MobileResnetBlocks, plain instance norms (+ ReLU) and few-channel output convs
    (with the reflection pad before and the tanh after) run the inference kernels, and how many of each it swapped
    ({"mobile_block": n, "instance_norm": k, "narrow_conv2d": m}). A module whose layout the kernels do not compute
    exactly is left as it is."""
    model = copy.deepcopy(generator).eval()
    counts = {"mobile_block": 0, "instance_norm": 0, "narrow_conv2d": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MobileResnetBlock) and (eps := _block_eps(child)) is not None:
                setattr(parent, name, FusedMobileBlock(child, eps))
                counts["mobile_block"] += 1
    # the fused blocks' own norms and convs are gone from the tree by now: what is left is outside them
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent)
        for i, child in enumerate(children):
            after = children[i + 1] if i + 1 < len(children) else None
            if (eps := _plain_norm_eps(child)) is not None:
                relu_next = type(after) is nn.ReLU
                parent[i] = FusedInstanceNorm(eps, "relu" if relu_next else "none")
                if relu_next:
                    parent[i + 1] = nn.Identity()
                counts["instance_norm"] += 1
            elif _is_narrow_conv(child):
                tanh_next = type(after) is nn.Tanh
                before = children[i - 1] if i > 0 else None
                pad = _even_reflect_pad(before)
                parent[i] = NarrowConv2d(child, "tanh" if tanh_next else "none", pad or 0)
                if pad is not None:
                    parent[i - 1] = nn.Identity()
                if tanh_next:
                    parent[i + 1] = nn.Identity()
                counts["narrow_conv2d"] += 1
    return model, counts
