"""ACKD distillation (docs/DESIGN.md section 1): a frozen teacher, ACK refiners over its taps, 1x1 connectors from the
student's taps, and the student's losses, as one nn.Module whose forward is the generator side of a step.

Taps F_0 .. F_{K-1} come from the config by name (default: GAN Compression's four, stem, block3, block6, block9).
For each deep stage k >= 1, `ACKRefiner` turns F_k and its sources S_k = {F_0 .. F_{k-1}} into T*_k. Every student
tap k, through its 1x1 connector phi_k, is pulled towards its target by an MSE: T*_k for k >= 1 and F_0 itself for
the first tap, which has no sources to refine it (GAN Compression distils all four taps; so do ACKD and plain KD
here, so that the refiners are the only difference between them).

How the refiners learn (`ack_train`):
  "teacher-path" (default): T*_k replaces F_k inside the frozen teacher's forward; the rest of the teacher decodes it
      and an L1 to the teacher's own output (plus the ground truth when paired) trains the refiner. The student's
      feature loss sees T*_k detached, so it cannot pull the knowledge towards what the student already knows.
  "joint": the same teacher-path loss, and the feature loss's gradient reaches the refiners too (no detach).
  "masked": the teacher path decodes T*_k refined from a masked deep map (each pixel of F_k zeroed with probability
      `mask_ratio`, as masked generative distillation masks features), so the refiner must rebuild the missing
      pixels from the sources: the shallow stages become necessary. The student learns from T*_k of the whole
      F_k (detached), as in "teacher-path".
`ack_path_every` N > 1 (a switch that changes what is computed; default 1, every step): the teacher path runs on
every N-th step only, and in the steps between the refiners give the student its targets from a forward without
gradient, which is all the student needs in "teacher-path" and "masked" training. The refiners then take one Adam
step per N steps; the decodes through the teacher's tail (most of an ACKD step's extra cost on a CPU) are paid 1/N
as often. The logged `ack_path` is the path loss times N on its steps and 0 between, so that its mean over a log
interval estimates the per-step loss. ("joint" training needs the refiners' graph every step and takes N = 1 only.)
Student losses: lambda_recon * L1 to the ground truth when paired (to the teacher's output when unpaired),
lambda_gan * GAN loss under a discriminator initialised from the teacher's, lambda_feat * sum_k MSE.

`kd` picks the feature distillation (the ablation of the refiners):
  "ackd": as above.
  "plain": GAN Compression's distillation: phi_k(S_k) is pulled by the same MSE towards the teacher's own tap F_k,
      on the same taps with the same weight; no refiners, no teacher path.
  "none": no refiners, connectors or feature loss: the baseline student (reconstruction + GAN only).

`diagnostics` measures what the refiners do (per tap: how far T*_k is from F_k, each source's share of the
attention mass, the attention entropy, the fusion weights, and how much the teacher's output moves when the sources
are zeroed); the loop logs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ackd_fast import checks
from ackd_fast.losses import Critic, Step
from ackd_fast.models import TappedGenerator, init_weights
from ackd_fast.modules import COMPOSITIONS, REFINER_INITS, REFINER_MODES, ACKRefiner

ACK_TRAIN = ("teacher-path", "joint", "masked")
KD_MODES = ("ackd", "plain", "none")


class _ScaleLog(torch.autograd.Function):
    """x * factor in the forward (what is logged and summed into the loss's value), with x's own gradient: the
    refiners' update is that of one path step, not N times it."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        return x * factor

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


@dataclass(frozen=True)
class DistillSettings:
    """Every switch of a Distiller, in one object checked in one place (on construction: ValueError naming the
    switch).

    kd: "ackd", "plain" (GAN Compression's feature MSE to the teacher's taps) or "none" (the baseline); module
        docstring.
    mode, composition, residual, kv_stride, heads, backend: passed to every ACKRefiner (kd="ackd" only);
        residual=False is the paper's ablation "w/o ACK-F residual" (ACKRefiner says what each composition does).
    refiner_init: how the refiners start (modules.REFINER_INITS); the connectors start as the peers' (normal(0,
        0.02)).
    ack_train: "teacher-path", "joint" or "masked" (module docstring); mask_ratio: the masked share of F_k's pixels.
    ack_path_every: run the teacher path every N-th training step (module docstring); 1: every step.
    lambda_recon, lambda_gan, lambda_feat: the loss weights.
    """

    kd: str = "ackd"
    mode: str = "both"
    composition: str = "parallel"
    residual: bool = True
    refiner_init: str = "default"
    ack_train: str = "teacher-path"
    mask_ratio: float = 0.5
    ack_path_every: int = 1
    kv_stride: int = 1
    heads: int = 4
    backend: str = "auto"
    lambda_recon: float = 100.0
    lambda_gan: float = 1.0
    lambda_feat: float = 1.0

    def __post_init__(self) -> None:
        checks.one_of("kd", self.kd, KD_MODES)
        checks.one_of("mode", self.mode, REFINER_MODES)
        checks.one_of("composition", self.composition, COMPOSITIONS)
        checks.one_of("refiner_init", self.refiner_init, REFINER_INITS)
        checks.one_of("ack_train", self.ack_train, ACK_TRAIN)
        ratio = self.mask_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
            raise ValueError(f"mask_ratio must be a fraction in (0, 1), got {ratio!r}")
        every = self.ack_path_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"ack_path_every must be an int >= 1, got {every!r}")
        if every > 1 and self.ack_train == "joint":
            raise ValueError("ack_path_every > 1 needs ack_train 'teacher-path' or 'masked' ('joint' trains the "
                             "refiners through the feature loss every step)")  # fmt: skip


class Distiller(nn.Module):
    """Args:
    teacher, student: generators with named taps (a TappedGenerator, or any model wrapped in ModuleTaps); the
        teacher is frozen here (eval, no grad).
    teacher_taps, student_taps: K tap names each (K >= 2), in forward order; tap 0 is distilled as it is and is a
        source of every refiner.
    paired: whether the data has ground truth (pix2pix) or not (CycleGAN: reconstruct the teacher's output).
    gan_mode: the GAN loss of the critic.
    settings: the switches (DistillSettings); keyword arguments replace single ones (`kd="plain"`).
    """

    def __init__(
        self,
        teacher: TappedGenerator,
        student: TappedGenerator,
        teacher_taps: Sequence[str],
        student_taps: Sequence[str],
        paired: bool,
        gan_mode: str,
        settings: DistillSettings | None = None,
        **switches,
    ):
        super().__init__()
        s = self.settings = replace(settings or DistillSettings(), **switches)
        self.teacher, self.student = teacher, student
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.teacher_taps, self.student_taps = tuple(teacher_taps), tuple(student_taps)
        if len(self.teacher_taps) != len(self.student_taps) or len(self.teacher_taps) < 2:
            raise ValueError(
                f"teacher_taps {self.teacher_taps} and student_taps {self.student_taps} must name the same number "
                "of taps, at least 2 (the first is only a source)"
            )
        teacher._check_names("teacher_taps", self.teacher_taps)
        student._check_names("student_taps", self.student_taps)
        self.paired, self.gan_mode = bool(paired), gan_mode
        self.kd, self.mode, self.ack_train = s.kd, s.mode, s.ack_train
        self.mask_ratio, self.ack_path_every = float(s.mask_ratio), s.ack_path_every
        # training steps taken (the forwards in training mode): which of them run the teacher path; in the
        # checkpoint when there is a rhythm to keep (N > 1), so that a resumed run keeps it
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.int64), persistent=s.ack_path_every > 1)
        self.lambda_recon, self.lambda_gan, self.lambda_feat = s.lambda_recon, s.lambda_gan, s.lambda_feat
        self.refiners = nn.ModuleList()
        self.connectors = nn.ModuleList()
        if self.kd != "none":
            t_ch, s_ch = teacher.tap_channels(), student.tap_channels()
            channels = [t_ch[n] for n in self.teacher_taps]
            for k in range(len(channels)):
                if self.kd == "ackd" and k >= 1:
                    self.refiners.append(
                        ACKRefiner(
                            channels[k],
                            channels[:k],
                            mode=s.mode,
                            composition=s.composition,
                            residual=s.residual,
                            init=s.refiner_init,
                            backend=s.backend,
                            **({"kv_stride": s.kv_stride, "heads": s.heads} if s.mode != "fusion" else {}),
                        )
                    )
                self.connectors.append(init_weights(nn.Conv2d(s_ch[self.student_taps[k]], channels[k], 1)))

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # frozen whatever the loop asks
        return self

    def refine(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """T*_k for k = 1 .. K-1 from the teacher's taps F_0 .. F_{K-1}."""
        return [r(feats[k], feats[:k]) for k, r in enumerate(self.refiners, start=1)]

    def mask(self, x: Tensor) -> Tensor:
        """x with each pixel (all its channels) zeroed with probability mask_ratio ("masked" training)."""
        keep = torch.rand(x.shape[0], 1, *x.shape[-2:], device=x.device) >= self.mask_ratio
        return x * keep.to(x.dtype)

    def _feature_loss(self, s_feats: dict[str, Tensor], targets: Sequence[Tensor]) -> Tensor:
        """sum_k MSE(phi_k(student tap k), target k) over every tap."""
        feat = targets[0].new_zeros((), dtype=torch.float32)
        for phi, name, target in zip(self.connectors, self.student_taps, targets, strict=True):
            s_map = phi(s_feats[name])
            if s_map.shape[-2:] != target.shape[-2:]:  # taps of different generators may differ in resolution
                s_map = F.interpolate(s_map, size=target.shape[-2:], mode="bilinear", align_corners=False)
            feat = feat + F.mse_loss(s_map.float(), target.float())
        return feat

    def _teacher_path(self, a: Tensor, b: Tensor, t_out: Tensor, feats: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """(the refiners' loss, the student's targets T*_k) for the ack_train mode (module docstring)."""
        every = self.ack_path_every
        if every > 1 and self.training:
            due = int(self.steps_taken) % every == 0
            self.steps_taken += 1
            if not due:  # the targets only: no graph through the refiners, no decodes
                with torch.no_grad():
                    return t_out.new_zeros((), dtype=torch.float32), self.refine(feats)
        if self.ack_train == "masked":
            decoded_from = [r(self.mask(feats[k]), feats[:k]) for k, r in enumerate(self.refiners, start=1)]
            with torch.no_grad():
                targets = self.refine(feats)
        else:
            decoded_from = self.refine(feats)
            targets = [t.detach() if self.ack_train == "teacher-path" else t for t in decoded_from]
        # Each T*_k decoded by the rest of the frozen teacher must still give the teacher's output (and the ground
        # truth when there is one); only the refiners receive this gradient.
        path = t_out.new_zeros((), dtype=torch.float32)
        for name, t_star in zip(self.teacher_taps[1:], decoded_from, strict=True):
            decoded = self.teacher(a, replace={name: t_star}).float()
            path = path + F.l1_loss(decoded, t_out.float())
            if self.paired:
                path = path + F.l1_loss(decoded, b.float())
        if every > 1 and self.training:  # the logged value: an unbiased per-step estimate (module docstring)
            return _ScaleLog.apply(path, float(every)), targets
        return path, targets

    def forward(self, a: Tensor, b: Tensor, critic: Critic) -> Step:
        with torch.no_grad():
            t_out, t_feats = self.teacher(a, taps=self.teacher_taps)
        if self.kd != "none":
            fake, s_feats = self.student(a, taps=self.student_taps)
        else:
            fake, s_feats = self.student(a), {}
        target = b if self.paired else t_out
        recon = F.l1_loss(fake.float(), target.float())
        gan = critic.adversarial(0, torch.cat([a, fake], 1) if self.paired else fake)
        loss = self.lambda_recon * recon + self.lambda_gan * gan
        logs = {"g_recon": recon, "g_gan": gan}
        feats = [t_feats[n] for n in self.teacher_taps]
        if self.kd == "ackd":
            path, refined = self._teacher_path(a, b, t_out, feats)
            feat = self._feature_loss(s_feats, [feats[0], *refined])
            loss = loss + self.lambda_feat * feat + path
            logs |= {"g_feat": feat, "ack_path": path}
        elif self.kd == "plain":
            feat = self._feature_loss(s_feats, feats)
            loss = loss + self.lambda_feat * feat
            logs |= {"g_feat": feat}
        real_pair = torch.cat([a, b], 1) if self.paired else b
        fake_pair = torch.cat([a, fake], 1) if self.paired else fake
        return Step(loss, logs, [(real_pair, fake_pair)], fake)

    @torch.no_grad()
    def diagnostics(self, a: Tensor) -> dict[str, float]:
        """What the refiners do on the images `a`, per tap k >= 1 (kd="ackd"; {} otherwise), keys "tap{k}/...":
        rel_dev ||T*_k - F_k|| / ||F_k||; share{j}, the attention mass on source j (mean over queries and heads);
        entropy, the attention's entropy over all keys as a share of its maximum log(N_kv); w{j}, ACK-F's
        accumulation weights; src_effect, mean |decode(T*_k) - decode(T*_k with every source zeroed)| of the
        teacher's output (images in [-1, 1])."""
        if self.kd != "ackd":
            return {}
        _, t_feats = self.teacher(a, taps=self.teacher_taps)
        feats = [t_feats[n].float() for n in self.teacher_taps]
        out: dict[str, float] = {}
        for k, (name, refiner) in enumerate(zip(self.teacher_taps[1:], self.refiners, strict=True), start=1):
            deep, sources = feats[k], feats[:k]
            t_star = refiner(deep, sources)
            key = f"tap{k}"
            out[f"{key}/rel_dev"] = ((t_star - deep).norm() / deep.norm().clamp_min(1e-12)).item()
            if refiner.attention is not None:
                probs, counts = refiner.attention.attention_probs(deep, sources)
                mass = probs.split(counts, dim=-1)
                for j, m in enumerate(mass):
                    out[f"{key}/share{j}"] = m.sum(-1).mean().item()
                entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
                out[f"{key}/entropy"] = (entropy / math.log(probs.shape[-1])).item() if probs.shape[-1] > 1 else 0.0
            if refiner.fusion is not None:
                for j, w in enumerate(refiner.fusion.weights.tolist()):
                    out[f"{key}/w{j}"] = w
            zeroed = refiner(deep, [torch.zeros_like(x) for x in sources])
            with_sources = self.teacher(a, replace={name: t_star.to(a.dtype)})
            without = self.teacher(a, replace={name: zeroed.to(a.dtype)})
            out[f"{key}/src_effect"] = (with_sources - without).abs().mean().item()
        return out
