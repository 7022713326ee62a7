"""The Rich tables the command line prints: what each command shows, apart from what it does.

Every cell is plain text (`kdtui.inert.text`): a sweep label like "[lr=0.1]" is data,
never markup.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from engine.core import display, planning, schema
from engine.core import leaderboard as lb
from engine.core.points import short_point
from kdtui.cli.common import console
from kdtui.inert import text


def add_text_row(t: Table, *cells: str | Text) -> None:
    """Cells as plain text: a sweep label like "[lr=0.1]" is data, not Rich markup."""
    t.add_row(*(text(c) if isinstance(c, str) else c for c in cells))


def plan_table(exp: schema.Experiment) -> Table:
    t = Table(title=text(f"{exp.name}: runs"), title_justify="left")
    for col in ("#", "role", "method", "teacher→student", "data", "lr", "epochs", "point"):
        t.add_column(col)
    for i, p in enumerate(planning.expand(exp), 1):
        c = p.config
        pair = display.pair(c.teacher.arch if c.method.needs_teacher else "", c.student.arch)
        add_text_row(
            t,
            str(i),
            p.role,
            c.distill.method,
            pair,
            c.data.dataset,
            f"{c.optim.lr:g}",
            str(c.optim.epochs),
            short_point(p.label),
        )
    return t


def progress_text(r) -> str:
    """Epochs and percent; the ETA while running; what a queued run waits for."""
    text = display.progress(r)
    if r.status == "running" and r.eta_s:
        text += f" eta {display.duration(r.eta_s)}"
    elif r.status == "queued" and r.depends_on:
        text += f" after #{r.depends_on}"
    return text


# Dropped first when the terminal is too narrow: the rank, names, head and best top-1 stay.
DROP_ORDER = (
    "fingerprint",
    "baseline",
    "trained params",
    "eff. batch",
    "epochs",
    "last top-1",
    "status",
    "n",
    "gap closed",
    "#",
)


# `kdtui ls`: id, status, experiment, point, progress and best top-1 stay
LS_DROP_ORDER = (
    "fingerprint",
    "device",
    "tags · note",
    "img/s",
    "eff. batch",
    "head",
    "teacher→student",
    "method",
    "slurm job",  # a Slurm engine's runs: dropped last
)


def fit_columns(head, body, width: int, drop: tuple[str, ...] = DROP_ORDER) -> list[int]:
    """Indices of the columns that fit in `width`, so an 80-column SSH terminal
    shows whole names and figures instead of every cell cut to "qui…"."""

    def need(i: int) -> int:  # longest header word or cell, plus padding and border
        words = max(len(w) for w in head[i].split())
        return max([words] + [len(c[i]) for c in body]) + 3

    keep = list(range(len(head)))
    for name in drop:
        if sum(need(i) for i in keep) + 1 <= width:
            break
        if name in head:  # a column only some listings have (kdtui ls's slurm job)
            keep.remove(head.index(name))
    return keep


def leaderboard_table(rows) -> Table:
    head, body = lb.table(rows)
    keep = fit_columns(head, body, console.width)
    hidden = [head[i] for i in range(len(head)) if i not in keep]
    notes = []
    if any(row.best_mean is None and row.provisional for row in rows):
        notes.append("best top-1 in parentheses: runs still running, not in any mean")
    if hidden:
        notes.append(f"too narrow to show: {', '.join(hidden)} (widen it or use kdtui export)")
    t = Table(
        title="leaderboard (accuracy of the head used at test time)",
        title_justify="left",
        caption="\n".join(notes) or None,
        caption_justify="left",
    )
    for i in keep:
        # fold, not "…": what does not fit goes on the next line, nothing is cut
        t.add_column(head[i], justify="right" if head[i] in lb.NUMERIC else "left", overflow="fold")
    for cells in body:
        add_text_row(t, *(cells[i] for i in keep))
    return t


def members_table(rows) -> Table:
    """`--runs`: every run behind each row, and whether it is in the row's mean."""
    head, body = lb.member_table(rows)
    t = Table(title="runs of each row (# = the row's rank)", title_justify="left")
    numeric = {"#", "run", "seed", "best top-1", "last top-1", "teacher top-1"}
    for h in head:
        t.add_column(h, justify="right" if h in numeric else "left", overflow="fold")
    for cells in body:
        add_text_row(t, *cells)
    return t
