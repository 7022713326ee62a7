"""CIFAR ShuffleNetV1 (groups=3) with RepDistiller's parameter names (`ShuffleV1`).

The stem is a 1x1 conv without stride, so a 32x32 input gives 16/8/4
maps after the three stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import channel_shuffle, run_stages
from .base import FeatureModel, Features


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1.

    A stride-2 unit concatenates an avg-pooled shortcut, so its branch
    produces only `cout - cin` channels (the caller passes that as `cout`).
    """

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = cout // 4
        # The first unit reads the 24-channel stem, which is not split in groups.
        self.g1 = 1 if cin == 24 else groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(concatenation or sum before the ReLU, unit output)."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = channel_shuffle(out, self.g1)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        pre = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if self.stride == 2 else out + x
        return pre, F.relu(pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x)[1]


class ShuffleNetV1(FeatureModel):
    head_path = "linear"

    def __init__(
        self,
        out_planes=(240, 480, 960),
        num_blocks=(4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        stages = []
        for cout, n in zip(out_planes, num_blocks, strict=True):
            units = [ShuffleUnit(cin, cout - cin, 2, groups)]
            units += [ShuffleUnit(cout, cout, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        # stages = RepDistiller's f1..f3 (the stem map f0 is not a stage); layer3 is pooled
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, out = run_stages([self.layer1, self.layer2, self.layer3], x, preact)
        return Features(stages, out)


def shufflenetv1(*, num_classes: int = 100) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes=num_classes)
