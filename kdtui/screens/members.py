"""A leaderboard row opened: the runs its figures come from, and how they were computed."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from engine.core import leaderboard as lb
from engine.core.display import STATUS_STYLE
from engine.core.inert import printable
from engine.core.leaderboard import Row
from kdtui.screens.help import HELP_KEY
from kdtui.widgets.footer import KeyFooter
from kdtui.widgets.tables import content_widths, set_widths

COLUMNS = ("run", "seed", "status", "best top-1", "last top-1", "teacher top-1", "note")
NUMERIC = {"run", "seed", "best top-1", "last top-1", "teacher top-1"}


def detail_lines(row: Row) -> list[str]:
    """What the row is and how its gap closed was (or was not) computed."""
    fp = row.fingerprint or "none (stored before fingerprints; shown alone)"
    lines = [f"fingerprint {fp} · {row.role} · {row.pair} · head {row.head}"]
    if len(row.names) > 1:
        lines.append(f"experiments with this config: {', '.join(row.names)}")
    n = lb.fmt_n(row)
    lines.append(
        f"best top-1 {lb.fmt_best(row)} · n {n} (done runs only, one per seed: the latest)"
    )
    params = lb.fmt_params(row.trained_params)
    lines.append(f"trained params {params} · student alone {lb.fmt_params(row.params)}")
    if row.gap is not None:
        lines.append(
            f"gap closed {lb.fmt_gap(row.gap)} = ({row.best_mean:.2f} − "
            f"{row.baseline:.2f}) / ({row.teacher_top1:.2f} − {row.baseline:.2f}) "
            f"against {row.baseline_label}"
        )
    else:
        against = f" · baseline {row.baseline_label}" if row.baseline_label else ""
        lines.append(f"gap closed –: {row.gap_note}{against}")
    return lines


class MembersScreen(ModalScreen[None]):
    """Enter on a leaderboard row: its member runs (id, seed, status, best/last top-1)."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [Binding("escape,q", "close", "Close", tooltip="Back to the leaderboard"), HELP_KEY]

    def __init__(self, row: Row) -> None:
        super().__init__()
        self.row = row

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full"):
            yield Label(Content(printable(self.row.name)), classes="title")
            yield Static(
                Content(printable("\n".join(detail_lines(self.row)), keep="\n")),
                id="members-detail",
            )
            yield DataTable(id="members", cursor_type="row")
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one("#members", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        rows = []
        for m in self.row.members:
            cells: list = [
                str(m.id),
                str(m.seed),
                m.status,
                lb.fmt_top1(m.best),
                lb.fmt_top1(m.last),
                lb.fmt_top1(m.teacher_top1),
                m.note,
            ]
            cells = [
                Text(printable(c), justify="right" if col in NUMERIC else "left")
                for c, col in zip(cells, COLUMNS)
            ]
            cells[2].stylize(STATUS_STYLE.get(m.status, ""))
            rows.append(cells)
            table.add_row(*cells, key=str(m.id))
        set_widths(table, dict(zip(COLUMNS, content_widths(COLUMNS, rows))))
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
