"""The contract every model in the registry follows: stage maps, the pooled map, the head.

Distillers need the stage maps, the map the classifier pools and the classifier head of any
teacher or student. Rather than hooks that break on functional activations, each model
computes them explicitly in `forward_features`; `forward` stays an ordinary logits forward,
and the parameter names stay those of the published checkpoints.

Stage semantics (what AT, FitNet, SimKD and every other feature method pair)
----------------------------------------------------------------------------
The reference code (RepDistiller, mdistiller, SimKD) returns, with `is_feat=True`, a list
`[f0, f1, ..., fn, pooled]`: the stem's map, the output of each stage (block group) and the
pooled vector. `Features.stages` is exactly `[f1, ..., fn]`, in depth order; the stem and the
pooled vector are left out. So, for every architecture:

- AT pairs `stages` (RepDistiller's `feat[1:-1]`, mdistiller's `feats[1:]`);
- FitNet's `hint_stage = 1` is RepDistiller/mdistiller's `hint_layer = 2` (their index 0 is
  the stem);
- SimKD projects the student's last stage (SimKD's `feat_s[-2]`) and matches it to the
  teacher's `final` map, which its reused classifier pools;
- `stages[k]` has the same tensor as the references' `f(k+1)`: VGG's block 0 is the stem (not a
  stage), MobileNetV2 and ShuffleNetV2 end at their last block's output (160 / 464 channels
  for `mobilenetv2_0_5` / `shufflenetv2`, not the appended 1x1 conv), WRN's last stage is the
  raw block output (before the final BN-ReLU).

`Features.final` is the map the classifier global-average-pools, after its last activation.
It is the last stage itself for most nets and differs only where a net appends layers after
its last stage: MobileNetV2 (1x1 conv to 1280 channels), ShuffleNetV2 (1x1 conv to 1024) and
WRN (the final BN-ReLU).

`forward_features(x, preact=True)` returns pre-activation stage maps where the references
define them (RepDistiller's `preact=True`, mdistiller's `preact_feats`, used e.g. by
ReviewKD's teacher): the last block's output before its final ReLU (ResNets, ShuffleNets,
VGG's block before its ReLU), and for the pre-activation WRN the next BN's output before its
ReLU. Nets the references give no pre-activation maps (MobileNetV2, whose stage ends are
linear anyway, and the torchvision models) return their ordinary stages. `final` is the same
either way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Features(NamedTuple):
    """A model's stage maps (depth order) and the map its classifier pools.

    The same tuple carries (C, H, W) shapes when it comes from `feature_shapes`.
    """

    stages: list[Any]  # [N, C, H, W] tensors (or (C, H, W) shapes)
    final: Any


class FeatureModel(nn.Module):
    """Base class: subclasses implement `forward_features` and set `head_path`.

    - `forward_features(x, preact=False)` returns `Features(stages, final)` (see the module
      docstring for what a stage is).
    - `head_path` names the classifier `nn.Linear` (e.g. "fc", "classifier",
      "classifier.0", "linear").
    - `forward_head(final)` = head(flatten(global average pool(final))).
    """

    head_path: str = "fc"

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> Features:
        raise NotImplementedError

    @property
    def head(self) -> nn.Linear:
        return self.get_submodule(self.head_path)

    def pool(self, feat: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(feat, 1).flatten(1)

    def forward_head(self, final: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(final))

    def forward_all(self, x: torch.Tensor, preact: bool = False) -> tuple[Features, torch.Tensor]:
        feats = self.forward_features(x, preact)
        return feats, self.forward_head(feats.final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x).final)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def feature_shapes(model: FeatureModel, input_shape=(1, 3, 32, 32)) -> Features:
    """(C, H, W) of every stage map and of the final map, for one input of the given shape.

    The only shape probe: distillers size their projectors and regressors with it (on the
    model's own device), `kdtui models` lists it.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    was_training = model.training
    model.eval()
    try:
        feats = model.forward_features(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
    return Features([tuple(f.shape[1:]) for f in feats.stages], tuple(feats.final.shape[1:]))


def stage_shapes(model: FeatureModel, input_shape=(1, 3, 32, 32)) -> list[tuple[int, ...]]:
    """(C, H, W) of each stage map (`feature_shapes(...).stages`)."""
    return feature_shapes(model, input_shape).stages
