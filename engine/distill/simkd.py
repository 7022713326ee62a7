"""SimKD (Chen et al., CVPR 2022) and the study's variants, done right.

The student's stage map passes through a projector into the teacher's
feature space; the frozen teacher classifier, reused, turns the projected
last-stage map into logits, and those are the test-time logits.

Variants (all in [distill]):
- loss: "l2" (MSE on maps), "kl" (T^2 KL between the teacher's logits and
  the student's logits *through the reused classifier*, a proper
  distribution loss), "l2+kl".
- projectors: "last", "all" (one per aligned stage pair, equal weights) or
  a weighted list of stage pairs; logits always come from the last stage.
  Stage indices count in the models' `stages` (engine/models/base.py), so "last" projects
  the student's last stage, SimKD's `feat_s[-2]` (for MobileNetV2 / ShuffleNetV2 the last
  block's output, not the appended 1x1-conv map). On the teacher side the last stage (-1)
  means the map its classifier pools (`Features.final`), since the projection goes through
  that classifier: for every teacher of SimKD's code (ResNets, VGG) this is its
  `feat_t[-2]`; for WRN it is the last stage after the final BN-ReLU.
- labels: "ce" adds CE through the reused classifier; "mask-wrong-teacher"
  drops the samples the teacher gets wrong from the distillation terms.
  Label handling is independent of the projector mode by construction.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from engine.distill.base import Distiller, Features, feature_shapes
from engine.distill.losses import kd_kl, masked_mean
from engine.distill.stages import align_stages, pool_to


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, bias=False)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)


class Projector(nn.Sequential):
    """conv1x1 (s -> t/f) BN ReLU, conv3x3 (t/f -> t/f) BN ReLU, conv1x1 (t/f -> t) BN ReLU."""

    def __init__(self, s_channels: int, t_channels: int, factor: int = 2):
        mid = max(1, t_channels // factor)
        super().__init__(
            conv1x1(s_channels, mid),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            conv3x3(mid, mid),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            conv1x1(mid, t_channels),
            nn.BatchNorm2d(t_channels),
            nn.ReLU(inplace=True),
        )


def teacher_maps(feats: Features) -> list:
    """The teacher's stages with the last one replaced by the map its classifier pools
    (maps, or shapes when `feats` comes from `feature_shapes`)."""
    return [*feats.stages[:-1], feats.final]


class Pair(NamedTuple):
    teacher: int  # non-negative stage indices
    student: int
    weight: float


def resolve_pairs(option, t_shapes, s_shapes) -> list[Pair]:
    nt, ns = len(t_shapes), len(s_shapes)
    if option == "last":
        return [Pair(nt - 1, ns - 1, 1.0)]
    if option == "all":
        aligned = align_stages(t_shapes, s_shapes)
        return [Pair(t, s, 1.0 / len(aligned)) for t, s in aligned]
    pairs = []
    for item in option:
        t = item.get("teacher", item.get("stage"))
        s = item.get("student", item.get("stage"))
        for idx, n, who in ((t, nt, "teacher"), (s, ns, "student")):
            if not -n <= idx < n:
                raise ValueError(
                    f"projectors: {who} stage {idx} out of range; the {who} has "
                    f"{n} stages (0..{n - 1} or -1..-{n})"
                )
        pairs.append(Pair(t % nt, s % ns, float(item.get("weight", 1.0))))
    if not any(p.teacher == nt - 1 for p in pairs):
        raise ValueError(
            "projectors: one pair must use the teacher's last stage (-1); its "
            "projection feeds the reused classifier"
        )
    return pairs


class SimKD(Distiller):
    def __init__(self, student, teacher, options, *, num_classes, input_shape=(1, 3, 32, 32)):
        super().__init__(
            student, teacher, options, num_classes=num_classes, input_shape=input_shape
        )
        t_shapes = teacher_maps(feature_shapes(teacher, input_shape))
        s_shapes = feature_shapes(student, input_shape).stages
        self.pairs = resolve_pairs(options["projectors"], t_shapes, s_shapes)
        if options["loss"] == "kl" and len(self.pairs) > 1:
            # only the projection that feeds the reused classifier has a kl term; the
            # others would be built, counted and never trained (silently ignored)
            raise ValueError(
                f"projectors: with loss = 'kl' only the projector feeding the reused "
                f"classifier has a loss, so {len(self.pairs) - 1} of the {len(self.pairs)} "
                "projectors would never train; use loss = 'l2+kl' or projectors = 'last'"
            )
        # the logits come from the last teacher stage's pair
        self.logit_pair = max(
            range(len(self.pairs)), key=lambda k: (self.pairs[k].teacher, self.pairs[k].student)
        )
        self.sizes = []
        projs = []
        for p in self.pairs:
            (tc, th, tw), (sc, sh, sw) = t_shapes[p.teacher], s_shapes[p.student]
            self.sizes.append((min(th, sh), min(tw, sw)))
            projs.append(Projector(sc, tc, options["factor"]))
        self.projectors = nn.ModuleList(projs)

    def project(self, k: int, s_feats: list[torch.Tensor]) -> torch.Tensor:
        p = self.pairs[k]
        return self.projectors[k](pool_to(s_feats[p.student], self.sizes[k]))

    def reused_head(self, projected: torch.Tensor) -> torch.Tensor:
        return self.teacher.forward_head(projected)

    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        o = self.hp
        s_feats = self.student.forward_features(x).stages
        t_feats = teacher_maps(teacher.feats)
        mask = None
        if o["labels"] == "mask-wrong-teacher":
            mask = teacher.logits.argmax(dim=1).eq(y)
        losses: dict[str, torch.Tensor] = {}
        logits = None
        feat_loss = 0.0
        for k, p in enumerate(self.pairs):
            projected = self.project(k, s_feats)
            if k == self.logit_pair:
                logits = self.reused_head(projected)
            if "l2" in o["loss"]:
                target = pool_to(t_feats[p.teacher], self.sizes[k])
                per_sample = (projected.float() - target.float()).pow(2).flatten(1).mean(1)
                feat_loss = feat_loss + p.weight * masked_mean(per_sample, mask)
        if "l2" in o["loss"]:
            losses["feat"] = o["feat_weight"] * feat_loss
        if "kl" in o["loss"]:
            per_sample = kd_kl(logits, teacher.logits, o["temperature"], reduction="none")
            losses["kl"] = o["kl_weight"] * masked_mean(per_sample, mask)
        if o["labels"] == "ce":
            losses["ce"] = o["label_weight"] * F.cross_entropy(logits, y)
        return logits, losses

    def forward_test(self, x):
        """Student body -> last projector -> the teacher's frozen classifier."""
        s_feats = self.student.forward_features(x).stages
        return self.reused_head(self.project(self.logit_pair, s_feats))
