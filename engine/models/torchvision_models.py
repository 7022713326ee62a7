"""torchvision ImageNet models behind the FeatureModel contract.

They subclass torchvision's own classes, so state-dict names stay
torchvision's and ImageNet checkpoints (SimKD's, torchvision's) load as is.
Random init unless `weights` is given (which may download).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock, Bottleneck

from .base import FeatureModel, Features


class TVResNet(FeatureModel, tvm.ResNet):
    head_path = "fc"

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        # stages = layer1..layer4 (SimKD's ImageNet feature list without the stem); torchvision's
        # blocks give no pre-activation maps, so preact returns the same stages
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return Features([f1, f2, f3, f4], f4)


def _stride(m: nn.Module) -> int:
    if hasattr(m, "stride"):  # InvertedResidual
        return int(m.stride)
    conv = next(c for c in m.modules() if isinstance(c, nn.Conv2d))
    return int(conv.stride[0])


class TVMobileNetV2(FeatureModel, tvm.MobileNetV2):
    """Stages end where the next block halves the resolution (/4 ../32), as SimKD's ImageNet
    MobileNetV2 splits `features` (its f1..f4: 24, 32, 96, 320 channels); the stem (and the
    first block, still at /2) come before them, and the 1280-channel 1x1 conv that is pooled
    is `final`. No pre-activation maps: preact returns the same stages."""

    head_path = "classifier.1"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        last = len(self.features) - 1  # the final 1x1 ConvBNReLU
        self.stage_ends = tuple(
            i for i in range(2, last) if i == last - 1 or _stride(self.features[i + 1]) == 2
        )

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        stages = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.stage_ends:
                stages.append(x)
        return Features(stages, x)

    def forward_head(self, feat: torch.Tensor) -> torch.Tensor:
        # Keep torchvision's dropout before the Linear (inactive in eval).
        return self.classifier(self.pool(feat))


def _load_weights(model: nn.Module, enum: Any, weights: Any, num_classes: int) -> None:
    """Load torchvision weights; with a different class count keep the fresh head."""
    if weights is None:
        return
    if isinstance(weights, str):
        weights = enum.verify(weights)
    state = weights.get_state_dict(progress=True)
    head = model.head_path
    if state[f"{head}.weight"].shape[0] != num_classes:
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(head + ".")})
    model.load_state_dict(state)


def _resnet(block, layers, enum, num_classes: int, weights: Any) -> TVResNet:
    model = TVResNet(block, layers, num_classes=num_classes)
    _load_weights(model, enum, weights, num_classes)
    return model


def tv_resnet18(*, num_classes: int = 100, weights: Any = None) -> TVResNet:
    return _resnet(BasicBlock, [2, 2, 2, 2], tvm.ResNet18_Weights, num_classes, weights)


def tv_resnet34(*, num_classes: int = 100, weights: Any = None) -> TVResNet:
    return _resnet(BasicBlock, [3, 4, 6, 3], tvm.ResNet34_Weights, num_classes, weights)


def tv_resnet50(*, num_classes: int = 100, weights: Any = None) -> TVResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], tvm.ResNet50_Weights, num_classes, weights)


def tv_mobilenet_v2(*, num_classes: int = 100, weights: Any = None) -> TVMobileNetV2:
    model = TVMobileNetV2(num_classes=num_classes)
    _load_weights(model, tvm.MobileNet_V2_Weights, weights, num_classes)
    return model
