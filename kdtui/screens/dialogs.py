"""Small modal screens: confirm, pick one of a list, ask for a path or a line of text, show a
run's config."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rich.syntax import Syntax
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from engine.core.inert import printable
from kdtui.screens.help import HELP_KEY
from kdtui.widgets.cells import short_path
from kdtui.widgets.footer import KeyFooter


class ConfirmScreen(ModalScreen[bool]):
    """y / n, with the destructive choice never the default of enter."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", tooltip="Yes: do it"),
        Binding("n,escape", "answer(False)", "No", tooltip="No: leave it as it is"),
        HELP_KEY,
    ]

    def __init__(self, prompt: str | Content, *, yes: str = "Yes") -> None:
        super().__init__()
        self.prompt = prompt
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.prompt, classes="prompt")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no").focus()

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one item with the keyboard (or type its first letters)."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [Binding("escape", "cancel", "Back", tooltip="Close without choosing"), HELP_KEY]

    def __init__(
        self, title: str, choices: Sequence[tuple[str, str]], *, current: str | None = None
    ) -> None:
        super().__init__()
        self.title_text = title
        self.choices = list(choices)  # (value, label)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Content(printable(self.title_text)), classes="title")
            yield OptionList(
                *[Option(Content(printable(label)), id=value) for value, label in self.choices]
            )
        yield KeyFooter()

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        values = [v for v, _ in self.choices]
        options.highlighted = values.index(self.current) if self.current in values else 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PathScreen(ModalScreen[Path | None]):
    """A file name to write, proposed and editable; enter takes it, escape cancels.
    A relative name is taken from `root` (the folder the app was started in)."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [Binding("escape", "cancel", "Back", tooltip="Close without choosing"), HELP_KEY]

    def __init__(self, title: str, proposed: Path, root: Path, *, hint: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.proposed = proposed
        self.root = root
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(Content(printable(self.title_text)), classes="title")
            yield Input(short_path(self.proposed), compact=True, id="path")
            if self.hint:
                yield Static(Content(printable(self.hint)), classes="hint")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    @on(Input.Submitted, "#path")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if text:
            path = Path(text).expanduser()
            self.dismiss(path if path.is_absolute() else self.root / path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ExperimentPicker(ModalScreen[Path | None]):
    """experiments/*.toml, newest first."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [Binding("escape", "cancel", "Back", tooltip="Close without choosing"), HELP_KEY]

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.paths: list[Path] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(
                Content(printable(f"open an experiment from {short_path(self.folder)}/")),
                classes="title",
            )
            yield OptionList(id="files")
        yield KeyFooter()

    def on_mount(self) -> None:
        try:
            found = [p for p in self.folder.rglob("*.toml") if p.is_file()]
        except OSError:
            found = []
        self.paths = sorted(found, key=lambda p: str(p.relative_to(self.folder)))
        options = self.query_one(OptionList)
        if not self.paths:
            for line in nothing_to_open(self.folder):
                options.add_option(Option(Content(printable(line)), disabled=True))
        for p in self.paths:
            options.add_option(
                Option(Content(printable(str(p.relative_to(self.folder)))), id=str(p))
            )
        if self.paths:
            options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(Path(event.option.id))

    def action_cancel(self) -> None:
        self.dismiss(None)


def nothing_to_open(folder: Path) -> list[str]:
    """Where `o` looked, and how to get an experiment there."""
    where = str(folder.absolute())
    if not folder.is_dir():
        first = f"no experiments folder: looked for {where}"
    else:
        first = f"no *.toml files in {where}"
    return [
        first,
        "a (in the runs view) composes one; ctrl+s saves it as experiments/<name>.toml",
        "or copy one there: cp path/to/x.toml experiments/ (start kdtui in the study's folder)",
    ]


class ConfigScreen(ModalScreen[None]):
    """A run's resolved config, as stored with the run (what it actually trained with)."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [
        Binding("escape,q,v", "close", "Close", tooltip="Back to the runs view"),
        Binding("c", "clone", "Clone", tooltip="Clone this config into the composer"),
        HELP_KEY,
    ]

    def __init__(self, title: str, text: str, *, clone: Callable[[], object] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.text = text
        self.clone = clone

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full"):
            yield Label(Content(printable(self.title_text)), classes="title")
            with VerticalScroll(id="config-scroll"):
                yield Static(
                    Syntax(
                        printable(self.text, keep="\n\t"),
                        "toml",
                        theme="ansi_dark",
                        word_wrap=False,
                    )
                )
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#config-scroll").focus()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_clone(self) -> None:
        self.dismiss(None)
        if self.clone is not None:
            self.clone()


class TextScreen(ModalScreen[str | None]):
    """One line of text to edit (a run's note, its tags): enter takes it once `check`
    finds nothing wrong (else its message shows and the dialog stays), escape cancels."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [Binding("escape", "cancel", "Back")]

    def __init__(
        self,
        title: str,
        value: str,
        *,
        hint: str = "",
        placeholder: str = "",
        max_length: int = 0,
        check: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.hint = hint
        self.placeholder = placeholder
        self.max_length = max_length
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(Content(printable(self.title_text)), classes="title")
            yield Input(
                self.value,
                placeholder=self.placeholder,
                max_length=self.max_length,
                compact=True,
                id="text",
            )
            yield Static("", classes="error", id="text-error")
            if self.hint:
                yield Static(Content(printable(self.hint)), classes="hint")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#text", Input).focus()

    @on(Input.Submitted, "#text")
    def _submitted(self, event: Input.Submitted) -> None:
        why = self.check(event.value) if self.check is not None else None
        if why:
            error = self.query_one("#text-error", Static)
            error.update(Content(printable(why)))
            error.display = True
            return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
