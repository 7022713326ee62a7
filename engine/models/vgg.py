"""CIFAR VGG with BN, in RepDistiller's layout (`vgg8` = its `vgg8_bn`, ...).

Five conv blocks (`block0`..`block4`, each an nn.Sequential of
conv-BN-ReLU with the last ReLU left out, so indices match RepDistiller's
state dicts), max-pools between them and a single `classifier` Linear(512, n).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import init_convs_bns
from .base import FeatureModel, Features

_CFG = {
    "S": [[64], [128], [256], [512], [512]],  # vgg8
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],  # vgg11
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],  # vgg13
}


def _block(cin: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(FeatureModel):
    head_path = "classifier"

    def __init__(self, cfg: list[list[int]], num_classes: int = 100):
        super().__init__()
        ins = [3] + [c[-1] for c in cfg[:-1]]
        self.block0 = _block(ins[0], cfg[0])
        self.block1 = _block(ins[1], cfg[1])
        self.block2 = _block(ins[2], cfg[2])
        self.block3 = _block(ins[3], cfg[3])
        self.block4 = _block(ins[4], cfg[4])
        self.classifier = nn.Linear(512, num_classes)
        init_convs_bns(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        # Stages are RepDistiller's f1..f4 (blocks 1-4 after their ReLU; preact: before it);
        # block 0's map is its f0, the stem, which AT and the hint index skip.
        # RepDistiller pools only three times at 32x32 (block3 and block4 both run at 4x4)
        # and adds the fourth pool only for 64x64 inputs.
        pool_before_block4 = x.shape[-2] == 64
        x = F.relu(self.block0(x))
        stages = []
        for k, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            if k < 3 or pool_before_block4:
                x = F.max_pool2d(x, 2)
            pre = block(x)
            x = F.relu(pre)
            stages.append(pre if preact else x)
        return Features(stages, x)


def vgg8(*, num_classes: int = 100) -> VGG:
    return VGG(_CFG["S"], num_classes)


def vgg11(*, num_classes: int = 100) -> VGG:
    return VGG(_CFG["A"], num_classes)


def vgg13(*, num_classes: int = 100) -> VGG:
    return VGG(_CFG["B"], num_classes)
