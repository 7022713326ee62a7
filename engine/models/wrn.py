"""Wide ResNets (pre-activation) with RepDistiller's parameter names.

Names follow RepDistiller's `models/wrn.py` (`block1.layer.0.bn1`,
`...convShortcut`, final `bn1`, `fc`) so its published teachers load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import init_convs_bns
from .base import FeatureModel, Features


class WideBasic(nn.Module):
    """BN-ReLU-conv x2; when the width changes, the shortcut conv reads the
    activated input, otherwise the raw input is added (as in RepDistiller)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.equal_in_out = cin == cout
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor:
        """pre: bn1(x), when the caller keeps it as a pre-activation stage map."""
        act = F.relu(self.bn1(x), inplace=True) if pre is None else F.relu(pre)
        out = F.relu(self.bn2(self.conv1(act)), inplace=True)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """Only a holder, so that names read `blockN.layer.i`."""

    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layer[0](x, pre)
        for block in self.layer[1:]:
            x = block(x)
        return x


class WideResNet(FeatureModel):
    head_path = "fc"

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        init_convs_bns(self)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        # Stages are RepDistiller's f1..f3: the raw output of each block group. This net is
        # pre-activation, so the map the classifier pools is the last one after bn1 + ReLU
        # (`final`). The pre-activation maps (references' preact=True) are the next BN's
        # outputs: block2's and block3's first bn1, then bn1; each is computed once and
        # handed on, so asking for them runs no BN twice.
        f1 = self.block1(self.conv1(x))
        p1 = self.block2.layer[0].bn1(f1) if preact else None
        f2 = self.block2(f1, p1)
        p2 = self.block3.layer[0].bn1(f2) if preact else None
        f3 = self.block3(f2, p2)
        p3 = self.bn1(f3)
        final = F.relu(p3)
        return Features([p1, p2, p3] if preact else [f1, f2, f3], final)


def wrn_16_2(*, num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes)


def wrn_40_1(*, num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes)


def wrn_40_2(*, num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes)
