"""Hinton KD: ce_weight * CE(y, s) + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))."""

from __future__ import annotations

import torch.nn.functional as F

from engine.distill.base import Distiller
from engine.distill.losses import kd_kl


class KD(Distiller):
    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        logits = self.student(x)
        o = self.options
        return logits, {
            "ce": o["ce_weight"] * F.cross_entropy(logits, y),
            "kd": o["kd_weight"] * kd_kl(logits, teacher.logits, o["temperature"]),
        }
