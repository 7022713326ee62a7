"""CIFAR ShuffleNetV2 with RepDistiller/SimKD parameter names (`ShuffleV2`,
SimKD's `ShuffleV2_1_5`).

The stem is a 1x1 conv without stride; each stage starts with a stride-2
down-sampling unit, so a 32x32 input ends at 4x4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import channel_shuffle, run_stages
from .base import FeatureModel, Features

# net_size -> (stage widths + final 1x1 conv width, blocks per stage)
_CONFIGS = {
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
}


class BasicUnit(nn.Module):
    """Keep half the channels, transform the other half, concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.half = c
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def _branch(self, x2: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x2)), inplace=True)
        return self.bn3(self.conv3(self.bn2(self.conv2(out))))

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the references' pre-activation map: the kept half and the branch before its ReLU,
        concatenated and not shuffled; unit output)."""
        x1, x2 = x[:, : self.half], x[:, self.half :]
        pre = self._branch(x2)
        out = channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)
        return torch.cat([x1, pre], 1), out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.half], x[:, self.half :]
        out = F.relu(self._branch(x2), inplace=True)
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches (depthwise first on the left), concat, shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)), inplace=True)
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(FeatureModel):
    head_path = "linear"

    def __init__(self, net_size: float = 1.0, num_classes: int = 100):
        super().__init__()
        widths, blocks = _CONFIGS[net_size]
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        stages = []
        for cout, n in zip(widths[:3], blocks, strict=True):
            stages.append(nn.Sequential(DownUnit(cin, cout), *[BasicUnit(cout) for _ in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        # Stages are RepDistiller's/SimKD's f1..f3, the outputs of layer1..3 (the stem map
        # f0 is not a stage): the last is the 464-channel map SimKD projects (feat_s[-2]).
        # The 1x1 conv2 map that is pooled is `final`.
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, out = run_stages([self.layer1, self.layer2, self.layer3], x, preact)
        return Features(stages, F.relu(self.bn2(self.conv2(out))))


def shufflenetv2(*, num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2(1.0, num_classes)


def shufflenetv2_1_5(*, num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2(1.5, num_classes)
