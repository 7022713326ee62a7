"""FitNets (Romero et al., ICLR 2015): CE + w * MSE(regressor(student guided map), teacher hint map).

The maps are stage maps (engine/models/base.py): `hint_stage = guided_stage = 1` by default,
which is RepDistiller/mdistiller's `hint_layer = 2` (their feature lists start with the stem
map). Trained in one stage with the CE term, as in the CRD/mdistiller CIFAR benchmarks.

The regressor (`regressor` option):
- "convreg" (default): the references' ConvReg, then BN and ReLU. Its conv depends on the
  heights: a 3x3 stride-2 conv when the student map is twice the teacher's, a 4x4 stride-2
  transposed conv when it is half, otherwise a conv of kernel 1 + s - t (1x1 for equal
  sizes); convs keep their bias. A student map under half the teacher's size has no ConvReg
  (the references stop there too): the error says to use "pool".
- "pool": average-pool the larger map to the smaller size, then conv1x1 (no bias) + BN +
  ReLU; it works for any pair of stages.
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


def conv_reg(s: tuple[int, ...], t: tuple[int, ...]) -> nn.Module:
    """The references' ConvReg conv for a (C, H, W) student map `s` and teacher map `t`."""
    (sc, sh, sw), (tc, th, tw) = s, t
    if sh == 2 * th:
        return nn.Conv2d(sc, tc, kernel_size=3, stride=2, padding=1)
    if 2 * sh == th:
        return nn.ConvTranspose2d(sc, tc, kernel_size=4, stride=2, padding=1)
    if sh >= th:
        return nn.Conv2d(sc, tc, kernel_size=(1 + sh - th, 1 + sw - tw))
    raise ValueError(
        f"regressor = 'convreg' has no conv from a {sh}x{sw} student map to a {th}x{tw} "
        f"teacher map (RepDistiller/mdistiller's ConvReg neither); set regressor = 'pool' "
        f"or choose other hint_stage / guided_stage"
    )


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
        if options["regressor"] == "pool":
            self.size = common_size(t, s)  # both maps pooled to it
            conv = nn.Conv2d(s[0], t[0], kernel_size=1, bias=False)
        else:
            self.size = None  # the regressor maps the student map onto the teacher's size
            conv = conv_reg(s, t)
        self.regressor = nn.Sequential(conv, nn.BatchNorm2d(t[0]), nn.ReLU(inplace=True))

    def forward_train(self, batch, teacher):
        x, y = batch.x, batch.y
        o = self.hp
        feats = self.student.forward_features(x)
        logits = self.student.forward_head(feats.final)
        guided, hint = feats.stages[self.s_stage], teacher.feats.stages[self.t_stage]
        if self.size is not None:
            guided, hint = pool_to(guided, self.size), pool_to(hint, self.size)
        guided = self.regressor(guided)
        return logits, {
            "ce": o["ce_weight"] * F.cross_entropy(logits, y),
            "hint": o["hint_weight"] * F.mse_loss(guided.float(), hint.float()),
        }
