"""The leaderboard as Markdown, CSV or LaTeX: renderers of engine.core.leaderboard's rows.

Every cell is escaped for its format (control characters visible, HTML out of Markdown,
LaTeX specials quoted), so a name can never inject markup into a paper or a terminal.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from engine.core.inert import printable
from engine.core.leaderboard import NUMERIC, Row, fmt_best, fmt_n, member_table, table
from engine.core.records import ROW_FIELDS

_MD_SPECIAL = {"\\": "\\\\", "|": "\\|", "<": "&lt;", ">": "&gt;", "&": "&amp;"}


def _md_escape(text: str) -> str:
    """A table cell: control characters visible, no HTML (GitHub renders <tags>), pipes kept."""
    return "".join(_MD_SPECIAL.get(c, c) for c in printable(text))


def _md_table(head: Sequence[str], body: list[list[str]], numeric: set[str]) -> list[str]:
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---:" if h in numeric else "---" for h in head) + " |",
    ]
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in body]
    return lines


def to_markdown(rows: Sequence[Row], *, runs: bool = False) -> str:
    head, body = table(rows)
    lines = _md_table(head, body, {*NUMERIC, "epochs"})
    if runs:
        mhead, mbody = member_table(rows)
        lines += ["", *_md_table(mhead, mbody, {"#", "run", "seed", "best top-1", "last top-1"})]
    return "\n".join(lines) + "\n"


class _PrintableWriter:
    """csv.writer whose cells have control characters escaped (a CR or ESC in a label
    would split a row or drive the terminal of whoever cats the file)."""

    def __init__(self, buf: io.StringIO):
        self._w = csv.writer(buf)

    def writerow(self, row) -> None:
        self._w.writerow([printable(c) if isinstance(c, str) else c for c in row])


# A leaderboard line's columns: the JSON row's fields (engine.core.records.ROW_FIELDS owns the
# names and their order) but its display name and member list, and with the world size and
# effective batch last, where CSV readers have found them since they were added.
_LAST = ("world_size", "effective_batch")
CSV_COLUMNS = (
    *(f for f in ROW_FIELDS if f not in ("name", "members", *_LAST)),
    *_LAST,
)


def _csv_row(r: Row, rank: int) -> list:
    return [
        rank,
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
        r.reruns,
        _num(r.provisional_mean),
        _num(r.gap),
        r.gap_note,
        _num(r.teacher_top1),
        _num(r.baseline),
        r.baseline_label,
        " ".join(map(str, r.baseline_runs)),
        r.baseline_fingerprint or "",
        r.fingerprint or "",
        r.params or "",
        r.trained_params or "",
        r.epoch,
        r.epochs,
        r.status,
        " ".join(map(str, r.run_ids)),
        r.world_size or "",
        r.effective_batch or "",
    ]


def to_csv(rows: Sequence[Row], *, runs: bool = False) -> str:
    """One line per row; with `runs`, one line per member run (with its row's rank)."""
    buf = io.StringIO()
    w = _PrintableWriter(buf)
    if runs:
        w.writerow(
            [
                "rank",
                "experiment",
                "label",
                "role",
                "fingerprint",
                "run_id",
                "seed",
                "status",
                "counted",
                "note",
                "best_top1",
                "last_top1",
                "teacher_top1",
                "tags",
                "run_note",
            ]
        )
        for i, r in enumerate(rows, 1):
            for m in r.members:
                w.writerow(
                    [
                        i,
                        r.experiment,
                        r.label,
                        r.role,
                        r.fingerprint or "",
                        m.id,
                        m.seed,
                        m.status,
                        int(m.counted),
                        m.note,
                        _num(m.best),
                        _num(m.last),
                        _num(m.teacher_top1),
                        " ".join(m.tags),
                        m.run_note,
                    ]
                )
        return buf.getvalue()
    w.writerow(CSV_COLUMNS)
    for i, r in enumerate(rows, 1):
        w.writerow(_csv_row(r, i))
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
    out = "".join(_LATEX_SPECIAL.get(c, c) for c in printable(text))
    return out.replace("→", r"$\rightarrow$").replace("±", r"$\pm$").replace("–", "--")


def to_latex(rows: Sequence[Row], *, runs: bool = False) -> str:
    """A booktabs table. The best student value of each column is bold (teacher rows never
    are: trained as a teacher or the `from_run` teacher of a row); each gap closed points to
    a note under the table naming its baseline."""
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
    students = [r for r in rows if not r.is_teacher]
    best_best = max((r.best_mean for r in students if r.best_mean is not None), default=None)
    best_last = max((r.last_mean for r in students if r.last_mean is not None), default=None)
    best_gap = max((r.gap for r in students if r.gap is not None), default=None)
    marks: dict[str, str] = {}  # baseline label -> footnote letter

    def acc(row, mean, std, top, *, running: str = "--"):
        if mean is None:
            return running
        text = f"{mean:.2f}"
        if not row.is_teacher and mean == top:
            text = f"\\textbf{{{text}}}"
        return f"{text} $\\pm$ {std:.2f}" if std is not None else text

    lines = ["\\begin{tabular}{llllrrrr}", "\\toprule", " & ".join(cols) + " \\\\", "\\midrule"]
    for r in rows:
        gap = "--" if r.gap is None else f"{100 * r.gap:.0f}\\%"
        if r.gap is not None and not r.is_teacher and r.gap == best_gap:
            gap = f"\\textbf{{{gap}}}"
        if r.gap is not None and r.baseline_label:
            mark = marks.setdefault(r.baseline_label, chr(ord("a") + len(marks) % 26))
            gap += f"$^{{{mark}}}$"
        lines.append(
            " & ".join(
                [
                    _tex(r.name),
                    _tex(r.method),
                    _tex(r.pair),
                    _tex(r.head),
                    acc(r, r.best_mean, r.best_std, best_best, running=_tex(fmt_best(r))),
                    acc(r, r.last_mean, r.last_std, best_last),
                    fmt_n(r) if r.reruns else str(r.n),
                    gap,
                ]
            )
            + " \\\\"
        )
    lines.append("\\bottomrule")
    for label, mark in marks.items():
        value = next(r.baseline for r in rows if r.baseline_label == label)
        lines.append(
            f"\\multicolumn{{8}}{{l}}{{\\footnotesize $^{{{mark}}}$ gap closed against "
            f"{_tex(label)}: {value:.2f}}} \\\\"
        )
    lines.append("\\end{tabular}")
    # which runs each row is, out of the PDF but in the source that goes with the paper
    lines += [
        f"% {_tex(r.name)}: fingerprint {r.fingerprint or 'none'}, runs "
        + " ".join(map(str, r.run_ids))
        + f", {r.world_size or '?'} process{'es' * (r.world_size != 1)}, effective batch "
        + f"{r.effective_batch or '?'}"
        for r in rows
    ]
    if runs:
        lines += ["", *_latex_members(rows)]
    return "\n".join(lines) + "\n"


def _latex_members(rows: Sequence[Row]) -> list[str]:
    head, body = member_table(rows)
    lines = [
        "\\begin{tabular}{rlrrlrrrlll}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(_tex(c) for c in cells) + " \\\\" for cells in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return lines


FORMATS = {"md": to_markdown, "csv": to_csv, "latex": to_latex}


def export(rows: Sequence[Row], fmt: str, *, runs: bool = False) -> str:
    """The leaderboard in a format; `runs` adds (CSV: gives instead) its member runs."""
    try:
        writer = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}") from None
    return writer(rows, runs=runs)
