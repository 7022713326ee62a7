"""The contract every model in the registry follows.

Distillers need stage feature maps, the last pre-pool map and the
classifier head of any teacher or student. Rather than hooks that break
on functional activations, each model computes its stages explicitly in
`forward_features`; `forward` stays an ordinary logits forward, and the
parameter names stay those of the published checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureModel(nn.Module):
    """Base class: subclasses implement `forward_features` and set `head_path`.

    - `forward_features(x)` returns the stage maps, coarse to fine order of
      depth (first stage first); the last one is the map right before global
      pooling, after its final activation.
    - `head_path` names the classifier `nn.Linear` (e.g. "fc",
      "classifier", "classifier.0", "linear").
    - `forward_head(feat)` = head(flatten(global average pool(feat))).
    """

    head_path: str = "fc"

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    @property
    def head(self) -> nn.Linear:
        return self.get_submodule(self.head_path)

    def pool(self, feat: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(feat, 1).flatten(1)

    def forward_head(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(feat))

    def forward_all(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = self.forward_features(x)
        return feats, self.forward_head(feats[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def feature_shapes(model: FeatureModel, input_shape=(1, 3, 32, 32)) -> list[tuple[int, ...]]:
    """(C, H, W) of every stage map for one input of the given shape."""
    was_training = model.training
    model.eval()
    feats = model.forward_features(torch.zeros(input_shape))
    model.train(was_training)
    return [tuple(f.shape[1:]) for f in feats]
