"""The leaderboard model: rows from the store's runs, and their table cells. Torch-free.

The CLI table, the app's board and the exports (engine.core.export) all show these rows
and cells; nothing else decides what a row is.

The rules (README, "Reading the leaderboard"):

- A row is one experiment: runs with equal fingerprints (engine.core.fingerprint:
  the resolved config without seed, names and speed settings) and role.
  Nothing else is ever averaged together.
- Each seed counts once. Several done runs of one seed are reruns: the
  latest (highest run id) counts, the others are listed as reruns
  (`n 1 (+1 rerun)`).
- Means (best and last top-1, mean ± sample std over seeds) use done runs
  only. Failed and cancelled runs never enter them; they show in the row's
  status and member list, and a fingerprint with only such runs is a row of
  its own, ranked last. Running runs stay out of the mean too: a row with no
  done run yet shows the running runs' current best in parentheses and is
  ranked after every finished row.
- Gap closed = (student − baseline) / (teacher − baseline), for student rows
  of a method other than vanilla. student: the row's mean best top-1;
  teacher: the mean of its counted runs' own measured teacher top-1 (same
  head, same test split); baseline: the mean best top-1 of done vanilla runs
  with the same baseline fingerprint (the same student, data and recipe:
  the identity without teacher and method; one run per seed as above), or
  a pinned baseline of the same student architecture and data set. Without
  one, or with teacher <= baseline, it is "–" and the row says why. A
  finished row's value changes only when a seed of it or of its baseline
  finishes, never because unrelated runs are added.
- Accuracy is always the test-time head's, and each row says which head.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.core import fingerprint as fpmod
from engine.core.store import Run

NOT_COUNTED = {
    "failed": "failed: not in the mean",
    "cancelled": "cancelled: not in the mean",
    "running": "running: counted when done",
    "queued": "queued",
}


@dataclass
class Member:
    """One run of a row, and whether (and why not) it is in the row's mean."""

    id: int
    experiment: str
    seed: int
    status: str
    best: float | None
    last: float | None
    teacher_top1: float | None
    counted: bool
    note: str  # why it is (not) in the mean
    tags: list[str] = field(default_factory=list)  # the researcher's (engine.core.annotations)
    run_note: str = ""  # the researcher's note on the run


@dataclass
class Baseline:
    """What a row's gap closed is measured against."""

    value: float
    label: str  # experiment name(s) and run ids
    run_ids: list[int]
    student: str = ""
    dataset: str = ""
    pinned: bool = False


@dataclass
class Row:
    experiment: str
    label: str  # how this row differs from other rows of the experiment ("epochs=3 lr=0.1")
    role: str
    method: str
    teacher: str
    student: str
    dataset: str
    head: str
    run_ids: list[int]
    statuses: list[str]
    best: list[float] = field(default_factory=list)  # one per counted (done) seed
    last: list[float] = field(default_factory=list)
    teacher_top1: float | None = None
    params: int | None = None  # the student alone
    trained_params: int | None = None  # everything the optimiser updates
    world_size: int | None = None  # processes per run (part of the fingerprint above one)
    effective_batch: int | None = None  # images per optimiser step over all processes
    epoch: int = 0
    epochs: int = 0
    baseline: float | None = None
    gap: float | None = None
    key: str = ""  # fingerprint|role: stable while labels change
    fingerprint: str | None = None
    identity: dict | None = None
    names: list[str] = field(default_factory=list)  # every experiment name of its runs
    members: list[Member] = field(default_factory=list)
    provisional: list[float] = field(default_factory=list)  # running runs' current best
    baseline_label: str = ""
    baseline_runs: list[int] = field(default_factory=list)
    baseline_fingerprint: str | None = None
    gap_note: str = ""  # why gap closed is "–"
    teaches: bool = False  # a distilled row names this row's fingerprint as its teacher

    @property
    def is_teacher(self) -> bool:
        """Trained as a teacher here, or the teacher (`from_run`) of a distilled row."""
        return self.role == "teacher" or self.teaches

    @property
    def n(self) -> int:
        return len(self.best)

    @property
    def reruns(self) -> int:
        return sum(1 for m in self.members if m.status == "done" and not m.counted)

    @property
    def best_mean(self) -> float | None:
        return statistics.fmean(self.best) if self.best else None

    @property
    def best_std(self) -> float | None:
        return statistics.stdev(self.best) if len(self.best) > 1 else None

    @property
    def last_mean(self) -> float | None:
        return statistics.fmean(self.last) if self.last else None

    @property
    def last_std(self) -> float | None:
        return statistics.stdev(self.last) if len(self.last) > 1 else None

    @property
    def provisional_mean(self) -> float | None:
        return statistics.fmean(self.provisional) if self.provisional else None

    @property
    def status(self) -> str:
        counts: dict[str, int] = {}
        for s in self.statuses:
            counts[s] = counts.get(s, 0) + 1
        if len(counts) == 1:
            ((s, c),) = counts.items()
            return s if c == 1 else f"{s} ×{c}"
        return " ".join(f"{s}×{c}" for s, c in counts.items())

    @property
    def pair(self) -> str:
        return f"{self.teacher}→{self.student}" if self.teacher else self.student

    @property
    def name(self) -> str:
        suffix = f" [{self.label}]" if self.label else ""
        role = " (teacher)" if self.role == "teacher" else ""
        return f"{self.experiment}{suffix}{role}"


def _point_label(run: Run) -> str:
    """The sweep point without the seed: the label of a run stored without an identity."""
    point = json.loads(run.point or "{}")
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def _identity(run: Run) -> dict | None:
    try:
        return json.loads(run.identity) if run.identity else None
    except ValueError:
        return None


def group_key(run: Run) -> str:
    """Runs without a fingerprint (a store whose old configs no longer parse) stand alone."""
    return f"{run.fingerprint or f'run-{run.id}'}|{run.role}"


def _members(runs: list[Run]) -> list[Member]:
    """The latest done run of each seed counts; earlier ones are reruns."""
    counted: dict[int, int] = {}
    for r in runs:
        if r.status == "done":
            counted[r.seed] = max(counted.get(r.seed, r.id), r.id)
    out = []
    for r in runs:
        ok = r.status == "done" and counted[r.seed] == r.id
        if ok:
            note = "counted"
        elif r.status == "done":
            note = f"rerun: run {counted[r.seed]} counts for seed {r.seed}"
        else:
            note = NOT_COUNTED.get(r.status, r.status)
            if r.error and r.status in ("failed", "cancelled"):
                note += f" ({r.error.strip().splitlines()[0][:80]})"
        out.append(
            Member(
                r.id,
                r.experiment,
                r.seed,
                r.status,
                r.best_top1,
                r.last_top1,
                r.teacher_top1,
                ok,
                note,
                r.tag_list,
                r.note,
            )
        )
    return out


def _row(runs: list[Run]) -> Row:
    first, latest = runs[0], runs[-1]
    names: list[str] = []
    for r in runs:
        if r.experiment not in names:
            names.append(r.experiment)
    row = Row(
        names[0],
        "",
        first.role,
        first.method,
        first.teacher_arch,
        first.student_arch,
        first.dataset,
        first.head,
        [r.id for r in runs],
        [r.status for r in runs],
        key=group_key(first),
        fingerprint=first.fingerprint,
        identity=_identity(first),
        names=names,
        members=_members(runs),
    )
    by_id = {r.id: r for r in runs}
    teachers = []
    for m in row.members:
        r = by_id[m.id]
        if m.counted:
            if r.best_top1 is not None:
                row.best.append(r.best_top1)
            if r.last_top1 is not None:
                row.last.append(r.last_top1)
            if r.teacher_top1 is not None:
                teachers.append(r.teacher_top1)
        elif r.status == "running" and r.best_top1 is not None:
            row.provisional.append(r.best_top1)
        row.epoch = max(row.epoch, r.epoch)
        row.epochs = max(row.epochs, r.epochs)
    row.teacher_top1 = statistics.fmean(teachers) if teachers else None
    row.params = next((r.params for r in reversed(runs) if r.params), latest.params)
    row.trained_params = next((r.trained_params for r in reversed(runs) if r.trained_params), None)
    sized = next((r for r in reversed(runs) if r.effective_batch), None)
    if sized is not None:
        row.world_size, row.effective_batch = sized.world_size, sized.effective_batch
    if row.identity is not None:
        row.baseline_fingerprint = fpmod.baseline_fingerprint(row.identity)
    return row


def _labels(rows: list[Row], runs_by_key: dict[str, list[Run]]) -> None:
    """Rows of one experiment name and role are told apart by what differs in their configs."""
    families: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        families.setdefault((row.experiment, row.role), []).append(row)
    for family in families.values():
        known = {row.key: row.identity for row in family if row.identity is not None}
        labels = fpmod.diff_labels(known) if len(known) > 1 else {}
        for row in family:
            if row.identity is None:
                row.label = " ".join(
                    filter(None, [_point_label(runs_by_key[row.key][0]), f"run {row.run_ids[0]}"])
                )
            else:
                row.label = labels.get(row.key, "")


def _baselines(runs: list[Run]) -> dict[str, Baseline]:
    """Baseline fingerprint -> the mean of its done vanilla runs, one per seed (the latest)."""
    seeds: dict[str, dict[int, Run]] = {}
    for r in runs:
        if r.method != "vanilla" or r.status != "done" or r.best_top1 is None:
            continue
        ident = _identity(r)
        if ident is None:
            continue
        per_seed = seeds.setdefault(fpmod.baseline_fingerprint(ident), {})
        if r.seed not in per_seed or per_seed[r.seed].id < r.id:
            per_seed[r.seed] = r
    out = {}
    for bfp, per_seed in seeds.items():
        chosen = sorted(per_seed.values(), key=lambda r: r.id)
        out[bfp] = Baseline(
            statistics.fmean(r.best_top1 for r in chosen),  # type: ignore[misc]
            "",  # named once the rows exist
            [r.id for r in chosen],
            chosen[0].student_arch,
            chosen[0].dataset,
        )
    return out


def _rows_label(rows: Sequence[Row], run_ids: Sequence[int]) -> str:
    """`baseline-r8x4 (#1,#2,#3)`: the row name(s) and the runs that make the mean."""
    names: list[str] = []
    for row in rows:
        if row.name not in names:
            names.append(row.name)
    return f"{', '.join(names)} (#{',#'.join(map(str, run_ids))})"


def pin_of(row: Row) -> Baseline | None:
    """A row as a pinned baseline (its counted runs), or None while it has no done run."""
    counted = [m.id for m in row.members if m.counted]
    if row.best_mean is None or not counted:
        return None
    return Baseline(
        row.best_mean,
        _rows_label([row], counted),
        counted,
        row.student,
        row.dataset,
        pinned=True,
    )


def _gap(row: Row, found: dict[str, Baseline], pin: Baseline | None) -> None:
    if row.role == "teacher":
        row.gap_note = "teacher row"
        return
    if row.method == "vanilla":
        row.gap_note = "vanilla run: a baseline itself"
        return
    base = None
    if pin is not None and (pin.student, pin.dataset) == (row.student, row.dataset):
        base = pin
    elif row.baseline_fingerprint is not None:
        base = found.get(row.baseline_fingerprint)
    if base is not None:
        row.baseline = base.value
        row.baseline_label = ("pinned: " if base.pinned else "") + base.label
        row.baseline_runs = list(base.run_ids)
    if row.best_mean is None:
        row.gap_note = "no finished run"
    elif base is None:
        recipe = f" (baseline fingerprint {row.baseline_fingerprint})"
        row.gap_note = (
            f"no finished vanilla {row.student} run on the same data with the same recipe"
            + (recipe if row.baseline_fingerprint else "")
        )
    elif row.teacher_top1 is None:
        row.gap_note = "teacher top-1 not measured"
    elif row.teacher_top1 <= base.value:
        row.gap_note = (
            f"teacher not above baseline ({row.teacher_top1:.2f} <= {base.value:.2f}): "
            "gap closed is meaningless"
        )
    else:
        row.gap = (row.best_mean - base.value) / (row.teacher_top1 - base.value)


def _rank_key(row: Row):
    if row.best_mean is not None:
        return (0, -row.best_mean, row.experiment, row.label)
    if row.provisional_mean is not None:
        return (1, -row.provisional_mean, row.experiment, row.label)
    return (2, 0.0, row.experiment, row.label)


def build_rows(runs: Iterable[Run], *, pin: Baseline | None = None) -> list[Row]:
    """Group runs by (fingerprint, role); finished rows first, by mean best top-1.

    `pin`: a baseline that replaces the matched one for student rows of its
    architecture and data set (the app's `p`, `kdtui leaderboard --baseline`).
    """
    runs = sorted(runs, key=lambda r: r.id)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(group_key(r), []).append(r)
    rows = [_row(members) for members in groups.values()]
    _labels(rows, groups)
    teachers = {
        row.identity["teacher"]["source"].removeprefix("run:")
        for row in rows
        if row.identity and "teacher" in row.identity
    }
    for row in rows:
        row.teaches = row.fingerprint in teachers
    found = _baselines(runs)
    row_of = {i: row for row in rows for i in row.run_ids}
    for base in found.values():  # named after the leaderboard rows its runs are in
        base.label = _rows_label([row_of[i] for i in base.run_ids], base.run_ids)
    for row in rows:
        _gap(row, found, pin)
    rows.sort(key=_rank_key)
    return rows


# ---------------------------------------------------------------- table cells
COLUMNS = (
    "#",
    "experiment",
    "method",
    "teacher→student",
    "head",
    "best top-1",
    "last top-1",
    "n",
    "gap closed",
    "baseline",
    "trained params",
    "eff. batch",
    "epochs",
    "status",
    "fingerprint",
)
NUMERIC = ("#", "best top-1", "last top-1", "n", "gap closed", "trained params")  # right-aligned
FP_SHOWN = 12  # fingerprint digits shown in tables (the store and CSV keep all 16)
MEMBER_COLUMNS = (
    "#",
    "experiment",
    "run",
    "seed",
    "status",
    "best top-1",
    "last top-1",
    "teacher top-1",
    "note",
    "tags",
    "run note",
)


def fmt_acc(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def fmt_best(row: Row) -> str:
    """Mean ± std of done seeds; a running row's current best in parentheses (not final)."""
    if row.best_mean is None and row.provisional_mean is not None:
        return f"({row.provisional_mean:.2f})"
    return fmt_acc(row.best_mean, row.best_std)


def fmt_n(row: Row) -> str:
    extra = row.reruns
    return f"{row.n} (+{extra} rerun{'s' * (extra != 1)})" if extra else str(row.n)


def fmt_params(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def fmt_batch(effective: int | None, world: int | None) -> str:
    """The images of one optimiser step, and how they split over processes above one:
    `64`, or `128 = 2×64` (2 processes of 64 images each)."""
    if not effective:
        return "–"
    if not world or world == 1:
        return str(effective)
    return f"{effective} = {world}×{effective // world}"


def world_text(world: int | None, effective: int | None) -> str:
    """A run's processes and batch in words (the app's config view)."""
    if not world or not effective:
        return "processes not recorded"
    if world == 1:
        return f"1 process, batch {effective}"
    return f"{world} processes, effective batch {fmt_batch(effective, world)}"


def fmt_gap(gap: float | None) -> str:
    return "–" if gap is None else f"{100 * gap:.0f}%"


def fmt_top1(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def cells(row: Row, rank: int) -> list[str]:
    return [
        str(rank),
        row.name,
        row.method,
        row.pair,
        row.head,
        fmt_best(row),
        fmt_acc(row.last_mean, row.last_std),
        fmt_n(row),
        fmt_gap(row.gap),
        row.baseline_label or "–",
        fmt_params(row.trained_params),
        fmt_batch(row.effective_batch, row.world_size),
        f"{row.epoch}/{row.epochs}",
        row.status,
        (row.fingerprint or "–")[:FP_SHOWN],
    ]


def table(rows: Sequence[Row]) -> tuple[tuple[str, ...], list[list[str]]]:
    return COLUMNS, [cells(r, i) for i, r in enumerate(rows, 1)]


def member_cells(row: Row, rank: int, m: Member) -> list[str]:
    return [
        str(rank),
        row.name,
        str(m.id),
        str(m.seed),
        m.status,
        fmt_top1(m.best),
        fmt_top1(m.last),
        fmt_top1(m.teacher_top1),
        m.note,
        " ".join(m.tags),
        m.run_note,
    ]


def member_table(rows: Sequence[Row]) -> tuple[tuple[str, ...], list[list[str]]]:
    """One line per run of every row (`--runs`): which runs a row's figures come from."""
    body = [member_cells(r, i, m) for i, r in enumerate(rows, 1) for m in r.members]
    return MEMBER_COLUMNS, body
