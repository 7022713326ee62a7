"""The runs table: one row per run, updated in place so the cursor never jumps."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

from engine.core import display, liveness
from engine.core.inert import printable
from kdtui.inert import text
from kdtui.widgets import cells
from kdtui.widgets.tables import content_widths, set_widths

# what matters at a glance first, so 80 columns show status, progress and accuracy
COLUMNS = (
    ("id", "#", None),
    ("status", "status", None),
    ("experiment", "experiment", 24),
    ("progress", "epoch", None),
    ("best", "best", None),
    ("eta", "ETA", None),
    ("speed", "img/s", None),
    ("method", "method", None),
    ("pair", "teacher→student", None),
    ("gpu", "GPU", None),
)
ACTIVE = ("running", "queued")
IN_VIEW = ("id", "status", "progress", "best", "eta")  # beside the name, never scrolled off


def order(runs: Sequence) -> list:
    """Running, then queued (next first), then finished runs newest first."""
    rank = {"running": 0, "queued": 1}
    return sorted(
        runs, key=lambda r: (rank.get(r.status, 2), r.id if r.status in ACTIVE else -r.id)
    )


def haystack(run) -> str:
    """What the runs view's filter searches: experiment, label, sweep point, method, pair,
    status (as shown: "dead" too), tags (with and without "#"), note, and "#id"."""
    point = " ".join(f"{k}={v}" for k, v in json.loads(run.point).items()) if run.point else ""
    tags = run.tag_list
    parts = [
        f"#{run.id}",
        run.experiment,
        run.label,
        point,
        run.method,
        run.pair,
        liveness.shown_status(run),
        " ".join(tags),
        " ".join(f"#{t}" for t in tags),
        run.note,
    ]
    return "\n".join(parts).lower()


def matches(run, query: str) -> bool:
    """Every word of the query is found somewhere in the run's haystack (case ignored)."""
    words = query.lower().split()
    if not words:
        return True
    hay = haystack(run)
    return all(w in hay for w in words)


def name_cell(run, width: int | None = None) -> Text:
    """`✎` (the run has a note), the experiment and its sweep point (cells.name_point: the
    name shortens in the middle), then its `#tags`, for which room is kept."""
    mark = "✎ " if run.note else ""
    tags = "".join(f" #{t}" for t in run.tag_list)
    room = None if width is None else max(cells.MIN_NAME, width - len(mark) - len(tags))
    out = Text(mark, style="yellow")
    out.append_text(cells.name_point(run.experiment, run.label, room))
    out.append(printable(tags), style="cyan")
    out.no_wrap, out.overflow = True, "ellipsis"
    if width is not None:
        out.truncate(width, overflow="ellipsis")
    return out


def row_cells(run, marked: bool, name_width: int | None = None, narrow: bool = False) -> list:
    """A run's cells; `narrow` (under 100 columns) gives the name the room of the status
    word and the progress bar (the icon and `40/240` stay)."""
    ident = Text(f"{'●' if marked else ' '}{run.id}", style="bold yellow" if marked else "")
    name = name_cell(run, name_width)
    best = Text(cells.acc(run.best_top1), style="bold" if run.status == "done" else "")
    return [
        ident,
        cells.status(liveness.shown_status(run), icon_only=narrow),
        name,
        cells.progress(
            run.epoch, run.epochs, run.progress, run.status, bar_width=0 if narrow else 8
        ),
        best,
        # first epoch: the worker estimates it from the steps done (engine.worker)
        display.duration(run.eta_s, short=True) if run.status == "running" else "–",
        Text(cells.speed(run.images_per_s), justify="right"),
        text(run.method),
        text(run.pair),
        text(cells.gpu(run.gpu, run.device) if run.status == "running" else "–"),
    ]


class RunTable(DataTable):
    DEFAULT_CSS = """
    RunTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        # id, status and name stay in view when the table scrolls right
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, fixed_columns=3)
        self._keys: list[str] = []
        self._cells: dict[str, list] = {}
        self._runs: list = []
        self._marked: set[int] = set()

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    def on_resize(self) -> None:
        if self._runs:
            self._show()

    def name_width(self, full: dict[str, list]) -> int:
        """The experiment column gets what the columns up to ETA spare; from 100 columns up it takes
        what a whole sweep point needs, pushing method, pair and GPU off to the right."""
        labels = [label for _, label, _ in COLUMNS]
        measured = dict(zip((k for k, _, _ in COLUMNS), content_widths(labels, full.values())))
        others = sum(w + 2 * self.cell_padding for k, w in measured.items() if k in IN_VIEW)
        total = self.scrollable_content_region.width or self.size.width
        room = total - others - 2 * self.cell_padding
        want = measured["experiment"]
        if total >= 100:
            points = [len(cells.name_point("", r.label).plain) for r in self._runs]
            room = max(room, max(points, default=0) + cells.MIN_NAME + 4)
        return max(24, min(want, room))

    @property
    def selected_id(self) -> int | None:
        if not self._keys or self.cursor_row < 0 or self.cursor_row >= len(self._keys):
            return None
        return int(self._keys[self.cursor_row])

    def set_runs(self, runs: Sequence, marked: set[int]) -> None:
        self._runs, self._marked = order(runs), set(marked)
        self._show()

    def _show(self) -> None:
        ordered, marked = self._runs, self._marked
        keys = [str(r.id) for r in ordered]
        narrow = (self.scrollable_content_region.width or self.size.width) < 100
        full = {str(r.id): row_cells(r, r.id in marked, narrow=narrow) for r in ordered}
        width = self.name_width(full)
        name_at = [k for k, _, _ in COLUMNS].index("experiment")
        new_cells = full
        for r in ordered:
            cell = full[str(r.id)]
            if cell[name_at].cell_len > width:
                cell[name_at] = name_cell(r, width)
        if keys == self._keys:
            for key in keys:
                old = self._cells.get(key)
                for (col, _, _), value, before in zip(COLUMNS, new_cells[key], old or []):
                    if value != before:
                        self.update_cell(key, col, value)
        else:
            selected = self.selected_id
            self.clear()
            for key in keys:
                self.add_row(*new_cells[key], key=key)
            if selected is not None and str(selected) in keys:
                self.move_cursor(row=keys.index(str(selected)), animate=False)
        self._keys = keys
        self._cells = new_cells
        labels = [label for _, label, _ in COLUMNS]
        widths = dict(zip((k for k, _, _ in COLUMNS), content_widths(labels, new_cells.values())))
        widths["experiment"] = width
        set_widths(self, widths)

    def select_run(self, run_id: int) -> bool:
        key = str(run_id)
        if key in self._keys:
            self.move_cursor(row=self._keys.index(key), animate=False)
            return True
        return False
