"""`?` / F1: the keys of the screen the user is on, read from its live bindings.

Nothing here is written by hand: the rows come from the screen's (and the
app's) BINDINGS as `active_bindings` reports them, so a key added, moved or
disabled shows up here the moment it does in the footer and the palette.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Label, Static

from engine.core.inert import printable
from kdtui.widgets.footer import KeyFooter
from kdtui.widgets.tables import content_widths, set_widths

# modal screens do not see the app's keys: each carries this one
HELP_KEY = Binding(
    "question_mark,f1",
    "app.help",
    "Help",
    tooltip="Keys: what each key of this screen does",
)

# how each screen reads in the help title (the class name otherwise)
SCREEN_NAMES = {
    "RunsScreen": "runs view",
    "LeaderboardScreen": "leaderboard",
    "CompareScreen": "compare",
    "ComposerScreen": "composer",
    "MembersScreen": "a leaderboard row's runs",
    "ConfigScreen": "a run's config",
    "ConfirmScreen": "confirmation",
    "ChoiceScreen": "choice",
    "PathScreen": "file name",
    "ExperimentPicker": "experiment picker",
}


def screen_name(screen: Screen) -> str:
    return SCREEN_NAMES.get(type(screen).__name__, type(screen).__name__)


def key_rows(app: App, screen: Screen) -> list[tuple[str, str, str]]:
    """(where, key, what it does) for every described binding active on `screen`: the
    screen's own first, then the app's; a key bound twice is listed once."""
    found: dict[tuple[int, str], list] = {}  # (node, action) -> [where, keys, what]
    for key, active in screen.active_bindings.items():
        node, binding = active.node, active.binding
        if isinstance(node, App):
            where = "everywhere"
        elif isinstance(node, Screen):
            where = "here"
        else:
            continue  # a widget's cursor keys (arrows, page up) are not this screen's keys
        what = binding.tooltip
        if not what or binding.system:
            continue  # ours all say what they do; Textual's own (tab, copy) are not ours
        shown = app.get_key_display(binding.with_key(key, binding.key_display))
        entry = found.setdefault((id(node), binding.action), [where, [], what])
        if shown not in entry[1]:
            entry[1].append(shown)
    rows = [(where, " ".join(keys), what) for where, keys, what in found.values()]
    rows.sort(key=lambda r: r[0] != "here")  # stable: each group keeps the BINDINGS order
    return rows


class HelpScreen(ModalScreen[None]):
    """The keys of `screen`, with what each does; esc, q, ? or F1 close it."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", tooltip="Close the help")]

    def __init__(self, screen: Screen, notes: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.rows = key_rows(screen.app, screen)
        self.notes = notes
        self.name_text = screen_name(screen)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full", id="help"):
            yield Label(Content(printable(f"keys of the {self.name_text}")), classes="title")
            yield DataTable(id="help-keys", cursor_type="row", show_cursor=False)
            if self.notes:
                yield Static(Content(printable("\n".join(self.notes), keep="\n")), classes="hint")
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one("#help-keys", DataTable)
        columns = ("key", "what it does")
        for column in columns:
            table.add_column(column, key=column)
        cells = []
        for i, (where, key, what) in enumerate(self.rows):
            if where == "everywhere" and (i == 0 or self.rows[i - 1][0] != where):
                cells.append([Text(""), Text("on every screen:", style="bold dim")])
            cells.append([Text(printable(key), style="bold"), Text(printable(what))])
        for row in cells:
            table.add_row(*row)
        set_widths(table, dict(zip(columns, content_widths(columns, cells))))
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
