"""Pairing teacher and student stages, shared by methods that match several of them.

Stages are the models' `Features.stages` (engine/models/base.py explains what a stage is);
indices here count in that list.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def align_stages(
    t_shapes: list[tuple[int, ...]], s_shapes: list[tuple[int, ...]]
) -> list[tuple[int, int]]:
    """Pair teacher and student stages: last with last, the rest by resolution.

    The last stages always pair (they feed the classifiers). Every other stage
    of the model with fewer stages gets a partner in the other model, in depth
    order (pairs never cross), choosing the order-preserving matching whose
    resolutions differ least (sum of |log2 of the height ratio|; ties favour
    the deeper partner). Equal stage counts thus pair index-wise.
    """
    nt, ns = len(t_shapes), len(s_shapes)
    short, long_ = (t_shapes, s_shapes) if nt <= ns else (s_shapes, t_shapes)
    a, b = len(short) - 1, len(long_) - 1  # stages before the last

    def cost(i: int, j: int) -> float:
        return abs(math.log2(short[i][1] / long_[j][1]))

    # best[i][j]: least cost matching short[:i] into long_[:j]; prefer deeper on ties
    inf = float("inf")
    best = [[0.0] * (b + 1)] + [[inf] * (b + 1) for _ in range(a)]
    for i in range(1, a + 1):
        for j in range(i, b + 1):
            best[i][j] = min(best[i][j - 1], best[i - 1][j - 1] + cost(i - 1, j - 1))
    pairs, i, j = [], a, b
    while i > 0:
        if best[i][j] == best[i - 1][j - 1] + cost(i - 1, j - 1):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        else:
            j -= 1
    pairs.append((a, b))
    if nt > ns:
        pairs = [(j, i) for i, j in pairs]
    return sorted(pairs)


def index_pairs(
    t_shapes: list[tuple[int, ...]], s_shapes: list[tuple[int, ...]]
) -> list[tuple[int, int]]:
    """Stage k with stage k, the longer list cut short: the references' `zip(g_s, g_t)`."""
    return [(k, k) for k in range(min(len(t_shapes), len(s_shapes)))]


def pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of the larger map down to the smaller one's size."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def common_size(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) both (C, H, W) maps can be pooled to."""
    return (min(a[-2], b[-2]), min(a[-1], b[-1]))
