"""How a run reads to a person: status styles and icons, its name, pair, progress and durations.

One owner, so `kdtui ls`, `kdtui engine status`, `kdtui run` and the app say a run the
same way. Torch-free and Rich-free: strings only (a style is a Rich style string), so the
core can own it beside the store's `Run` it formats, and any front end can use it. How a
sweep point is shortened for a table is engine.core.points; a run's name and title use it.
"""

from __future__ import annotations

from typing import Any

from engine.core.points import short_point

NONE = "–"  # what a table cell shows for a value it does not have

STATUS_STYLE = {
    "queued": "yellow",
    "running": "bold cyan",
    "done": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    "dead": "bold red reverse",  # marked running, its process gone (engine.core.liveness)
}
STATUS_ICON = {
    "queued": "◌",
    "running": "▶",
    "done": "✓",
    "failed": "✗",
    "cancelled": "■",
    "dead": "†",
}


def pair(teacher_arch: str | None, student_arch: str) -> str:
    """teacher→student, or the student alone for a run with no teacher."""
    return f"{teacher_arch}→{student_arch}" if teacher_arch else student_arch


def name(run: Any) -> str:
    """`#12 study [lr=0.1 f=4 seed=1]`: the run's id, experiment and sweep point (`short_point`)
    (the app's toasts, titles and prompts)."""
    return f"#{run.id} {run.experiment}" + (f" [{short_point(run.label)}]" if run.label else "")


def title(run: Any, *, experiment: bool = True) -> str:
    """`#12 study: kd resnet32x4→resnet8x4 lr=0.1 seed=1`: what the CLI prints for a run
    (`experiment=False` where the experiment is already said, as in `kdtui run`)."""
    who = "teacher" if run.role == "teacher" else run.method
    point = f" {short_point(run.label)}" if run.label and run.role != "teacher" else ""
    where = f" {run.experiment}:" if experiment else ""
    return f"#{run.id}{where} {who} {run.pair}{point}"


def progress(run: Any) -> str:
    """`3/240 1%`: epochs done and the fraction of the run, steps included."""
    return f"{run.epoch}/{run.epochs} {100 * run.progress:.0f}%"


def duration(seconds: float | None, *, short: bool = False) -> str:
    """`42s`, `3m07s`, `1h05m`, `2d03h`; `short` (the app's narrow ETA column) drops the
    smaller unit below a day: `3m`, `1h05`, and counts hours up to 48."""
    if seconds is None or seconds < 0:
        return NONE
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    minutes, hours = s // 60, s // 3600
    if short:
        if minutes < 60:
            return f"{minutes}m"
        if hours < 48:
            return f"{hours}h{minutes % 60:02d}"
        return f"{hours // 24}d{hours % 24:02d}h"
    if s < 3600:
        return f"{minutes}m{s % 60:02d}s"
    if s < 86400:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{s // 86400}d{hours % 24:02d}h"
