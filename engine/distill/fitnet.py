"""FitNets (Romero et al., ICLR 2015): CE + w * MSE(regressor(student guided map), teacher hint map).

The regressor is conv1x1 + BN + ReLU: mdistiller's and RepDistiller's
ConvReg use a kernel of 1 + s_H - t_H, i.e. 1x1, for maps of equal size.
When the sizes differ the larger map is average-pooled to the smaller
(instead of ConvReg's strided or transposed convs), so any teacher/student
pair works. Trained in one stage with the CE term, as in the CRD/mdistiller
CIFAR benchmarks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from engine.distill.base import Distiller, stage_shapes
from engine.distill.stages import common_size, pool_to


def stage_index(option, n: int, who: str) -> int:
    if option == "middle":
        return (n - 1) // 2
    if not -n <= option < n:
        raise ValueError(f"{who} stage {option} out of range: the {who} has {n} stages")
    return option % n


class FitNet(Distiller):
    def __init__(self, student, teacher, options, *, num_classes, input_shape=(1, 3, 32, 32)):
        super().__init__(
            student, teacher, options, num_classes=num_classes, input_shape=input_shape
        )
        t_shapes = stage_shapes(teacher, input_shape)
        s_shapes = stage_shapes(student, input_shape)
        self.t_stage = stage_index(options["hint_stage"], len(t_shapes), "teacher")
        self.s_stage = stage_index(options["guided_stage"], len(s_shapes), "student")
        t, s = t_shapes[self.t_stage], s_shapes[self.s_stage]
        self.size = common_size(t, s)
        self.regressor = nn.Sequential(
            nn.Conv2d(s[0], t[0], kernel_size=1, bias=False),
            nn.BatchNorm2d(t[0]),
            nn.ReLU(inplace=True),
        )

    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        o = self.options
        feats = self.student.forward_features(x)
        logits = self.student.forward_head(feats[-1])
        guided = self.regressor(pool_to(feats[self.s_stage], self.size))
        hint = pool_to(teacher.feats[self.t_stage], self.size)
        return logits, {
            "ce": o["ce_weight"] * F.cross_entropy(logits, y),
            "hint": o["hint_weight"] * F.mse_loss(guided.float(), hint.float()),
        }
