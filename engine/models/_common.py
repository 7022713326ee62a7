"""Small pieces shared by the CIFAR model files."""

from __future__ import annotations

import torch
from torch import nn


def init_convs_bns(model: nn.Module) -> None:
    """He-normal (fan-out) convs, unit BN: the init every RepDistiller model uses.

    RepDistiller writes it as normal(0, sqrt(2 / (k*k*out))) in some files and
    kaiming_normal_(fan_out, relu) in others; both are the same distribution.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> interleave the g groups; no sizes read in Python."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def run_stages(
    layers: list[nn.Sequential], x: torch.Tensor, preact: bool
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run stages of blocks: each stage's output map and the last output.

    With `preact`, a stage's map is its last block's output before the final ReLU (the
    references' `is_last` blocks return it); blocks provide `forward_preact(x) -> (pre, out)`.
    The next stage always reads the activated output, so preact changes no computation.
    """
    maps = []
    for layer in layers:
        if preact:
            for block in layer[:-1]:
                x = block(x)
            pre, x = layer[-1].forward_preact(x)
            maps.append(pre)
        else:
            x = layer(x)
            maps.append(x)
    return maps, x
