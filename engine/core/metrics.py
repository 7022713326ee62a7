"""Metric names: what the worker records in the store and what every reader looks up. Torch-free.

Per step (x axis: the global step): the loss and each weighted loss term, and the lr.
Per epoch (x axis: the epoch): train and test accuracy, the epoch's lr, speed, and
the teacher cache's counters. The store keeps a run's best/last test accuracy in its
row too (engine.core.store), from TEST_TOP1 and TEST_TOP5.
"""

from __future__ import annotations

# per step
LOSS = "train/loss"  # the total; each term is LOSS + "_" + its name (`loss_name`)
STEP_LR = "train/lr"
# per epoch
TRAIN_TOP1 = "train/top1"
EPOCH_LR = "lr"
IMAGES_PER_S = "images_per_s"
EPOCH_TIME = "epoch_time"
TEST_TOP1 = "test/top1"
TEST_TOP5 = "test/top5"
CACHE_HIT_RATE = "teacher_cache/hit_rate"
CACHE_FILL = "teacher_cache/fill"
CACHE_TEACHER_ROWS = "teacher_cache/teacher_rows"

TOTAL = "loss"  # the total's key in a step's losses, as `Distiller.forward_train` sums them


def loss_name(term: str) -> str:
    """The metric of a step's loss term: "loss" -> train/loss, "kd" -> train/loss_kd."""
    return LOSS if term == TOTAL else f"{LOSS}_{term}"


def is_loss(name: str) -> bool:
    return name == LOSS or name.startswith(LOSS + "_")


def loss_term(name: str) -> str:
    """The term a loss metric holds, as the runs view labels it: train/loss_kd -> kd,
    train/loss -> total."""
    return name.removeprefix(LOSS).lstrip("_") or "total"


def test_name(key: str) -> str:
    """An evaluation's figure ("top1") as its metric (test/top1)."""
    return f"test/{key}"


def per_step(name: str) -> bool:
    """Logged every log window, so plotted against the global step (the loss, its terms and
    the step's lr); everything else is logged once per epoch (train/top1 included)."""
    return is_loss(name) or name == STEP_LR
