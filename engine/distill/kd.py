"""Hinton KD: ce_weight * CE(y, s) + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T)).

With `logit_stand` (Sun et al., CVPR 2024) both logits are z-scored per sample before the
softened term (T is then the base temperature); the CE term keeps the raw logits.
"""

from __future__ import annotations

import torch.nn.functional as F

from engine.distill.base import Distiller
from engine.distill.losses import kd_kl, maybe_standardize


class KD(Distiller):
    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        logits = self.student(x)
        o = self.hp
        s, t = maybe_standardize(logits, teacher.logits, o["logit_stand"])
        return logits, {
            "ce": o["ce_weight"] * F.cross_entropy(logits, y),
            "kd": o["kd_weight"] * kd_kl(s, t, o["temperature"]),
        }
