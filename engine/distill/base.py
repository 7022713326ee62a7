"""The Distiller contract (after mdistiller).

Student and teacher live in one module; `forward_train` returns the
logits used for training accuracy and a dict of named, already weighted
losses that the trainer sums. The teacher is frozen and always in eval
mode; its forward pass is done once per batch *outside* the distiller
(`TeacherOut`), so a fused sweep or a teacher-logit cache can share it.

Numeric options (loss weights, temperatures) are 0-d buffers on the
training device, read through `self.hp`: under `torch.compile` they are
tensor inputs of one graph that every member of a fused sweep shares,
instead of Python constants that recompile the step for each value (and,
once Dynamo makes them dynamic, CPU scalars that keep Inductor from using
CUDA graphs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from engine.data import Batch

# One shape probe for models and distillers; re-exported here for the distillers.
from engine.models.base import (  # noqa: F401
    FeatureModel,
    Features,
    feature_shapes,
    stage_shapes,
)


class TeacherOut(NamedTuple):
    # stages + pooled map (engine.models.base.Features); None when served from the logit cache
    feats: Features | None
    logits: torch.Tensor
    strong_logits: torch.Tensor | None = None  # on `Batch.strong`, for methods that read it
    # pre-activation stage maps (`forward_features(x, preact=True)`), for methods that read them
    preact_feats: Features | None = None


class Distiller(nn.Module):
    """Base class. Subclasses set nothing else than what their loss needs.

    How a method reads its options (what a new method follows):

    - `self.hp[name]` in `forward_train`: every float option (weights, temperatures;
      `build_distiller` makes an int given for one a float) is a 0-d float32 buffer `hp_<name>` on the distiller's device
      (non-persistent: checkpoints do not change), so changing its value (a fused sweep over
      `distill.temperature`, another run in the same process) neither recompiles the step
      nor turns the number into a CPU scalar input of the graph; all other options (str,
      int, bool, lists: they choose the graph's structure) are their Python values. Write
      the loss with tensor arithmetic that also accepts a Python number (`x / T`, `w * loss`).
    - `static_options`: names of float options that must stay Python numbers (e.g. an
      exponent whose value picks a kernel); they recompile the compiled step when they change.
    - `self.options`: the plain values, for `__init__` (building projectors) and messages.
    - Nothing in `forward_train` may read the epoch or another Python number that changes
      between steps: epoch-dependent factors (a warm-up) go in `loss_scales`.
    """

    static_options: tuple[str, ...] = ()

    def __init__(
        self,
        student: FeatureModel,
        teacher: FeatureModel | None,
        options: dict,
        *,
        num_classes: int,
        input_shape: tuple[int, ...] = (1, 3, 32, 32),
    ):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.options = dict(options)
        self.num_classes = num_classes
        self._tensor_options = tensor_option_names(type(self), self.options)
        self._python_options = {
            k: v for k, v in self.options.items() if k not in self._tensor_options
        }
        for name in self._tensor_options:
            value = torch.tensor(float(self.options[name]), dtype=torch.float32)
            self.register_buffer(f"hp_{name}", value, persistent=False)
        if teacher is not None:
            freeze(teacher)

    @property
    def hp(self) -> dict[str, Any]:
        """Options as `forward_train` reads them: float options as 0-d device buffers."""
        out = dict(self._python_options)
        for name in self._tensor_options:
            out[name] = getattr(self, f"hp_{name}")
        return out

    # ---- what the trainer calls
    def forward_train(
        self, batch: Batch, teacher: TeacherOut | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training logits and named losses, each already multiplied by its constant weight.

        This is what `torch.compile` captures, so it reads nothing that changes from step to
        step but tensors: epoch-dependent factors belong in `loss_scales`.
        """
        raise NotImplementedError

    def loss_scales(self, epoch: int) -> dict[str, float]:
        """Epoch-dependent multipliers of named losses (e.g. a warm-up), applied by the
        trainer outside the compiled step so that no Python number becomes a graph input."""
        return {}

    def forward_test(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the head this method uses at test time (the student's own by default)."""
        return self.student(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ---- what the checkpoint holds
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [
            p
            for n, p in self.named_parameters()
            if p.requires_grad and not n.startswith("teacher.")
        ]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen teacher (student, projectors, regressors, buffers)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint does not fit this run: missing {missing[:8]}, "
                f"unexpected {list(unexpected)[:8]}"
            )


def tensor_option_names(cls: type, options: dict) -> tuple[str, ...]:
    """Options held as buffers: the float-valued ones, minus the class's `static_options`.

    `build_distiller` turns an int given for a float option (`temperature = 4`) into a float
    first, as the experiment parser does, so the kind never depends on how a value was typed.
    """
    return tuple(
        sorted(
            k
            for k, v in options.items()
            if isinstance(v, float) and k not in getattr(cls, "static_options", ())
        )
    )


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def build_distiller(
    method: str,
    student: FeatureModel,
    teacher: FeatureModel | None,
    options: dict,
    *,
    num_classes: int,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    train_labels: torch.Tensor | None = None,
) -> Distiller:
    """A method's distiller with its options' defaults filled in.

    train_labels: every training sample's label, in data set order; methods that declare
    `needs_train_labels` (CRD: a memory bank row per sample, negatives of other classes)
    get them, the others never see them.
    """
    from engine.core.registry import METHODS, resolve

    spec = METHODS[method]
    cls = resolve(spec.impl)
    full = {k: o.default for k, o in spec.options.items()}
    full.update(options)
    for k, v in full.items():  # `temperature = 4` is the float option 4.0 (a buffer)
        numeric = isinstance(v, int) and not isinstance(v, bool)
        if k in spec.options and isinstance(spec.options[k].default, float) and numeric:
            full[k] = float(v)
    extra = {}
    if getattr(cls, "needs_train_labels", False):
        if train_labels is None:
            raise ValueError(
                f"method '{method}' needs the training set's labels (one memory row per "
                "sample): pass train_labels"
            )
        extra["train_labels"] = train_labels
    return cls(student, teacher, full, num_classes=num_classes, input_shape=input_shape, **extra)
