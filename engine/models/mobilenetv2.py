"""CIFAR MobileNetV2 (expansion T=6) with RepDistiller's parameter names.

`mobilenetv2_0_5` is RepDistiller's `mobile_half` (the "MobileNetV2" of the
CRD/SimKD tables); `mobilenetv2` is width 1.0 (SimKD's `mobile_half_double`).
The stem has stride 2, so a 32x32 input ends at 2x2 before pooling.
`mobilenetv2_0_5` stages: 12x16x16, 16x8x8, 48x4x4, 160x2x2; pooled map 1280x2x2.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import init_convs_bns
from .base import FeatureModel, Features

# t (expansion, None = T), c (channels at width 1), n (blocks), s (first stride)
_SETTING = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        # One Sequential `conv` with ReLUs at 2 and 5, as RepDistiller indexes it.
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(FeatureModel):
    head_path = "classifier.0"

    def __init__(self, expand: int = 6, width_mult: float = 1.0, num_classes: int = 100):
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            cout = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t or expand))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_convs_bns(self)
        nn.init.normal_(self.classifier[0].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        # Stages are RepDistiller's/SimKD's f1..f4: the ends of blocks 1, 2, 4 and 6 (the
        # conv1 map is the stem f0). The last stage is the 160-channel (width 0.5) block
        # output SimKD projects (feat_s[-2]); the 1x1 conv2 map that is pooled is `final`.
        # Block outputs are linear (no ReLU), and the references define no pre-activation
        # maps for this net, so preact returns the same stages.
        b = self.blocks
        f1 = b[1](b[0](self.conv1(x)))
        f2 = b[2](f1)
        f3 = b[4](b[3](f2))
        f4 = b[6](b[5](f3))
        return Features([f1, f2, f3, f4], self.conv2(f4))


def mobilenetv2(*, num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(6, 1.0, num_classes)


def mobilenetv2_0_5(*, num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(6, 0.5, num_classes)
