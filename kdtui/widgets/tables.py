"""Explicit DataTable column widths.

DataTable measures auto widths on idle, after a first frame that it may
cache with header-only widths (seen as flaky snapshots and, on a slow box,
a flicker). Tables here set widths from the cells they were just given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey


def cell_len(cell: object) -> int:
    return cell.cell_len if isinstance(cell, Text) else len(str(cell))


def content_widths(labels: Sequence[str], rows: Iterable[Sequence[object]]) -> list[int]:
    widths = [len(label) for label in labels]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], cell_len(cell))
    return widths


def set_widths(table: DataTable, widths: dict[str, int]) -> None:
    changed = False
    for key, width in widths.items():
        column = table.columns.get(ColumnKey(key))
        if column is not None and (column.width != width or column.auto_width):
            column.width, column.auto_width = width, False
            changed = True
    if changed:
        table._clear_caches()  # rendered rows hold the old widths
        table._require_update_dimensions = True
        table.refresh()
