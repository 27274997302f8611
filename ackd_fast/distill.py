"""ACKD distillation (DESIGN.md section 1): a frozen teacher, ACK refiners over its taps, 1x1 connectors from the
student's taps, and the student's losses, as one nn.Module whose forward is the generator side of a step.

Taps F_0 .. F_{K-1} come from the config by name (default: stem, block3, block6, block9). For each deep stage
k >= 1, `ACKRefiner` turns F_k and its sources S_k = {F_0 .. F_{k-1}} into T*_k; the student's tap k, through its
connector phi_k, is pulled towards T*_k by an MSE.

How the refiners learn (`ack_train`):
  "teacher-path" (default): T*_k replaces F_k inside the frozen teacher's forward; the rest of the teacher decodes it
      and an L1 to the teacher's own output (plus the ground truth when paired) trains the refiner. The student's
      feature loss sees T*_k detached, so it cannot pull the knowledge towards what the student already knows.
  "joint": the same teacher-path loss, and the feature loss's gradient reaches the refiners too (no detach).
Student losses: lambda_recon * L1 to the ground truth when paired (to the teacher's output when unpaired),
lambda_gan * GAN loss under a discriminator initialised from the teacher's, lambda_feat * sum_k MSE.

`kd` picks the feature distillation (the ablation of the refiners):
  "ackd": as above.
  "plain": GAN Compression's distillation: the connector's output phi_k(S_k) is pulled by the same MSE towards the
      teacher's own tap F_k, on the same taps k >= 1 with the same weight; no refiners, no teacher path.
  "none": no refiners, connectors or feature loss: the baseline student (reconstruction + GAN only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ackd_fast import checks
from ackd_fast.losses import Critic, Step
from ackd_fast.models import TappedGenerator
from ackd_fast.modules import REFINER_MODES, ACKRefiner

ACK_TRAIN = ("teacher-path", "joint")
KD_MODES = ("ackd", "plain", "none")
RECIPES = ("compress", "self")


class Distiller(nn.Module):
    """Args:
    teacher, student: generators with named taps; the teacher is frozen here (eval, no grad).
    teacher_taps, student_taps: K tap names each (K >= 2), in forward order; tap 0 is only ever a source.
    paired: whether the data has ground truth (pix2pix) or not (CycleGAN: reconstruct the teacher's output).
    gan_mode: the GAN loss of the critic.
    kd: "ackd", "plain" (GAN Compression's feature MSE to the teacher's taps) or "none" (the baseline); module
        docstring.
    mode, kv_stride, heads, backend: passed to every ACKRefiner (kd="ackd" only).
    residual: ACK-F's residual, passed to every ACKRefiner; False is the paper's ablation "w/o ACK-F residual" (ACK-A
        keeps its own, and ACK-F accumulates the map it refines with the sources, so ACK-A still trains).
    ack_train: "teacher-path" or "joint" (module docstring).
    """

    def __init__(
        self,
        teacher: TappedGenerator,
        student: TappedGenerator,
        teacher_taps: Sequence[str],
        student_taps: Sequence[str],
        paired: bool,
        gan_mode: str,
        kd: str = "ackd",
        mode: str = "both",
        residual: bool = True,
        ack_train: str = "teacher-path",
        kv_stride: int = 1,
        heads: int = 4,
        backend: str = "auto",
        lambda_recon: float = 100.0,
        lambda_gan: float = 1.0,
        lambda_feat: float = 1.0,
    ):
        super().__init__()
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
        self.kd = checks.one_of("kd", kd, KD_MODES)
        self.mode = checks.one_of("mode", mode, REFINER_MODES)
        self.ack_train = checks.one_of("ack_train", ack_train, ACK_TRAIN)
        self.lambda_recon, self.lambda_gan, self.lambda_feat = lambda_recon, lambda_gan, lambda_feat
        self.refiners = nn.ModuleList()
        self.connectors = nn.ModuleList()
        if self.kd != "none":
            t_ch, s_ch = teacher.tap_channels(), student.tap_channels()
            channels = [t_ch[n] for n in self.teacher_taps]
            for k in range(1, len(channels)):
                if self.kd == "ackd":
                    self.refiners.append(
                        ACKRefiner(
                            channels[k],
                            channels[:k],
                            mode=mode,
                            residual=residual,
                            backend=backend,
                            **({"kv_stride": kv_stride, "heads": heads} if mode != "fusion" else {}),
                        )
                    )
                self.connectors.append(nn.Conv2d(s_ch[self.student_taps[k]], channels[k], 1))

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # frozen whatever the loop asks
        return self

    def refine(self, feats: list[Tensor]) -> list[Tensor]:
        """T*_k for k = 1 .. K-1 from the teacher's taps F_0 .. F_{K-1}."""
        return [r(feats[k], feats[:k]) for k, r in enumerate(self.refiners, start=1)]

    def _feature_loss(self, s_feats: dict[str, Tensor], targets: list[Tensor]) -> Tensor:
        """sum_k MSE(phi_k(student tap k), target k) over the taps k >= 1."""
        feat = targets[0].new_zeros((), dtype=torch.float32)
        for phi, name, target in zip(self.connectors, self.student_taps[1:], targets, strict=True):
            s_map = phi(s_feats[name])
            if s_map.shape[-2:] != target.shape[-2:]:  # taps of different generators may differ in resolution
                s_map = F.interpolate(s_map, size=target.shape[-2:], mode="bilinear", align_corners=False)
            feat = feat + F.mse_loss(s_map.float(), target.float())
        return feat

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
        if self.kd == "ackd":
            feats = [t_feats[n] for n in self.teacher_taps]
            refined = self.refine(feats)
            # Teacher path: each T*_k decoded by the rest of the frozen teacher must still give the teacher's
            # output (and the ground truth when there is one); only the refiners receive this gradient.
            path = fake.new_zeros((), dtype=torch.float32)
            for name, t_star in zip(self.teacher_taps[1:], refined, strict=True):
                decoded = self.teacher(a, replace={name: t_star}).float()
                path = path + F.l1_loss(decoded, t_out.float())
                if self.paired:
                    path = path + F.l1_loss(decoded, b.float())
            targets = [t.detach() if self.ack_train == "teacher-path" else t for t in refined]
            feat = self._feature_loss(s_feats, targets)
            loss = loss + self.lambda_feat * feat + path
            logs |= {"g_feat": feat, "ack_path": path}
        elif self.kd == "plain":
            feat = self._feature_loss(s_feats, [t_feats[n] for n in self.teacher_taps[1:]])
            loss = loss + self.lambda_feat * feat
            logs |= {"g_feat": feat}
        real_pair = torch.cat([a, b], 1) if self.paired else b
        fake_pair = torch.cat([a, fake], 1) if self.paired else fake
        return Step(loss, logs, [(real_pair, fake_pair)], fake, {"teacher": t_out})
