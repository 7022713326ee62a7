"""Run planning: an experiment expanded into the runs to create, each one complete. Torch-free.

Grid x seeds, plus the teacher run first when the teacher is trained here. A `RunPlan`
carries everything a run row holds: its config, label, data seed, teacher dependency,
fuse key and fingerprint. Two of those need the store (a run id, and the recipe of a
teacher another run trains), so `Store.submit` looks them up and hands them to
`resolve`, which makes the plan complete; the store then only records it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from engine.core import fingerprint as fpmod
from engine.core.reading import copy_point, points
from engine.core.registry import method_label
from engine.core.schema import Experiment, data_seed, teacher_experiment, world_size


@dataclass
class RunPlan:
    """One run to create: a fully resolved single-point, single-seed experiment."""

    config: Experiment
    seed: int
    point: dict  # swept key -> value (empty for no sweep)
    role: str = "student"  # "teacher" for a teacher trained first
    teacher_plan: int | None = None  # the plan (an index) that trains this run's teacher
    # set by `resolve`, once the store knows the teacher's run:
    depends_on: int | None = None  # the run that trains this run's teacher
    fuse_key: str | None = None
    identity: dict | None = None  # what the fingerprint hashes (engine.core.fingerprint)

    @property
    def label(self) -> str:
        parts = [f"{k.split('.')[-1]}={v}" for k, v in self.point.items()]
        return " ".join(parts + [f"seed={self.seed}"])

    @property
    def run_label(self) -> str:
        """The run's label in the store: its sweep point and seed, or "teacher"."""
        return "teacher" if self.role == "teacher" else self.label

    @property
    def method_label(self) -> str:
        return method_label(self.config.method.name, self.config.distill.options)  # e.g. kd+ls

    @property
    def data_seed(self) -> int:
        return data_seed(self.config.data, self.seed)

    @property
    def teacher_ref(self) -> str | None:
        """The `teacher.from_run` reference (a run id or an experiment) the store resolves."""
        cfg = self.config
        if self.role == "student" and cfg.method.needs_teacher and not cfg.teacher.train:
            return cfg.teacher.from_run or None
        return None

    @property
    def fingerprint(self) -> str:
        assert self.identity is not None, "resolve() the plan first"
        return fpmod.digest(self.identity)


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
        trained_here = 0 if cfg.teacher.train and cfg.method.needs_teacher else None
        for seed in exp.seeds:
            one = copy_point(cfg)
            one.seeds = [seed]
            plans.append(RunPlan(one, seed, dict(point), teacher_plan=trained_here))
    return plans


def resolve(plan: RunPlan, *, teacher_run: int | None, teacher_source: str | None) -> RunPlan:
    """Complete a plan with what only the store knows: the id of the run that trains its
    teacher (`teacher_plan`'s run, or `teacher_ref` resolved) and that teacher's recipe
    (`fingerprint.run_source` / `file_source`). The config then names its teacher by run
    id, as the worker loads it."""
    cfg = plan.config
    if teacher_run is not None:
        if cfg.teacher.train:  # trained by this experiment's teacher run: load it from there
            cfg.teacher.train = False
            cfg.teacher.optim = {}
        cfg.teacher.from_run = str(teacher_run)
        plan.depends_on = teacher_run
    plan.fuse_key = fuse_key(cfg)
    plan.identity = fpmod.identity(cfg, teacher=teacher_source)
    return plan


def fuse_key(cfg: Experiment) -> str | None:
    """Runs with equal keys share teacher and batches, so one process can train them all."""
    if not cfg.run.fuse or not cfg.method.needs_teacher:
        return None
    t, d = cfg.teacher, cfg.data
    parts = [
        t.arch,
        t.checkpoint,
        t.from_run,
        d.dataset,
        d.root,
        str(d.batch_size),
        str(d.augment),
        d.hflip,
        d.loader,
        str(data_seed(d, cfg.seeds[0])),
        str(d.num_classes),
        str(d.train_size),
        str(d.image_size),
        str(cfg.optim.epochs),
        cfg.run.device,
        cfg.run.amp,
        str(cfg.run.max_steps),
        # process-wide settings: a group takes them from its first run, so they must agree
        cfg.run.channels_last,
        str(cfg.run.deterministic),
        str(cfg.run.compile),
        cfg.run.compile_mode,
        str(cfg.run.threads),
        cfg.run.teacher_cache,
        cfg.run.teacher_cache_dtype,
        str(cfg.run.teacher_cache_mb),
    ]
    world = world_size(cfg)
    if world > 1:  # one launcher starts the group's processes (absent at 1: older keys hold)
        parts.append(f"world={world}")
    return "|".join(parts)
