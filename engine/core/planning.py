"""Run planning: an experiment expanded into the runs to create. Torch-free.

Grid x seeds, plus the teacher run first when the teacher is trained here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from engine.core.reading import copy_point, points
from engine.core.schema import Experiment, teacher_experiment


@dataclass
class RunPlan:
    """One run to create: a fully resolved single-point, single-seed experiment."""

    config: Experiment
    seed: int
    point: dict  # swept key -> value (empty for no sweep)
    role: str = "student"  # "teacher" for a teacher trained first

    @property
    def label(self) -> str:
        parts = [f"{k.split('.')[-1]}={v}" for k, v in self.point.items()]
        return " ".join(parts + [f"seed={self.seed}"])


PATH_KEYS = (("data", "root"), ("teacher", "checkpoint"), ("student", "checkpoint"))


def absolute_paths(exp: Experiment, base: str | Path | None = None) -> Experiment:
    """A copy whose file paths are absolute (relative ones are taken from `base`, default the
    working directory), so the engine, started elsewhere, finds the same files."""
    base = Path(base) if base is not None else Path.cwd()
    out = copy.deepcopy(exp)
    for sec, key in PATH_KEYS:
        value = getattr(getattr(out, sec), key)
        if value:
            setattr(getattr(out, sec), key, str((base / Path(value).expanduser()).absolute()))
    return out


def expand(exp: Experiment) -> list[RunPlan]:
    """Grid x seeds, plus the teacher run first when the teacher is trained here."""
    plans: list[RunPlan] = []
    configs = points(exp)
    if any(cfg.teacher.train and cfg.method.needs_teacher for _, cfg in configs):
        plans.append(RunPlan(teacher_experiment(exp), exp.seeds[0], {}, role="teacher"))
    for point, cfg in configs:
        for seed in exp.seeds:
            one = copy_point(cfg)
            one.seeds = [seed]
            plans.append(RunPlan(one, seed, dict(point)))
    return plans
