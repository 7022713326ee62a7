"""The runs table: one row per run, updated in place so the cursor never jumps."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

from engine.core import display, liveness
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


def order(runs: Sequence) -> list:
    """Running, then queued (next first), then finished runs newest first."""
    rank = {"running": 0, "queued": 1}
    return sorted(
        runs, key=lambda r: (rank.get(r.status, 2), r.id if r.status in ACTIVE else -r.id)
    )


def row_cells(run, marked: bool) -> list:
    ident = Text(f"{'●' if marked else ' '}{run.id}", style="bold yellow" if marked else "")
    name = text(run.experiment)
    name.no_wrap, name.overflow = True, "ellipsis"
    if run.label:
        name.append_text(text((f" {run.label}", "dim")))
    best = Text(cells.acc(run.best_top1), style="bold" if run.status == "done" else "")
    return [
        ident,
        cells.status(liveness.shown_status(run)),
        name,
        cells.progress(run.epoch, run.epochs, run.progress, run.status),
        best,
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
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self._keys: list[str] = []
        self._cells: dict[str, list] = {}

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    def on_resize(self) -> None:
        self.fit_columns()

    def fit_columns(self) -> None:
        """Widths from the cells; the experiment column gets what the terminal spares."""
        labels = [label for _, label, _ in COLUMNS]
        measured = content_widths(labels, self._cells.values())
        widths = {key: w for (key, _, _), w in zip(COLUMNS, measured)}
        others = sum(w + 2 * self.cell_padding for k, w in widths.items() if k != "experiment")
        room = (self.scrollable_content_region.width or self.size.width) - others
        room -= 2 * self.cell_padding
        widths["experiment"] = max(24, min(widths["experiment"], room))
        set_widths(self, widths)

    @property
    def selected_id(self) -> int | None:
        if not self._keys or self.cursor_row < 0 or self.cursor_row >= len(self._keys):
            return None
        return int(self._keys[self.cursor_row])

    def set_runs(self, runs: Sequence, marked: set[int]) -> None:
        ordered = order(runs)
        keys = [str(r.id) for r in ordered]
        new_cells = {str(r.id): row_cells(r, r.id in marked) for r in ordered}
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
        self.fit_columns()

    def select_run(self, run_id: int) -> bool:
        key = str(run_id)
        if key in self._keys:
            self.move_cursor(row=self._keys.index(key), animate=False)
            return True
        return False
