"""RepDistiller's CIFAR ResNet50 (`ResNet50` in its models/resnetv2.py), with its parameter names.

The teacher of the published ResNet50 -> MobileNetV2 and ResNet50 -> vgg8 pairs: a 3x3
stride-1 stem (64 channels, no max-pool), four stages of bottleneck blocks (3, 4, 6, 3;
widths 64..512, expansion 4, stride 2 from the second stage on) and `linear`. A 32x32
input gives 256x32x32, 512x16x16, 1024x8x8 and 2048x4x4 stage maps. Names: `conv1`,
`bn1`, `layerK.i.{conv1,bn1,conv2,bn2,conv3,bn3}`, `layerK.i.shortcut.{0,1}` (only where
the shape changes), `linear`, so RepDistiller's `ResNet50_vanilla` teacher loads as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import init_convs_bns, run_stages
from .base import FeatureModel, Features


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4; projection shortcut on a shape change."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        # an empty Sequential (no parameters) when the shape is kept, as in RepDistiller
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual sum before the ReLU, block output)."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        return pre, F.relu(pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x)[1]


class CifarResNetV2(FeatureModel):
    head_path = "linear"

    def __init__(self, num_blocks=(3, 4, 6, 3), num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        stages = []
        for k, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(cin, planes, 2 if i == 0 and k > 0 else 1))
                cin = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)  # PyTorch's default init, as in RepDistiller
        init_convs_bns(self)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        # stages = RepDistiller's f1..f4; the stem map f0 is not a stage
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        layers = [self.layer1, self.layer2, self.layer3, self.layer4]
        stages, out = run_stages(layers, x, preact)
        return Features(stages, out)


def resnet50_cifar(*, num_classes: int = 100) -> CifarResNetV2:
    return CifarResNetV2((3, 4, 6, 3), num_classes)
