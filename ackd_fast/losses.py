"""GAN losses, the critic (the discriminators' side of a step) and the teacher objectives (pix2pix, CycleGAN).

An objective is the generator's side of one training step as an nn.Module, so that DDP can wrap it:
`forward(a, b, critic) -> Step` with the generator loss, logged terms, the (real, fake) pairs each discriminator
judges next, and the image to show. The critic is passed in, not registered, so that it stays out of the
objective's parameters (it is trained by its own optimizer and its own DDP wrapper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ackd_fast.models import TappedGenerator

OBJECTIVES = ("pix2pix", "cyclegan")  # paired and unpaired translation: what --model names

GAN_MODES = ("hinge", "lsgan", "vanilla")


def d_loss(mode: str, real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """Discriminator loss over every scale's logit map, halved as in pix2pix so D learns slower than G."""
    total = real[0].new_zeros(())
    for r, f in zip(real, fake, strict=True):
        r, f = r.float(), f.float()
        if mode == "hinge":
            total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
        elif mode == "lsgan":
            total = total + (r - 1).square().mean() + f.square().mean()
        elif mode == "vanilla":
            total = total + F.softplus(-r).mean() + F.softplus(f).mean()
        else:
            raise ValueError(f"gan mode must be one of {GAN_MODES}, got {mode!r}")
    return 0.5 * total


def g_loss(mode: str, fake: list[Tensor]) -> Tensor:
    total = fake[0].new_zeros((), dtype=torch.float32)
    for f in fake:
        f = f.float()
        if mode == "hinge":
            total = total - f.mean()
        elif mode == "lsgan":
            total = total + (f - 1).square().mean()
        elif mode == "vanilla":
            total = total + F.softplus(-f).mean()
        else:
            raise ValueError(f"gan mode must be one of {GAN_MODES}, got {mode!r}")
    return total


class Critic(nn.Module):
    """One or more discriminators; `forward(pairs)` is the D loss of pair i = (real, fake) judged by D i."""

    def __init__(self, discriminators: list[nn.Module], mode: str):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"gan mode must be one of {GAN_MODES}, got {mode!r}")
        self.discriminators = nn.ModuleList(discriminators)
        self.mode = mode

    def forward(self, pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
        losses = [d_loss(self.mode, d(r), d(f.detach())) for d, (r, f) in zip(self.discriminators, pairs, strict=True)]
        return torch.stack(losses).sum()

    def adversarial(self, index: int, fake: Tensor) -> Tensor:
        """The generator's GAN loss for `fake` under D `index` (call with D frozen: requires_grad off)."""
        return g_loss(self.mode, self.discriminators[index](fake))


@dataclass
class Step:
    loss: Tensor
    logs: dict[str, Tensor]
    d_pairs: list[tuple[Tensor, Tensor]]
    fake: Tensor


class Pix2Pix(nn.Module):
    """pix2pix: hinge GAN on the conditional pair (A, G(A)) + lambda_l1 * L1(G(A), B)."""

    gan_mode = "hinge"
    paired = True

    def __init__(self, generator: TappedGenerator, lambda_l1: float = 100.0):
        super().__init__()
        self.generator = generator
        self.lambda_l1 = lambda_l1

    def forward(self, a: Tensor, b: Tensor, critic: Critic) -> Step:
        fake = self.generator(a)
        gan = critic.adversarial(0, torch.cat([a, fake], 1))
        l1 = F.l1_loss(fake.float(), b.float())
        loss = gan + self.lambda_l1 * l1
        return Step(loss, {"g_gan": gan, "g_l1": l1}, [(torch.cat([a, b], 1), torch.cat([a, fake], 1))], fake)


class CycleGAN(nn.Module):
    """CycleGAN: LSGAN on both domains + lambda_cycle * cycle L1 + lambda_identity * lambda_cycle * identity L1.
    `generator` maps A to B (it is what gets distilled); `generator_b` maps B to A. D 0 judges B, D 1 judges A."""

    gan_mode = "lsgan"
    paired = False

    def __init__(
        self,
        generator: TappedGenerator,
        generator_b: TappedGenerator,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
    ):
        super().__init__()
        self.generator, self.generator_b = generator, generator_b
        self.lambda_cycle, self.lambda_identity = lambda_cycle, lambda_identity

    def forward(self, a: Tensor, b: Tensor, critic: Critic) -> Step:
        fake_b, fake_a = self.generator(a), self.generator_b(b)
        cycle = F.l1_loss(self.generator_b(fake_b).float(), a.float()) + F.l1_loss(
            self.generator(fake_a).float(), b.float()
        )
        gan = critic.adversarial(0, fake_b) + critic.adversarial(1, fake_a)
        loss = gan + self.lambda_cycle * cycle
        logs = {"g_gan": gan, "g_cycle": cycle}
        if self.lambda_identity > 0:
            idt = F.l1_loss(self.generator(b).float(), b.float()) + F.l1_loss(self.generator_b(a).float(), a.float())
            loss = loss + self.lambda_identity * self.lambda_cycle * idt
            logs["g_idt"] = idt
        return Step(loss, logs, [(b, fake_b), (a, fake_a)], fake_b)
