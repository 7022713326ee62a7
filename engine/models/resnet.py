"""CIFAR ResNets with RepDistiller/SimKD parameter names.

Published KD teachers (resnet32x4, resnet56, resnet110, ...) are state
dicts of RepDistiller's `models/resnet.py`; keeping its module names and
tensor shapes lets those files load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import init_convs_bns, run_stages
from .base import FeatureModel, Features


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        # RepDistiller adds a projection whenever shape changes, including the
        # stride-1 first block of the x4 nets (stem 32 -> 64 channels).
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual sum before the ReLU, block output)."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        pre = out + shortcut
        return pre, F.relu(pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x)[1]


def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class CifarResNet(FeatureModel):
    """conv1-bn1-relu, three stages of basic blocks, GAP, fc."""

    head_path = "fc"

    def __init__(self, depth: int, widths: list[int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 for basic blocks, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = _stage(widths[0], widths[1], n, stride=1)
        self.layer2 = _stage(widths[1], widths[2], n, stride=2)
        self.layer3 = _stage(widths[2], widths[3], n, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_convs_bns(self)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        # stages = RepDistiller's f1..f3 (layer outputs); the stem map f0 is not a stage
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, out = run_stages([self.layer1, self.layer2, self.layer3], x, preact)
        return Features(stages, out)


_NARROW = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


def resnet8(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes)


def resnet14(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes)


def resnet20(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes)


def resnet32(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes)


def resnet44(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes)


def resnet56(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes)


def resnet110(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes)


def resnet8x4(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes)


def resnet32x4(*, num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes)
