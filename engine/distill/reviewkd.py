"""ReviewKD (Chen, Liu, Zhao & Jia, CVPR 2021): distilling knowledge via knowledge review.

Levels, shallow to deep: the aligned stage pairs (`align_stages`: every stage of the model
with fewer stages, paired by resolution, last with last) plus the pooled level (each net's
`final` map, globally pooled, as a 1x1 map). The student's maps are the ordinary (activated)
stages, the teacher's its pre-activation stages (`TeacherOut.preact_feats`), as in mdistiller
(`feats` for the student, `preact_feats[1:]` for the teacher) and the ReviewKD code.

Attention-based fusion (ABF), deep to shallow: each level's student map goes through a 1x1
conv + BN to `mid` channels (mid = min(512, channels of the deepest student level)); below
the deepest level it is fused with the previous (deeper) level's fused map, upsampled
(nearest) to its size, by two sigmoid attention maps from a 1x1 conv over both:
x * a0 + y * a1. The fused map, resized (nearest) to the teacher's size where they differ,
goes through a 3x3 conv + BN to the teacher's channels: that is the level's output.

Hierarchical context loss (HCL), per level: MSE(out, teacher map) plus, for every pyramid
size l in (4, 2, 1) smaller than the map, MSE of both maps average-pooled to l x l with
weights 1/2, 1/4, 1/8; normalised by the sum of weights used. The loss is CE + weight *
warm-up * sum over levels of HCL, warm-up = min(epoch / 20, 1) with 1-based epochs
(mdistiller's; applied by the trainer through `loss_scales`).

Published weights: 5.0 for resnet32x4 -> resnet8x4 (ReviewKD's script/reviewKD.sh and
mdistiller's configs/cifar100/reviewkd.yaml), as for most CIFAR-100 pairs; ReviewKD's script
uses 0.6 for resnet56 -> resnet20, 1.0 for resnet110 -> resnet32 and 8.0 for ShuffleNetV2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.distill.base import Distiller, feature_shapes
from engine.distill.stages import align_stages

PYRAMID = (4, 2, 1)


def hcl_level(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """One level of the hierarchical context loss (see the module docstring)."""
    f_s, f_t = f_s.float(), f_t.float()
    loss = F.mse_loss(f_s, f_t)
    weight, total = 1.0, 1.0
    for size in PYRAMID:
        if size >= f_s.shape[-2]:
            continue
        weight /= 2
        loss = loss + weight * F.mse_loss(
            F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size)
        )
        total += weight
    return loss / total


class ABF(nn.Module):
    """Attention-based fusion of one level (see the module docstring)."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # the reference's init
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(level output in the teacher's shape, fused map handed to the next level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0:1] + y * z[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def _pooled_map(model, final: torch.Tensor) -> torch.Tensor:
    return model.pool(final)[:, :, None, None]


class ReviewKD(Distiller):
    def __init__(self, student, teacher, options, *, num_classes, input_shape=(1, 3, 32, 32)):
        super().__init__(
            student, teacher, options, num_classes=num_classes, input_shape=input_shape
        )
        t, s = feature_shapes(teacher, input_shape), feature_shapes(student, input_shape)
        self.pairs = align_stages(t.stages, s.stages)
        # (student channels, teacher channels, teacher (H, W)) per level, shallow to deep
        levels = [(s.stages[j][0], t.stages[i][0], tuple(t.stages[i][1:])) for i, j in self.pairs]
        levels.append((s.final[0], t.final[0], (1, 1)))
        self.out_sizes = [size for _, _, size in levels]
        mid = min(options["max_mid_channels"], levels[-1][0])
        n = len(levels)
        # abfs[k] serves level k (shallow to deep); the deepest has nothing to fuse with
        self.abfs = nn.ModuleList(
            ABF(cs, mid, ct, fuse=k < n - 1) for k, (cs, ct, _) in enumerate(levels)
        )

    def warmup_factor(self, epoch: int) -> float:
        """min(epoch / warmup, 1) with 1-based epochs, as in mdistiller."""
        w = self.options["warmup"]
        return 1.0 if w <= 0 else min((epoch + 1) / w, 1.0)

    def loss_scales(self, epoch: int) -> dict[str, float]:
        return {"review": self.warmup_factor(epoch)}

    def review(self, feats) -> list[torch.Tensor]:
        """ABF outputs, shallow to deep, from the student's Features."""
        maps = [feats.stages[j] for _, j in self.pairs]
        maps.append(_pooled_map(self.student, feats.final))
        outs: list[torch.Tensor] = [None] * len(maps)  # type: ignore[list-item]
        residual = None
        for k in reversed(range(len(maps))):  # deep to shallow
            outs[k], residual = self.abfs[k](maps[k], residual, self.out_sizes[k])
        return outs

    def forward_train(self, batch, teacher):
        if teacher.preact_feats is None:
            raise RuntimeError(
                "reviewkd reads the teacher's pre-activation stage maps (TeacherOut.preact_feats)"
            )
        o = self.hp
        feats = self.student.forward_features(batch.x)
        logits = self.student.forward_head(feats.final)
        pre = teacher.preact_feats
        targets = [pre.stages[i] for i, _ in self.pairs]
        targets.append(_pooled_map(self.teacher, pre.final))
        review = sum(hcl_level(s, t) for s, t in zip(self.review(feats), targets))
        return logits, {
            "ce": o["ce_weight"] * F.cross_entropy(logits, batch.y),
            "review": o["review_weight"] * review,
        }
