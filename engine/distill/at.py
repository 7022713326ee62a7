"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

at(F) = L2-normalise(flatten(mean over channels of |F|^p)); the loss is
CE + w * sum over aligned stage pairs of mean((at(Fs) - at(Ft))^2), with
p = 2 and w = 1000 as in RepDistiller/mdistiller. The stage maps are the models'
`stages` (engine/models/base.py: the references' `feat[1:-1]`, so no stem map and no
appended 1x1-conv map); maps of different sizes are average-pooled to the smaller one,
as the references do. `pairs = "aligned"` (default) pairs the last stages and the rest by
resolution, which is the references' index-wise pairing whenever both nets have as many
stages (every published CIFAR-100 pair); `pairs = "index"` is the references' `zip`
(stage k with stage k, the longer list cut short) for any pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.distill.base import Distiller, stage_shapes
from engine.distill.stages import align_stages, common_size, index_pairs, pool_to


def attention_map(feat: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(feat.float().abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_pair_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float) -> torch.Tensor:
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


class AT(Distiller):
    static_options = ("at_p",)  # an exponent: pow(x, 2.0) with a Python 2.0 is the exact square

    def __init__(self, student, teacher, options, *, num_classes, input_shape=(1, 3, 32, 32)):
        super().__init__(
            student, teacher, options, num_classes=num_classes, input_shape=input_shape
        )
        t_shapes = stage_shapes(teacher, input_shape)
        s_shapes = stage_shapes(student, input_shape)
        pair = index_pairs if options["pairs"] == "index" else align_stages
        self.pairs = pair(t_shapes, s_shapes)
        self.sizes = [common_size(t_shapes[t], s_shapes[s]) for t, s in self.pairs]

    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        o = self.hp
        feats = self.student.forward_features(x)
        logits = self.student.forward_head(feats.final)
        s_maps, t_maps = feats.stages, teacher.feats.stages
        at = sum(
            at_pair_loss(pool_to(s_maps[s], size), pool_to(t_maps[t], size), o["at_p"])
            for (t, s), size in zip(self.pairs, self.sizes)
        )
        return logits, {
            "ce": o["ce_weight"] * F.cross_entropy(logits, y),
            "at": o["at_weight"] * at,
        }
