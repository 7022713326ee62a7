"""The views of a training image under the CIFAR recipe, as ids. Torch-free.

The recipe zero-pads an image by 4, crops it back at one of 9 x 9 offsets and may flip it:
162 views. A view id encodes (dy, dx, flip); the device loader draws them
(engine.data), the teacher-logit cache keys its rows by (sample, view) (engine.cache),
and `kdtui cache ls` sizes a cache by them (engine.core.cachefiles). The functions work
on ints and on tensors alike.
"""

from __future__ import annotations

from typing import Any

PAD = 4  # zero padding of the random crop (the CIFAR recipe)
CROPS = 2 * PAD + 1  # offsets per axis: 0..8
NUM_VIEWS = CROPS * CROPS * 2  # 162
NO_AUG_VIEW = (PAD * CROPS + PAD) * 2  # centre crop, no flip: the un-augmented image


def encode_view(dy: Any, dx: Any, flip: Any) -> Any:
    """View id of a pad-4 crop at (dy, dx) in the padded image, then an optional flip."""
    return (dy * CROPS + dx) * 2 + flip


def decode_view(view: Any) -> tuple[Any, Any, Any]:
    """Inverse of `encode_view`: (dy, dx, flip)."""
    flip = view % 2
    cell = view // 2
    return cell // CROPS, cell % CROPS, flip
