"""Model zoo: build a model by its registry name, load published checkpoints.

The names live in the torch-free `engine.core.registry.ARCHS`; this package is
the torch side. Checkpoint loading accepts our own files and the ones
RepDistiller/SimKD publish, and refuses a file that does not fit with a
message that says exactly which keys or shapes differ, instead of a
silently half-loaded teacher.
"""

from __future__ import annotations

import difflib
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from engine.core.registry import ARCHS, resolve

from .base import FeatureModel, Features, count_params, feature_shapes, stage_shapes

__all__ = [
    "ARCHS",
    "CheckpointMismatchError",
    "FeatureModel",
    "Features",
    "build_model",
    "count_params",
    "describe",
    "extract_state_dict",
    "feature_shapes",
    "load_checkpoint_file",
    "load_state_dict_report",
    "stage_shapes",
]

# Where a state dict sits inside a checkpoint dict: ours and RepDistiller/SimKD
# use "model"; the others are common elsewhere.
_STATE_KEYS = ("model", "state_dict", "model_state_dict")
# Wrappers that prefix every key: DataParallel/DDP and torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 8  # keys listed per category in an error message


class CheckpointMismatchError(ValueError):
    """A state dict whose keys or shapes do not fit the model."""

    def __init__(self, message: str, missing, unexpected, mismatched):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


def build_model(arch: str, num_classes: int) -> FeatureModel:
    if arch not in ARCHS:
        close = difflib.get_close_matches(arch, ARCHS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown arch {arch!r}{hint}; valid archs: {', '.join(ARCHS)}")
    model = resolve(ARCHS[arch])(num_classes=num_classes)
    if not isinstance(model, FeatureModel):  # a registry entry pointing at the wrong thing
        raise TypeError(f"{ARCHS[arch]} returned {type(model).__name__}, not a FeatureModel")
    model.arch_name = arch  # only for messages: "does not fit resnet14"
    return model


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The bare state dict inside a checkpoint, wrapper prefixes removed."""
    state = obj
    if not _is_state_dict(state) and isinstance(state, Mapping):
        for key in _STATE_KEYS:
            if key in state and _is_state_dict(state[key]):
                state = state[key]
                break
    if not _is_state_dict(state):
        what = (
            f"a dict with keys {sorted(map(str, obj))[:10]}"
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        raise ValueError(
            f"no state dict found: expected a state dict or a dict holding one under "
            f"{' / '.join(repr(k) for k in _STATE_KEYS)}, got {what}"
        )
    state = dict(state)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _listing(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_state_dict_report(model: FeatureModel, state: Any, *, source: str | None = None) -> None:
    """Load `state` (a checkpoint dict or a state dict) into `model`, strictly.

    BatchNorm `num_batches_tracked` counters may be absent (older PyTorch
    files); anything else missing, unexpected or of another shape raises
    CheckpointMismatchError naming the keys.
    """
    sd = extract_state_dict(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in sd.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        where = f"{source}: " if source else ""
        saved_as = state.get("arch") if isinstance(state, Mapping) else None
        note = f" (the file says arch {saved_as!r})" if isinstance(saved_as, str) else ""
        parts = [
            f"{where}checkpoint{note} does not fit {getattr(model, 'arch_name', type(model).__name__)}"
        ]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if mismatched:
            shapes = [f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
            parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(shapes)}")
            head = model.head_path + "."
            if not missing and not unexpected and all(k.startswith(head) for k, _, _ in mismatched):
                parts.append("only the classifier differs: wrong num_classes?")
        else:
            parts.append("is it a different architecture or depth?")
        raise CheckpointMismatchError("; ".join(parts), missing, unexpected, mismatched)
    # A plain dict carries no version metadata, so BatchNorm fills in any
    # absent num_batches_tracked instead of failing the strict load.
    model.load_state_dict(sd, strict=True)


def load_checkpoint_file(path: str | os.PathLike, model: FeatureModel) -> FeatureModel:
    """Load a .pth file (ours, RepDistiller/SimKD `{'model': ...}`, or bare) into `model`."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to unpickle (weights_only=True): the file holds Python objects, "
            f"not just tensors; re-save its state dict with torch.save. Details: {e}"
        ) from e
    load_state_dict_report(model, obj, source=os.fspath(path))
    return model


def describe(arch: str, num_classes: int = 100, input_size: int = 32) -> dict[str, Any]:
    """Size, stage shapes and pooled-map shape of one arch, for listings (`kdtui models`)."""
    model = build_model(arch, num_classes).eval()
    shapes = feature_shapes(model, (1, 3, input_size, input_size))
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, 3, input_size, input_size))
    return {
        "arch": arch,
        "num_classes": num_classes,
        "params": count_params(model),
        "head": model.head_path,
        "head_in": model.head.in_features,
        "input_size": input_size,
        "stages": shapes.stages,
        "final": shapes.final,
        # False where the net appends layers after its last stage (a 1x1 conv, WRN's BN-ReLU)
        "final_is_last_stage": feats.final is feats.stages[-1],
    }
