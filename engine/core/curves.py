"""Runs' curves from the store, grouped the way the leaderboard groups runs. Torch-free.

What `kdtui plot` and the app's figure key draw, and what the TensorBoard export indexes:

- A metric is *per step* (written every log window by the worker: `train/loss`,
  `train/loss_<part>`, `train/lr`) or *per epoch* (everything else: test and train
  accuracy, the epoch's lr, speed, cache rates). Per-step curves run on the global
  step, per-epoch ones on the epoch counted from 1 (the store keeps it from 0).
- Runs with equal fingerprints and role are one config, exactly as on the leaderboard
  (engine.core.leaderboard.build_rows); its row name labels the curve. Each seed counts once: the
  run the leaderboard counts for it (the latest done one), else its latest run. A curve
  is the mean over those seeds at each x every seed has reached, with the sample std
  as its band.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.core import leaderboard as lb
from engine.core import metrics as M
from engine.core.store import Metric, Run, Store, StoreError

# how a figure names a metric on its y axis; others go by their store name
DISPLAY = {
    M.TEST_TOP1: "test top-1 (%)",
    M.TEST_TOP5: "test top-5 (%)",
    M.TRAIN_TOP1: "train top-1 (%)",
    M.LOSS: "train loss",
    M.STEP_LR: "learning rate",
    M.EPOCH_LR: "learning rate",
    M.IMAGES_PER_S: "images / s",
    M.EPOCH_TIME: "epoch time (s)",
}


per_step = M.per_step


def axis_name(name: str) -> str:
    return "step" if per_step(name) else "epoch"


def x_of(name: str, epoch: int, step: int) -> int:
    """The global step of a per-step metric; the 1-based epoch of a per-epoch one."""
    return step if per_step(name) else epoch + 1


def display_name(name: str) -> str:
    return DISPLAY.get(name, name)


@dataclass
class Curve:
    """One metric of one group: the mean over its seeds at each x, and the sample std."""

    x: list[int]
    mean: list[float]
    std: list[float]  # 0.0 where only one seed has the point
    seeds: int  # how many runs the mean is over


@dataclass
class Group:
    """One config (a leaderboard row) restricted to the selected runs."""

    label: str  # the leaderboard row's name
    key: str  # fingerprint|role
    run_ids: list[int]  # one per seed, the runs the curves average
    curves: dict[str, Curve] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.run_ids)


def select(store: Store, refs: Sequence[str]) -> list[Run]:
    """Runs named by ids or experiment names, in the order named (each once)."""
    seen: dict[int, Run] = {}
    for ref in refs:
        for r in store.find(ref):  # StoreError names what is unknown
            seen.setdefault(r.id, r)
    if not seen:
        raise StoreError("name at least one run id or experiment")
    return list(seen.values())


def _one_per_seed(runs: list[Run], counted: set[int]) -> list[Run]:
    """The leaderboard's run for each seed, else the seed's latest run."""
    chosen: dict[int, Run] = {}
    for r in sorted(runs, key=lambda r: r.id):
        have = chosen.get(r.seed)
        if have is None or have.id not in counted:  # ids ascend: r is the later one
            chosen[r.seed] = r
    return sorted(chosen.values(), key=lambda r: r.seed)


def mean_curve(series: list[dict[int, float]]) -> Curve:
    """Mean ± sample std over runs at the x values all of them have (where a run stopped
    early or logs on other steps, at the x values any of them has)."""
    common = set(series[0]).intersection(*series[1:]) if series else set()
    xs = sorted(common) if common else sorted(set().union(*series))
    mean, std = [], []
    for x in xs:
        values = [s[x] for s in series if x in s]
        mean.append(statistics.fmean(values))
        std.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return Curve(xs, mean, std, len(series))


def _series(metrics: Iterable[Metric]) -> dict[str, dict[int, float]]:
    """name -> {x: value}; a later row at the same x (a resumed epoch) wins."""
    out: dict[str, dict[int, float]] = {}
    for m in metrics:
        out.setdefault(m.name, {})[x_of(m.name, m.epoch, m.step)] = m.value
    return out


def groups(store: Store, runs: Sequence[Run], metrics: Sequence[str]) -> list[Group]:
    """The selected runs as leaderboard rows (in the order first named), with the curves of
    `metrics` each row's seeds have. Rows are built from every run, so names match the
    leaderboard's."""
    rows = lb.build_rows(store.runs())
    row_of = {i: row for row in rows for i in row.run_ids}
    picked: dict[str, list[Run]] = {}
    names: dict[str, str] = {}
    counted: set[int] = set()
    for r in runs:
        row = row_of.get(r.id)
        key = row.key if row else lb.group_key(r)
        picked.setdefault(key, []).append(r)
        if row is not None:
            names[key] = row.name
            counted |= {m.id for m in row.members if m.counted}
    out = []
    for key, members in picked.items():
        chosen = _one_per_seed(members, counted)
        group = Group(names.get(key, f"run {chosen[0].id}"), key, [r.id for r in chosen])
        per_run = [_series(store.metrics(r.id, names=list(metrics))) for r in chosen]
        for name in metrics:
            have = [s[name] for s in per_run if s.get(name)]
            if have:
                group.curves[name] = mean_curve(have)
        out.append(group)
    return out


def metric_names(store: Store, runs: Sequence[Run]) -> list[str]:
    """Every metric the runs logged (for an error that lists what there is)."""
    names: set[str] = set()
    for r in runs:
        names |= {m.name for m in store.metrics(r.id)}
    return sorted(names)
