"""The composer: a keyboard form that edits experiments/<name>.toml and queues it.

The form's model is `kdtui.experiment_form.ExperimentForm` (values in, a
validated experiment and its TOML out, comments of an opened file kept); this
screen only binds widgets to it: one row per field, a select becomes a text
field of comma-separated values when it is swept (ctrl+l), values the form
cannot edit are shown read-only, and the keys no field edits are listed as
kept from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Header, Input, Label, Select, Static

from engine.core import schema
from engine.core.inert import printable
from engine.core.registry import METHODS
from engine.core.store import StoreError
from kdtui.experiment_form import MISSING, ExperimentForm, Field, TOMLKitError, parse_text, show
from kdtui.widgets.cells import short_path
from kdtui.widgets.footer import KeyFooter

LAYOUT = (  # (heading, keys); "options" are the chosen methods' own
    ("experiment", ("name", "description", "seeds")),
    ("data", ("data.dataset", "data.batch_size")),
    ("distillation", ("distill.method",)),
    (
        "models",
        (
            "teacher.arch",
            "teacher.source",
            "teacher.checkpoint",
            "teacher.from_run",
            "student.arch",
        ),
    ),
    (
        "teacher training",
        (
            "teacher.optim.epochs",
            "teacher.optim.lr",
            "teacher.optim.schedule",
            "teacher.optim.milestones",
        ),
    ),
    ("method options", "options"),
    (
        "optimiser",
        (
            "optim.optimizer",
            "optim.lr",
            "optim.epochs",
            "optim.schedule",
            "optim.milestones",
            "optim.weight_decay",
        ),
    ),
)
BLANK_SELECTS = ("teacher.arch", "teacher.from_run", "teacher.optim.schedule")


def row_id(key: str) -> str:
    return "row-f-" + key.replace(".", "-")


class Row(Horizontal):
    """A label and one control on a single line."""

    def __init__(self, field: Field, control: Widget) -> None:
        super().__init__(classes="row", id=row_id(field.key))
        self.field = field
        self.control = control

    def compose(self) -> ComposeResult:
        yield Label(self.field.label, classes="flabel")
        yield self.control

    async def swap(self, control: Widget) -> None:
        await self.control.remove()
        self.control = control
        await self.mount(control)


class ComposerScreen(Screen):
    is_form = True  # the app's `q` does not quit from here
    CSS_PATH = Path(__file__).with_name("compose.tcss")
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", tooltip="Save experiments/<name>.toml"),
        Binding("ctrl+r", "queue", "Queue", tooltip="Save, then queue the runs on the engine"),
        Binding(
            "ctrl+l",
            "sweep",
            "Sweep",
            tooltip="Edit the focused choice as a list of values (a sweep), or back to one",
        ),
        Binding("escape", "back", "Back", tooltip="Back to the previous view"),
    ]

    def __init__(self, path: Path | None = None, *, base: dict | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else None
        self.load_error: str | None = None
        form = None
        if self.path is not None:
            try:
                form = ExperimentForm(self.path.read_text(), file=short_path(self.path))
            except (OSError, UnicodeDecodeError, TOMLKitError) as e:
                # open a new form under its name: saving asks before it overwrites the file
                self.load_error = f"{short_path(self.path)}: {e}"
                base, self.path = {"name": self.path.stem}, None
        self.form = form or ExperimentForm(base=base)
        self.opened_name = self.form.name if self.path is not None else None
        self.as_list: set[str] = {f.key for f in self.form.fields() if self.form.swept(f.key)}
        self.option_keys: list[str] = []
        self._last: dict[str, Any] = {}  # each control's value as last seen
        self._ready = False

    # ------------------------------------------------------------ state the tests read
    @property
    def method(self) -> str:
        return self.form.methods[0]

    @property
    def experiment(self) -> schema.Experiment | None:
        return self.form.experiment

    @property
    def n_runs(self) -> int:
        return self.form.n_runs

    @property
    def message(self) -> str:
        return self.form.message

    # ------------------------------------------------------------ building
    def run_choices(self, arch: Any) -> list[tuple[str, str]]:
        out = []
        for r in reversed(self.app.runs):
            if r.status in ("failed", "cancelled"):
                continue
            if isinstance(arch, str) and arch and r.student_arch != arch:
                continue
            best = f" {r.best_top1:.2f}" if r.best_top1 is not None else ""
            out.append((f"#{r.id} {r.experiment} · {r.student_arch} · {r.status}{best}", str(r.id)))
        current = self.form.value("teacher.from_run")
        if isinstance(current, str) and current and current not in [v for _, v in out]:
            out.insert(0, (current, current))  # a name as written: its best run when queued
        return out

    def control(self, field: Field) -> Widget:
        form, key = self.form, field.key
        value = form.value(key)
        if not form.editable(key):
            self._last[field.id] = None
            return Static(
                Content(printable(show(value)) + "  (read-only: edit the file)"),
                id=field.id,
                classes="readonly",
            )
        if field.kind == "select" and key not in self.as_list:
            choices = list(field.choices)
            if key == "teacher.from_run":
                choices = self.run_choices(form.value("teacher.arch"))
            values = [v for _, v in choices]
            selected = value if any(same_choice(value, v) for v in values) else Select.NULL
            self._last[field.id] = selected
            return Select(
                [(Text(label), v) for label, v in choices],
                value=selected,
                allow_blank=key in BLANK_SELECTS,
                prompt="(as in optim)" if key.startswith("teacher.optim.") else "(none)",
                compact=True,
                id=field.id,
            )
        if value is MISSING:
            text = ""
        else:
            text = value if field.kind == "text" and isinstance(value, str) else show(value)
        self._last[field.id] = text
        placeholder = field.placeholder
        if field.kind == "select":
            placeholder = ", ".join(str(v) for _, v in field.choices[:3]) + ": one run each"
        return Input(text, placeholder=placeholder, compact=True, id=field.id)

    def row(self, key: str) -> Row:
        field = self.form.field(key)
        return Row(field, self.control(field))

    def compose(self) -> ComposeResult:
        # before the children exist: a class on the screen later restyles every one of them
        self.set_class(self.app.size.width < 110, "-narrow")
        yield Header()
        with Horizontal(id="body"):
            with VerticalScroll(id="form"):
                for heading, keys in LAYOUT:
                    hid = "heading-" + heading.replace(" ", "-")
                    yield Static(heading, classes="heading", id=hid)
                    if keys == "options":
                        with Vertical(id="options"):
                            yield from self.option_rows()
                        continue
                    for key in keys:
                        yield self.row(key)
                    if key == "distill.method":
                        yield Static("", id="method-info", classes="hint")
                yield Static("", id="kept", classes="hint")
            with VerticalScroll(id="side"):
                yield Static("", id="preview")
        yield Static("", id="help", classes="hint")
        yield Static("", id="status")
        yield KeyFooter()

    def option_rows(self) -> list[Row]:
        fields = [f for f in self.form.fields() if f.key.startswith("distill.")]
        self.option_keys = [f.key for f in fields if f.key != "distill.method"]
        return [self.row(key) for key in self.option_keys]

    def on_mount(self) -> None:
        self.query_one("#side").border_title = "file preview"
        self.query_one("#form").border_title = (
            Content(f"edit {short_path(self.path)}") if self.path else "new experiment"
        )
        self.query_one("#f-name").focus()
        self.refresh_form()
        self._ready = True
        if self.load_error:
            self.notify(self.load_error, severity="error", timeout=10)

    def on_resize(self) -> None:
        self.set_class(self.size.width < 110, "-narrow")

    # ------------------------------------------------------------ showing the model
    @property
    def target(self) -> Path:
        """The opened file while its name is unchanged; experiments/<name>.toml otherwise."""
        name = self.form.name or "untitled"
        if self.path is not None and name in (self.path.stem, self.opened_name):
            return self.path
        return self.app.root / "experiments" / f"{name}.toml"

    def refresh_form(self) -> None:
        """Rows shown as the model says, the verdict, the preview and the kept keys."""
        form = self.form
        for row in self.query(Row):
            row.display = form.visible(row.field.key)
            row.set_class(form.swept(row.field.key), "-swept")  # its label in the accent colour
            row.set_class(isinstance(row.control, Static), "-readonly")  # all of it, wrapped
        self.query_one("#heading-teacher-training").display = form.visible("teacher.optim.epochs")
        self.query_one("#heading-method-options").display = bool(self.option_keys)
        for widget in self.query(".-invalid"):
            widget.remove_class("-invalid")
        status = self.query_one("#status", Static)
        if form.experiment is not None:
            status.update(
                Content.assemble(
                    ("✓ valid", "bold $success"),
                    f" · {form.message.removeprefix('valid · ')} → {short_path(self.target)}",
                )
            )
            status.set_classes("ok")
        else:
            if form.error_key:
                self.query(f"#f-{form.error_key.replace('.', '-')}").add_class("-invalid")
            status.update(
                Content.assemble(("✗ ", "bold $error"), (printable(form.message), "$error"))
            )
            status.set_classes("error")
        self.query_one("#preview", Static).update(
            Syntax(
                printable(form.text(short_path(self.target)), keep="\n\t"),
                "toml",
                theme="ansi_dark",
                word_wrap=False,
            )
        )
        self.refresh_method_info()
        kept = form.kept()
        lines = [printable(f"  {key} = {show(value)}") for key, value in kept]
        self.query_one("#kept", Static).update(
            Content("kept as written (edit the file to change):\n" + "\n".join(lines))
            if kept
            else ""
        )

    def refresh_method_info(self) -> None:
        methods = self.form.methods
        if len(methods) > 1:
            text = f"a sweep: one run per method ({', '.join(methods)})"
        else:
            spec = METHODS[methods[0]]
            head = (
                "the reused teacher classifier"
                if spec.head == "teacher"
                else "the student's own FC"
            )
            text = f"{spec.summary}. Test-time head: {head}."
        self.query_one("#method-info", Static).update(Content(text))

    # ------------------------------------------------------------ events
    def read(self, row: Row) -> Any:
        widget = row.control
        if isinstance(widget, Select):
            return MISSING if widget.value is Select.NULL else widget.value
        if isinstance(widget, Input):
            kind = "value" if row.field.kind == "select" else row.field.kind
            return parse_text(widget.value, kind)
        return MISSING

    @on(Input.Changed)
    @on(Select.Changed)
    async def _changed(self, event: Input.Changed | Select.Changed) -> None:
        widget = event.control
        if not self._ready or widget.id not in self._last or self._last[widget.id] == event.value:
            return  # not a user's edit: a control being built or rebuilt
        self._last[widget.id] = event.value
        row = next(a for a in widget.ancestors if isinstance(a, Row))
        methods = self.form.methods
        self.form.set(row.field.key, self.read(row))
        if self.form.methods != methods:
            await self.rebuild_options()
        if row.field.key in ("teacher.arch", "teacher.source"):
            self.refresh_runs_select()
        self.refresh_form()

    async def rebuild_options(self) -> None:
        """The option rows of the methods now chosen (values kept by the model)."""
        box = self.query_one("#options")
        await box.remove_children()
        await box.mount_all(self.option_rows())

    def refresh_runs_select(self) -> None:
        select = self.query_one("#f-teacher-from_run")
        if not isinstance(select, Select):
            return
        choices = self.run_choices(self.form.value("teacher.arch"))
        current = select.value
        self._last[select.id] = Select.NULL
        select.set_options([(Text(label), v) for label, v in choices])
        if current in [v for _, v in choices]:
            self._last[select.id] = current
            select.value = current

    @on(Input.Submitted)
    def _next_field(self) -> None:
        self.focus_next()

    def on_descendant_focus(self, event) -> None:
        for row in event.widget.ancestors_with_self:
            if isinstance(row, Row):
                field = row.field
                text = field.help
                if field.kind == "select" and self.form.sweepable(field.key):
                    if field.key in self.as_list:
                        choices = ", ".join(str(v) for _, v in field.choices)
                        text += f"; comma-separated values, one run each ({choices}); ctrl+l: one"
                    else:
                        text += "; ctrl+l: sweep over several"
                self.query_one("#help", Static).update(
                    Content.assemble((f"{field.key}: ", "bold"), text)
                )
                return

    # ------------------------------------------------------------ actions
    async def action_sweep(self) -> None:
        """Turn the focused choice into a list of values (a sweep), or back into one value."""
        focused = self.app.focused
        row = next((a for a in (focused.ancestors if focused else []) if isinstance(a, Row)), None)
        if row is None:
            return
        field, methods = row.field, self.form.methods
        if field.kind != "select" or not self.form.sweepable(field.key):
            hint = "type values separated by commas" if self.form.sweepable(field.key) else ""
            self.notify(
                f"{field.key}: " + (f"{hint} to sweep it" if hint else "takes one value"),
                severity="information",
            )
            return
        if field.key in self.as_list:
            value = self.form.value(field.key)
            if isinstance(value, list):
                self.form.set(field.key, value[0] if value else MISSING)
            self.as_list.discard(field.key)
        else:
            self.as_list.add(field.key)
        await row.swap(self.control(field))
        row.control.focus()
        if self.form.methods != methods:
            await self.rebuild_options()
        self.refresh_form()

    @property
    def dirty(self) -> bool:
        return self.form.dirty

    def action_back(self) -> None:
        from kdtui.screens.dialogs import ConfirmScreen

        if not self.dirty:
            self.dismiss()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.dismiss()

        self.app.push_screen(ConfirmScreen("Discard the unsaved changes?", yes="Discard"), answered)

    def action_save(self) -> None:
        self.save(then_queue=False)

    def action_queue(self) -> None:
        self.save(then_queue=True)

    def save(self, *, then_queue: bool) -> None:
        from kdtui.screens.dialogs import ConfirmScreen

        if not self.form.check():
            self.notify(f"not saved: {self.form.message}", severity="error")
            return
        target = self.target
        folder = (self.app.root / "experiments").resolve()
        if self.path is None or target != self.path:
            resolved = target.resolve()
            if folder not in resolved.parents:
                self.notify("the name must stay inside experiments/", severity="error")
                return
            if target.exists():

                def answered(yes: bool | None) -> None:
                    if yes:
                        self._write(target, then_queue)

                self.app.push_screen(
                    ConfirmScreen(
                        Content(f"{short_path(target)} exists. Overwrite it?"), yes="Overwrite"
                    ),
                    answered,
                )
                return
        self._write(target, then_queue)

    def _write(self, target: Path, then_queue: bool) -> None:
        text = self.form.text(short_path(target))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        except OSError as e:
            self.notify(f"cannot write {short_path(target)}: {e.strerror}", severity="error")
            return
        self.path = target
        self.form.file = short_path(target)
        self.form.saved(text)
        self.opened_name = self.form.name
        self.refresh_form()
        self.query_one("#form").border_title = Content(f"edit {short_path(target)}")
        if then_queue and self.form.experiment is not None:
            self.queue(self.form.experiment, target)
        else:
            self.notify(f"saved {short_path(target)}")

    @work(thread=True, group="queue", exit_on_error=False)
    def queue(self, exp: schema.Experiment, path: Path) -> None:
        app = self.app
        try:
            runs = app.store.submit(exp, source=short_path(path))
        except (StoreError, schema.ConfigError) as e:
            app.call_from_thread(self.notify, f"not queued: {e}", severity="error")
            return
        message, severity = app.engine_up()
        ids = [r.id for r in runs]
        first = f"#{ids[0]}" + (f"–#{ids[-1]}" if len(ids) > 1 else "")
        app.call_from_thread(
            self.notify,
            f"queued {len(ids)} run{'s' * (len(ids) != 1)} ({first}) · {message}",
            severity=severity,
        )
        app.call_from_thread(self._queued, ids)

    def _queued(self, ids: list[int]) -> None:
        self.dismiss()
        self.app.poll_soon()
        self.app.show_runs(select=ids[0] if ids else None)


def same_choice(value: Any, choice: Any) -> bool:
    """A file's value is a select's choice (factor 4 is choice 4, true is not 1)."""
    return type(value) is type(choice) and value == choice
