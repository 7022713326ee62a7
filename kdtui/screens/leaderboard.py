"""The leaderboard: `kdtui leaderboard`'s table (engine.core.leaderboard), sortable, filterable, exportable."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Label, Static

from engine.core import export as exportmod
from engine.core import leaderboard as lb
from engine.core.display import STATUS_STYLE
from engine.core.inert import printable
from engine.core.leaderboard import Row
from kdtui.inert import text
from kdtui.messages import DataChanged
from kdtui.widgets.cells import MIN_NAME, name_point, short_path
from kdtui.widgets.footer import KeyFooter
from kdtui.widgets.tables import content_widths, set_widths

PIN_COLUMN = "Δ pin"
# the `kdtui leaderboard` columns, with accuracy (and the head that produced it) first so
# that 80 columns show it; the rest scrolls sideways
COLUMNS = (
    "#",
    "experiment",
    "head",
    "best top-1",
    "n",
    "last top-1",
    "gap closed",
    PIN_COLUMN,
    "baseline",
    "method",
    "teacher→student",
    "trained params",
    "eff. batch",
    "epochs",
    "status",
    "fingerprint",
)
NAME = COLUMNS.index("experiment")
FIRST_IN_VIEW = ("#", "experiment", "head", "best top-1", "n")  # at 80 columns too
_EXPORT_INDEX = {name: i for i, name in enumerate(lb.COLUMNS)}
NUMERIC = {*lb.NUMERIC, "epochs", PIN_COLUMN}  # right-aligned, sorted high first
STATUS_FILTERS = ("all", "running", "queued", "done", "failed", "cancelled")
EXTENSIONS = {"md": "md", "csv": "csv", "latex": "tex"}
FORMAT_NAMES = {"md": "Markdown", "csv": "CSV", "latex": "LaTeX"}


def row_key(row: Row) -> str:
    """Fingerprint and role: stays the same when rows are added and labels change."""
    return row.key


def row_name(row: Row, width: int | None = None) -> Text:
    """The row's experiment and `[point]` (`short_point`), shortened to `width` if given."""
    suffix = " (teacher)" if row.role == "teacher" else ""
    return name_point(row.experiment, row.label, width, brackets=True, suffix=suffix)


class Board:
    """Rows plus the view's state (rank, pin, sort, filter): no widgets, easy to test."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.rank: dict[str, int] = {}
        self.pinned: Row | None = None
        self.sort_column = "#"
        self.reverse = False
        self.text = ""
        self.status = "all"

    def build(self, runs: list, pin_key: str | None) -> None:
        """Rows from the runs; a pinned row is the baseline of its student and data set."""
        rows = lb.build_rows(runs)
        pinned = next((r for r in rows if row_key(r) == pin_key), None) if pin_key else None
        pin = lb.pin_of(pinned) if pinned is not None else None
        if pin is not None:
            rows = lb.build_rows(runs, pin=pin)
            pinned = next((r for r in rows if row_key(r) == pin_key), None)
        self.rows = rows
        self.rank = {row_key(r): i for i, r in enumerate(rows, 1)}
        self.pinned = pinned

    def delta(self, row: Row) -> float | None:
        pin = self.pinned
        if pin is None or pin is row or pin.best_mean is None or row.best_mean is None:
            return None
        if pin.dataset != row.dataset:
            return None
        return row.best_mean - pin.best_mean

    def cells(self, row: Row) -> list[str]:
        """engine.core.leaderboard's cells for the row (as the CLI prints them), in COLUMNS order."""
        cli = lb.cells(row, self.rank[row_key(row)])
        delta = self.delta(row)
        pin = "–" if delta is None else f"{delta:+.2f}"
        return [pin if c == PIN_COLUMN else cli[_EXPORT_INDEX[c]] for c in COLUMNS]

    def sort_value(self, row: Row, column: str) -> Any:
        getters: dict[str, Callable[[Row], Any]] = {
            "#": lambda r: self.rank[row_key(r)],
            "experiment": lambda r: r.name.lower(),
            "method": lambda r: r.method,
            "teacher→student": lambda r: r.pair,
            "head": lambda r: r.head,
            "best top-1": lambda r: r.best_mean,  # finished rows only: running ones go last
            "last top-1": lambda r: r.last_mean,
            "n": lambda r: r.n,
            "gap closed": lambda r: r.gap,
            "baseline": lambda r: r.baseline_label or None,
            "trained params": lambda r: r.trained_params,
            "epochs": lambda r: (r.epoch / r.epochs) if r.epochs else None,
            "status": lambda r: r.status,
            "fingerprint": lambda r: r.fingerprint,
            PIN_COLUMN: self.delta,
        }
        return getters[column](row)

    def visible(self) -> list[Row]:
        needle = self.text.lower().strip()
        rows = [
            r
            for r in self.rows
            if (self.status == "all" or self.status in r.statuses)
            and (not needle or needle in " ".join(self.cells(r)).lower())
        ]
        column = self.sort_column
        # numbers read best-first (descending); text A→Z; missing values always last
        descending = column in NUMERIC and column != "#"
        if self.reverse:
            descending = not descending
        known = [r for r in rows if self.sort_value(r, column) is not None]
        unknown = [r for r in rows if self.sort_value(r, column) is None]
        known.sort(key=lambda r: self.sort_value(r, column), reverse=descending)
        return known + unknown

    def choose_sort(self, column: str) -> None:
        """Choosing the sorted column again flips the direction."""
        if column == self.sort_column:
            self.reverse = not self.reverse
        else:
            self.sort_column, self.reverse = column, False


class LeaderboardScreen(Screen):
    CSS_PATH = Path(__file__).with_name("leaderboard.tcss")
    BINDINGS = [
        Binding("escape,q", "runs", "Back", tooltip="Back to the runs view"),
        Binding("slash", "filter", "Filter", key_display="/", tooltip="Filter rows by text"),
        # f and p: the bar above the table names them; the footer keeps ? and ^p at 80 columns
        Binding("f", "status_filter", "Status", show=False, tooltip="Cycle the status filter"),
        Binding("s", "sort", "Sort", tooltip="Sort by a column (again: reverse)"),
        Binding(
            "space", "mark", "Mark", key_display="␣", tooltip="Mark or unmark the row for compare"
        ),
        Binding("m", "compare", "Compare", tooltip="Compare the marked rows"),
        Binding(
            "p", "pin", "Pin", show=False, tooltip="Pin the row as the baseline (again: unpin)"
        ),
        Binding("e", "export_as", "Export", tooltip="Export as Markdown, CSV or LaTeX"),
    ]
    HELP_NOTES = (
        "enter on a row: its member runs and how gap closed was computed",
        "esc in the filter clears it · the # and experiment columns stay when scrolling right",
    )

    def __init__(self) -> None:
        super().__init__()
        self.board = Board()
        self.marked: set[str] = set()
        self.shown: list[Row] = []
        self.last_export: Path | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="bar"):
            yield Input(placeholder="/ filter rows", compact=True, id="filter")
            yield Label("", id="status-filter")
            yield Label("", id="pin")
        # rank and experiment stay in view when the table scrolls right
        yield DataTable(id="board", cursor_type="row", fixed_columns=2)
        yield Static("", id="message", classes="hint")
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one("#board", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        table.border_title = "leaderboard"
        table.focus()
        self.refresh_rows()

    def on_resize(self) -> None:
        if self.shown:
            self.redraw()

    def on_screen_resume(self) -> None:
        self.refresh_rows()

    def on_data_changed(self, message: DataChanged) -> None:
        if message.runs:
            self.refresh_rows()

    # ------------------------------------------------------------ drawing
    @property
    def table(self) -> DataTable:
        return self.query_one("#board", DataTable)

    @property
    def selected(self) -> Row | None:
        row = self.table.cursor_row
        return self.shown[row] if 0 <= row < len(self.shown) else None

    def name_width(self, widths: dict[str, int]) -> int:
        """Rank, name, head, best top-1 and n fit the terminal: the name shortens in the
        middle (its sweep point stays whole from 100 columns up); the rest scrolls."""
        table = self.table
        total = table.scrollable_content_region.width or self.size.width - 3
        pad = 2 * table.cell_padding
        kept = sum(widths[c] + pad for c in FIRST_IN_VIEW if c != "experiment")
        room = total - kept - pad
        if total >= 100:
            points = [len(row_name(r).plain) - len(r.experiment) for r in self.shown]
            room = max(room, max(points, default=0) + MIN_NAME)
        return max(MIN_NAME + 8, min(widths["experiment"], room))

    def refresh_rows(self) -> None:
        self.board.build(self.app.runs, self.app.settings.get("pin"))
        self.redraw()

    def redraw(self) -> None:
        table = self.table
        selected = self.selected
        keep = row_key(selected) if selected else None
        self.shown = self.board.visible()
        table.clear()
        for column in table.columns.values():  # the sorted column says so in its header
            name = str(column.key.value)
            arrow = ""
            if name == self.board.sort_column and name != "#":
                descending = (name in NUMERIC) != self.board.reverse
                arrow = " ▼" if descending else " ▲"
            column.label = Text(name + arrow)
        pin_key = row_key(self.board.pinned) if self.board.pinned else None
        rows = []
        for row in self.shown:
            key = row_key(row)
            cells: list[Any] = list(self.board.cells(row))
            mark = "●" if key in self.marked else ("◆" if key == pin_key else "")
            cells[0] = Text(f"{mark}{cells[0]}", style="bold yellow" if mark else "")
            for i, column in enumerate(COLUMNS):  # Text: a "[lr=0.1]" label is not markup
                if i:
                    cells[i] = text(cells[i])
                    cells[i].justify = "right" if column in NUMERIC else "left"
            cells[NAME] = row_name(row)
            status = row.status.split()[0].split("×")[0]
            cells[COLUMNS.index("status")] = text(row.status, style=STATUS_STYLE.get(status, ""))
            rows.append(cells)
        labels = [str(c.label) for c in table.columns.values()]
        widths = dict(zip(COLUMNS, content_widths(labels, rows)))
        widths["experiment"] = width = self.name_width(widths)
        for row, cells in zip(self.shown, rows):
            if cells[NAME].cell_len > width:
                cells[NAME] = row_name(row, width)
            table.add_row(*cells, key=row_key(row))
        set_widths(table, widths)
        if keep is not None and keep in [row_key(r) for r in self.shown]:
            table.move_cursor(row=[row_key(r) for r in self.shown].index(keep), animate=False)
        total = len(self.board.rows)
        table.border_title = (
            f"leaderboard · {len(self.shown)} of {total} rows"
            if len(self.shown) != total
            else f"leaderboard · {total} rows"
        ) + " · ⏎ a row's runs"  # the table's own enter (RowSelected); the footer is full at 80
        table.border_subtitle = "test-time head accuracy · done seeds: mean ± std · (…) running"
        self.query_one("#status-filter", Label).update(f"status: {self.board.status} (f)")
        pin = self.board.pinned
        self.query_one("#pin", Label).update(
            Content(printable(f"baseline: {pin.name} {pin.best_mean:.2f} (p)"))
            if pin is not None and pin.best_mean is not None
            else "baseline: matched vanilla (p pins)"
        )
        self.refresh_bindings()

    # ------------------------------------------------------------ actions
    def _refused(self) -> bool:
        """No row under the cursor (an empty or filtered-out table): say so."""
        if self.selected is None:
            self.notify("no row selected: the filter or status hides every row", timeout=4)
        return self.selected is None

    def action_filter(self) -> None:
        """Focus the filter with its text selected: typing replaces it, enter keeps it."""
        box = self.query_one("#filter", Input)
        box.focus()
        box.select_all()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.board.text = event.value
        self.redraw()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_runs(self) -> None:
        """escape/q: in the filter, clear it and go back to the table; else back to runs."""
        box = self.query_one("#filter", Input)
        if box.has_focus:
            box.value = ""
            self.table.focus()
            return
        self.app.show_runs()

    def action_status_filter(self) -> None:
        i = STATUS_FILTERS.index(self.board.status)
        self.board.status = STATUS_FILTERS[(i + 1) % len(STATUS_FILTERS)]
        self.redraw()

    def action_sort(self) -> None:
        from kdtui.screens.dialogs import ChoiceScreen

        def chosen(column: str | None) -> None:
            if column:
                self.sort_by(column)

        choices = [(c, c) for c in COLUMNS]
        self.app.push_screen(
            ChoiceScreen("sort by column", choices, current=self.board.sort_column), chosen
        )

    def sort_by(self, column: str) -> None:
        self.board.choose_sort(column)
        self.redraw()

    @on(DataTable.HeaderSelected, "#board")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))

    @on(DataTable.RowHighlighted, "#board")
    def _highlighted(self) -> None:
        self.refresh_bindings()

    def action_mark(self) -> None:
        if self._refused():
            return
        row = self.selected
        self.marked ^= {row_key(row)}
        cursor = self.table.cursor_row
        self.redraw()
        self.table.move_cursor(row=min(cursor + 1, len(self.shown) - 1), animate=False)

    @on(DataTable.RowSelected, "#board")
    def _selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        """The selected row's member runs, and how its figures were computed."""
        from kdtui.screens.members import MembersScreen

        row = self.selected
        if row is not None:
            self.app.push_screen(MembersScreen(row))

    def action_compare(self) -> None:
        groups = [(r.name, list(r.run_ids)) for r in self.board.rows if row_key(r) in self.marked]
        self.app.compare(groups)

    def action_pin(self) -> None:
        if self._refused():
            return
        row = self.selected
        key = row_key(row)
        settings = self.app.settings
        if settings.get("pin") == key:
            settings.pop("pin")
            self.notify(
                "baseline unpinned: vanilla runs of the same recipe are the baselines again"
            )
        elif row.best_mean is None:
            self.notify("this row has no accuracy yet to compare against", severity="warning")
            return
        else:
            settings["pin"] = key
            self.notify(f"baseline pinned: {row.name} ({row.best_mean:.2f})")
        self.app.save_settings()
        self.refresh_rows()

    def action_export(self, fmt: str = "md") -> None:
        rows = self.shown
        text = exportmod.export(rows, fmt)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.app.root / "exports" / f"leaderboard-{stamp}.{EXTENSIONS[fmt]}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as e:
            self.notify(f"export failed: {e.strerror}", severity="error")
            return
        self.last_export = path
        shown = short_path(path)
        message = self.query_one("#message", Static)
        message.update(
            Content(printable(f"exported {len(rows)} rows as {FORMAT_NAMES[fmt]} → {shown}"))
        )
        message.display = True
        self.notify(f"{FORMAT_NAMES[fmt]} written to {shown}", title="exported")

    def action_export_as(self) -> None:
        from kdtui.screens.dialogs import ChoiceScreen

        def chosen(fmt: str | None) -> None:
            if fmt:
                self.action_export(fmt)

        choices = [(k, f"{FORMAT_NAMES[k]} (.{EXTENSIONS[k]})") for k in exportmod.FORMATS]
        self.app.push_screen(
            ChoiceScreen("export the shown rows as (enter: Markdown)", choices, current="md"),
            chosen,
        )

    def palette_commands(self):
        """Each export format directly, besides the `E` chooser; enter's row view."""
        yield (
            "Open the row",
            "its member runs (seed, status, best/last top-1) and how gap closed was computed",
            self.action_open,
        )
        for fmt in exportmod.FORMATS:
            yield (
                f"Export {FORMAT_NAMES[fmt]}",
                f"write the leaderboard to exports/*.{EXTENSIONS[fmt]}",
                lambda fmt=fmt: self.action_export(fmt),
            )
