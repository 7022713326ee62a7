"""DIST (Huang et al., NeurIPS 2022): knowledge distillation from a stronger teacher.

Instead of matching probabilities exactly (KL), the student matches the teacher's
*relations*: loss = ce_weight * CE + kd_weight * (beta * inter + gamma * intra), where, with
p = softmax(z / tau),

- inter = tau^2 * (1 - mean_i pearson(p_s[i, :], p_t[i, :])): each sample's ranking of the
  classes (inter-class relation);
- intra = tau^2 * (1 - mean_c pearson(p_s[:, c], p_t[:, c])): each class's ranking of the
  samples of the batch (intra-class relation).

Defaults are the reference CIFAR-100 recipe (image_classification_sota's dist_cifar.yaml:
CE weight 1, KD weight 2, `dist_t4`: beta = gamma = 1, tau = 4). `logit_stand` z-scores both
logits first (Sun et al., CVPR 2024); the LS paper publishes no DIST figure.
"""

from __future__ import annotations

import torch.nn.functional as F

from engine.distill.base import Distiller
from engine.distill.losses import dist_relations, maybe_standardize


class DIST(Distiller):
    def __init__(self, student, teacher, options, *, num_classes, input_shape=(1, 3, 32, 32)):
        if num_classes < 2:
            raise ValueError("dist needs at least 2 classes: a correlation over one is undefined")
        super().__init__(
            student, teacher, options, num_classes=num_classes, input_shape=input_shape
        )

    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        o = self.hp
        logits = self.student(x)
        s, t = maybe_standardize(logits, teacher.logits, o["logit_stand"])
        inter, intra = dist_relations(s, t, o["temperature"])
        return logits, {
            "ce": o["ce_weight"] * F.cross_entropy(logits, y),
            "inter": o["kd_weight"] * o["inter_weight"] * inter,
            "intra": o["kd_weight"] * o["intra_weight"] * intra,
        }
