"""Cross-entropy on labels: teachers and baseline students."""

from __future__ import annotations

import torch.nn.functional as F

from engine.distill.base import Distiller


class Vanilla(Distiller):
    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits, y)}
