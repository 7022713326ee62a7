"""Compare 2+ runs (or seed groups): only the config keys that differ, and overlaid curves."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from engine.core import metrics as M
from kdtui.inert import text
from kdtui.widgets.footer import KeyFooter
from kdtui.widgets.plots import COLORS, CurvePlot
from kdtui.widgets.tables import content_widths, set_widths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def show(values: list[Any]) -> str:
    """One value, or the distinct values of a seed group."""
    distinct: list[Any] = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    return ", ".join(str(v) for v in distinct) if distinct else "–"


def differences(configs: list[list[dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    """Keys whose value differs between groups (each group: the flat configs of its runs)."""
    keys: list[str] = []
    for group in configs:
        for cfg in group:
            keys += [k for k in cfg if k not in keys]
    out = []
    for key in keys:
        cells = [show([cfg.get(key, "–") for cfg in group]) for group in configs]
        if len(set(cells)) > 1:
            out.append((key, cells))
    return out


class CompareScreen(Screen):
    CSS_PATH = Path(__file__).with_name("compare.tcss")
    BINDINGS = [
        Binding("escape,q", "back", "Back", tooltip="Close the comparison"),
        Binding("g", "figure", "Figure", tooltip="Write a paper figure of the compared runs"),
    ]

    def __init__(self, groups: list[tuple[str, list[int]]]) -> None:
        super().__init__()
        self.groups = groups[: len(LETTERS)]
        self.diff: list[tuple[str, list[str]]] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="legend")
        yield DataTable(id="diff", cursor_type="row")
        with Horizontal(id="curves"):
            yield CurvePlot("test top-1", xlabel="per epoch", id="cmp-top1")
            yield CurvePlot("train loss", xlabel="mean per epoch", log_y=True, id="cmp-loss")
        yield KeyFooter()

    def on_mount(self) -> None:
        parts: list = []
        for i, (label, ids) in enumerate(self.groups):
            r, g, b = COLORS[i % len(COLORS)]
            n = f" ({len(ids)} runs)" if len(ids) > 1 else ""
            parts += [(f"━ {LETTERS[i]} ", f"bold rgb({r},{g},{b})"), f"{label}{n}   "]
        self.query_one("#legend", Static).update(Content.assemble(*parts))
        table = self.query_one("#diff", DataTable)
        table.border_title = "config differences"
        table.add_column("key", key="key")
        for i in range(len(self.groups)):
            table.add_column(LETTERS[i], key=LETTERS[i])
        table.focus()
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def load(self) -> None:
        app = self.app
        store = app.store
        configs, best, curves = [], [], []
        for _, ids in self.groups:
            runs = [store.run(i) for i in ids]
            configs.append([flatten(tomllib.loads(r.config_toml)) for r in runs])
            values = [r.best_top1 for r in runs if r.best_top1 is not None]
            best.append(
                "–"
                if not values
                else f"{statistics.fmean(values):.2f}"
                + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")
            )
            means = store.epoch_means(ids, (M.TEST_TOP1, M.LOSS))
            # epochs counted from 1, as `kdtui plot` and the runs view draw them
            curves.append({k: ([e + 1 for e in xs], ys) for k, (xs, ys) in means.items()})
        diff = differences(configs)
        app.call_from_thread(self.show_result, diff, best, curves)

    def show_result(self, diff, best, curves) -> None:
        self.diff = diff
        table = self.query_one("#diff", DataTable)
        table.clear()
        rows = [[Text("best top-1", style="bold"), *[Text(b, style="bold") for b in best]]]
        rows += [[text(key), *[text(c) for c in cells]] for key, cells in diff]
        if not diff:
            rows.append([Text("(identical configs)", style="dim"), *["" for _ in self.groups]])
        for row in rows:
            table.add_row(*row)
        labels = ["key", *LETTERS[: len(self.groups)]]
        set_widths(table, dict(zip(labels, content_widths(labels, rows))))
        for plot_id, metric in (("#cmp-top1", M.TEST_TOP1), ("#cmp-loss", M.LOSS)):
            self.query_one(plot_id, CurvePlot).set_series(
                {LETTERS[i]: s[metric] for i, s in enumerate(curves) if metric in s}
            )

    def action_back(self) -> None:
        self.dismiss()

    def action_figure(self) -> None:
        """`kdtui plot`'s figure of every compared run (seeds of a config as one band)."""
        from kdtui.screens.figure_key import ask_and_write

        ask_and_write(self, [i for _, ids in self.groups for i in ids])
