"""Leaderboard rows from the store, and their Markdown / CSV / LaTeX forms. Torch-free.

Runs that differ only by seed form one row (mean ± std, n). Accuracy is
always the test-time head's, and each row says which head that is.
Gap closed = (student − baseline student) / (teacher − baseline student),
where the baseline student is a vanilla run of the same architecture on
the same data set, and the teacher's accuracy is measured by the run
itself on the same test set.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.store import Run


@dataclass
class Row:
    experiment: str
    label: str  # sweep point without the seed
    role: str
    method: str
    teacher: str
    student: str
    dataset: str
    head: str
    run_ids: list[int]
    statuses: list[str]
    best: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    teacher_top1: float | None = None
    params: int | None = None
    epoch: int = 0
    epochs: int = 0
    baseline: float | None = None
    gap: float | None = None

    @property
    def n(self) -> int:
        return len(self.best)

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


def _label_without_seed(run: Run) -> str:
    point = json.loads(run.point or "{}")
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def build_rows(
    runs: Iterable[Run], *, baseline: dict[tuple[str, str], float] | None = None
) -> list[Row]:
    """Group runs by (experiment, sweep point, role); rank by mean best top-1."""
    groups: dict[tuple, Row] = {}
    for r in runs:
        label = _label_without_seed(r)
        key = (r.experiment, label, r.role, r.method, r.teacher_arch, r.student_arch)
        row = groups.get(key)
        if row is None:
            row = groups[key] = Row(
                r.experiment,
                label,
                r.role,
                r.method,
                r.teacher_arch,
                r.student_arch,
                r.dataset,
                r.head,
                [],
                [],
            )
        row.run_ids.append(r.id)
        row.statuses.append(r.status)
        if r.best_top1 is not None:
            row.best.append(r.best_top1)
        if r.last_top1 is not None:
            row.last.append(r.last_top1)
        if r.teacher_top1 is not None:
            row.teacher_top1 = r.teacher_top1
        row.params = r.params or row.params
        row.epoch = max(row.epoch, r.epoch)
        row.epochs = max(row.epochs, r.epochs)
    rows = list(groups.values())
    baselines = dict(baseline or {})
    for row in rows:  # vanilla rows are the baselines of their architecture
        if row.method == "vanilla" and row.best and all(s == "done" for s in row.statuses):
            baselines.setdefault((row.student, row.dataset), row.best_mean)
    for row in rows:
        base = baselines.get((row.student, row.dataset))
        teacher = row.teacher_top1
        if teacher is None and row.teacher:
            teacher = baselines.get((row.teacher, row.dataset))
        row.baseline = base
        if (
            base is not None
            and teacher is not None
            and row.best
            and row.method != "vanilla"
            and abs(teacher - base) > 1e-9
        ):
            row.gap = (row.best_mean - base) / (teacher - base)
    rows.sort(key=lambda r: (r.best_mean is None, -(r.best_mean or 0.0), r.experiment, r.label))
    return rows


# ---------------------------------------------------------------- formatting
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
    "params",
    "epochs",
    "status",
)
NUMERIC = ("#", "best top-1", "last top-1", "n", "gap closed", "params")  # right-aligned


def fmt_acc(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def fmt_params(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def fmt_gap(gap: float | None) -> str:
    return "–" if gap is None else f"{100 * gap:.0f}%"


def cells(row: Row, rank: int) -> list[str]:
    return [
        str(rank),
        row.name,
        row.method,
        row.pair,
        row.head,
        fmt_acc(row.best_mean, row.best_std),
        fmt_acc(row.last_mean, row.last_std),
        str(row.n),
        fmt_gap(row.gap),
        fmt_params(row.params),
        f"{row.epoch}/{row.epochs}",
        row.status,
    ]


def table(rows: Sequence[Row]) -> tuple[tuple[str, ...], list[list[str]]]:
    return COLUMNS, [cells(r, i) for i, r in enumerate(rows, 1)]


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: Sequence[Row]) -> str:
    head, body = table(rows)
    numeric = {"#", "best top-1", "last top-1", "n", "gap closed", "params", "epochs"}
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---:" if h in numeric else "---" for h in head) + " |",
    ]
    for r in body:
        lines.append("| " + " | ".join(_md_escape(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "rank",
            "experiment",
            "label",
            "role",
            "method",
            "teacher",
            "student",
            "dataset",
            "head",
            "best_top1_mean",
            "best_top1_std",
            "last_top1_mean",
            "last_top1_std",
            "n",
            "gap_closed",
            "teacher_top1",
            "baseline_top1",
            "params",
            "epoch",
            "epochs",
            "status",
            "run_ids",
        ]
    )
    for i, r in enumerate(rows, 1):
        w.writerow(
            [
                i,
                r.experiment,
                r.label,
                r.role,
                r.method,
                r.teacher,
                r.student,
                r.dataset,
                r.head,
                _num(r.best_mean),
                _num(r.best_std),
                _num(r.last_mean),
                _num(r.last_std),
                r.n,
                _num(r.gap),
                _num(r.teacher_top1),
                _num(r.baseline),
                r.params or "",
                r.epoch,
                r.epochs,
                r.status,
                " ".join(map(str, r.run_ids)),
            ]
        )
    return buf.getvalue()


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


_LATEX_SPECIAL = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def _tex(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(c, c) for c in text)
    return out.replace("→", r"$\rightarrow$").replace("±", r"$\pm$")


def to_latex(rows: Sequence[Row]) -> str:
    """A booktabs table; the best value of each accuracy column is bold."""
    cols = [
        "Experiment",
        "Method",
        "Teacher $\\rightarrow$ Student",
        "Head",
        "Best top-1",
        "Last top-1",
        "$n$",
        "Gap closed",
    ]
    best_best = max((r.best_mean for r in rows if r.best_mean is not None), default=None)
    best_last = max((r.last_mean for r in rows if r.last_mean is not None), default=None)
    best_gap = max((r.gap for r in rows if r.gap is not None), default=None)

    def acc(mean, std, top):
        if mean is None:
            return "--"
        text = f"{mean:.2f}"
        if mean == top:
            text = f"\\textbf{{{text}}}"
        return f"{text} $\\pm$ {std:.2f}" if std is not None else text

    lines = ["\\begin{tabular}{llllrrrr}", "\\toprule", " & ".join(cols) + " \\\\", "\\midrule"]
    for r in rows:
        gap = "--" if r.gap is None else f"{100 * r.gap:.0f}\\%"
        if r.gap is not None and r.gap == best_gap:
            gap = f"\\textbf{{{gap}}}"
        lines.append(
            " & ".join(
                [
                    _tex(r.name),
                    _tex(r.method),
                    _tex(r.pair),
                    _tex(r.head),
                    acc(r.best_mean, r.best_std, best_best),
                    acc(r.last_mean, r.last_std, best_last),
                    str(r.n),
                    gap,
                ]
            )
            + " \\\\"
        )
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "latex": to_latex}


def export(rows: Sequence[Row], fmt: str) -> str:
    try:
        return FORMATS[fmt](rows)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}") from None
