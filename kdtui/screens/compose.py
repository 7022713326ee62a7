"""The composer: a keyboard form that writes experiments/<name>.toml and queues it.

The form never validates on its own: it turns its fields into the TOML the
file would hold and runs `engine.config.loads` + `expand` on it, so what it
says as you type is exactly what `kdtui validate` will say about the file.
Keys the form does not show (run.max_steps, data.root, …) ride along from
the file or run it was opened from.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomli_w
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

from engine import config as cfgmod
from engine.inert import printable
from engine.registry import ARCHS, DATASETS, METHODS
from engine.store import StoreError
from kdtui.widgets.cells import short_path
from kdtui.widgets.footer import KeyFooter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MISSING: Any = object()
TEACHER_SOURCES = (
    ("checkpoint file", "checkpoint"),
    ("earlier run", "from_run"),
    ("train one first", "train"),
)
HEADER = """{name}: {description}
Written by the kdtui composer; edit freely.
check: kdtui validate {path}
train: kdtui run {path}   (queue: kdtui submit {path})"""


def leading_comment(text: str) -> str | None:
    """The comments (and blank lines) before a TOML file's first key, without `#` marks."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        lines.append(stripped[1:].removeprefix(" ") if stripped else "")
    return "\n".join(lines).strip("\n") or None


@dataclass(frozen=True)
class Field:
    key: str  # dotted TOML key ("optim.lr"); "teacher.source" is the form's own
    label: str
    kind: str  # text (a string), value (TOML scalar or a list = sweep), list, select
    choices: tuple = ()
    help: str = ""
    placeholder: str = ""

    @property
    def id(self) -> str:
        return "f-" + self.key.replace(".", "-")


def _help(section: str, key: str) -> str:
    return cfgmod.field_help(section, key)


def base_fields() -> list[Field]:
    archs = tuple((a, a) for a in ARCHS)
    return [
        Field("name", "name", "text", help="experiment name: the file is experiments/<name>.toml"),
        Field("description", "description", "text", help="what this experiment reproduces"),
        Field(
            "seeds",
            "seeds",
            "list",
            help="one run per seed: 0, 1, 2",
            placeholder="0",
        ),
        Field(
            "data.dataset",
            "data set",
            "select",
            tuple((f"{k}", k) for k in DATASETS),
            help=_help("data", "dataset"),
        ),
        Field(
            "data.batch_size",
            "batch size",
            "value",
            help=_help("data", "batch_size"),
            placeholder="64",
        ),
        Field("teacher.arch", "teacher", "select", archs, help=_help("teacher", "arch")),
        Field(
            "teacher.source",
            "weights from",
            "select",
            TEACHER_SOURCES,
            help="a checkpoint file, the best checkpoint of an earlier run, or train the teacher first",
        ),
        Field(
            "teacher.checkpoint",
            "checkpoint",
            "text",
            help=_help("teacher", "checkpoint"),
            placeholder="teachers/resnet32x4_vanilla.pth",
        ),
        Field("teacher.from_run", "earlier run", "select", (), help=_help("teacher", "from_run")),
        Field("student.arch", "student", "select", archs, help=_help("student", "arch")),
        Field(
            "distill.method",
            "method",
            "select",
            tuple((k, k) for k in METHODS),
            help=_help("distill", "method"),
        ),
    ]


def optim_fields() -> list[Field]:
    def choices(key: str) -> tuple:
        for f in fields(cfgmod.OptimConfig):
            if f.name == key:
                return tuple((c, c) for c in f.metadata["choices"])
        raise KeyError(key)

    return [
        Field(
            "optim.optimizer",
            "optimiser",
            "select",
            choices("optimizer"),
            _help("optim", "optimizer"),
        ),
        Field(
            "optim.lr",
            "lr",
            "value",
            help="base learning rate; a list (0.01, 0.05, 0.1) is a sweep, one run per value",
            placeholder="0.05",
        ),
        Field("optim.epochs", "epochs", "value", help=_help("optim", "epochs"), placeholder="240"),
        Field(
            "optim.schedule", "schedule", "select", choices("schedule"), _help("optim", "schedule")
        ),
        Field(
            "optim.milestones",
            "milestones",
            "list",
            help=_help("optim", "milestones"),
            placeholder="150, 180, 210",
        ),
        Field(
            "optim.weight_decay",
            "weight decay",
            "value",
            help=_help("optim", "weight_decay"),
            placeholder="0.0005",
        ),
    ]


def option_fields(method: str) -> list[Field]:
    out = []
    for key, opt in METHODS[method].options.items():
        hint = opt.help
        if opt.min is not None or opt.max is not None:
            hint += f" (min {opt.min})" if opt.max is None else f" ({opt.min}…{opt.max})"
        if opt.choices:
            out.append(
                Field(
                    f"distill.{key}", key, "select", tuple((str(c), c) for c in opt.choices), hint
                )
            )
        else:
            out.append(
                Field(f"distill.{key}", key, "value", help=hint, placeholder=show(opt.default))
            )
    return out


# ---------------------------------------------------------------- values
def show(value: Any) -> str:
    """A value as the user types it: lists without brackets, TOML for the rest."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list) and all(
        isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value
    ):
        return ", ".join(show(v) for v in value)
    if isinstance(value, (list, dict)):
        return tomli_w.dumps({"v": value}).partition("=")[2].strip()
    return str(value)


def parse_text(text: str, kind: str) -> Any:
    """Typed text -> TOML value; anything TOML cannot read stays a string for the validator."""
    text = text.strip()
    if not text:
        return MISSING
    if kind == "text":
        return text
    for candidate in (text, f"[{text}]") if "," in text and not text.startswith("[") else (text,):
        try:
            value = tomllib.loads(f"v = {candidate}")["v"]
        except tomllib.TOMLDecodeError:
            continue
        if kind == "list" and not isinstance(value, list):
            value = [value]
        return value
    return text


def lookup(raw: dict, dotted: str) -> Any:
    """The value a file gives a key, a sweep over it winning (that is what the form shows)."""
    sweep = raw.get("sweep")
    if isinstance(sweep, dict):
        if dotted in sweep:
            return sweep[dotted]
        sec, _, key = dotted.partition(".")
        if isinstance(sweep.get(sec), dict) and key in sweep[sec]:
            return sweep[sec][key]
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def drop_sweep(raw: dict, dotted: str) -> None:
    sweep = raw.get("sweep")
    if not isinstance(sweep, dict):
        return
    sweep.pop(dotted, None)
    sec, _, key = dotted.partition(".")
    if isinstance(sweep.get(sec), dict):
        sweep[sec].pop(key, None)
        if not sweep[sec]:
            sweep.pop(sec)
    if not sweep:
        raw.pop("sweep")


def put(raw: dict, dotted: str, value: Any) -> None:
    drop_sweep(raw, dotted)
    *path, key = dotted.split(".")
    node = raw
    for part in path:
        if not isinstance(node.get(part), dict):
            if value is MISSING:
                return
            node[part] = {}
        node = node[part]
    if value is MISSING:
        node.pop(key, None)
    else:
        node[key] = value


def sweep_size(exp: cfgmod.Experiment, n_runs: int) -> str:
    parts = [f"{k.split('.')[-1]} ×{len(v)}" for k, v in exp.sweep.items()]
    if len(exp.seeds) > 1:
        parts.append(f"seeds ×{len(exp.seeds)}")
    if any(p.role == "teacher" for p in cfgmod.expand(exp)):
        parts.append("+ teacher")
    plural = "s" if n_runs != 1 else ""
    return f"{n_runs} run{plural}" + (f" ({' · '.join(parts)})" if parts else "")


class Row(Horizontal):
    """A label and one control on a single line."""

    def __init__(self, field: Field, control: Widget) -> None:
        super().__init__(classes="row", id=f"row-{field.id}")
        self.field = field
        self.control = control

    def compose(self) -> ComposeResult:
        yield Label(self.field.label, classes="flabel")
        yield self.control


class ComposerScreen(Screen):
    is_form = True  # the app's `q` does not quit from here
    CSS_PATH = Path(__file__).with_name("compose.tcss")
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", tooltip="Save experiments/<name>.toml"),
        Binding("ctrl+r", "queue", "Queue", tooltip="Save, then queue the runs on the engine"),
        Binding("escape", "back", "Back", tooltip="Back to the previous view"),
    ]

    def __init__(self, path: Path | None = None, *, base: dict | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else None
        self.base: dict = {}
        self.load_error: str | None = None
        self.file_header: str | None = None  # the opened file's own top comment
        if self.path is not None:
            try:
                text = self.path.read_text()
                self.base = tomllib.loads(text)
                self.file_header = leading_comment(text)
            except (OSError, tomllib.TOMLDecodeError) as e:
                self.load_error = f"{short_path(self.path)}: {e}"
                self.base = {"name": self.path.stem}
        elif base is not None:
            self.base = copy.deepcopy(base)
        else:
            self.base = {"name": "", "data": {"dataset": "digits"}, "student": {"arch": "resnet8"}}
        self.opened_name = self.base.get("name") if self.path is not None else None
        self.fields = base_fields()
        self.method = "vanilla"
        self.method = self._initial("distill.method", "vanilla")
        self.experiment: cfgmod.Experiment | None = None
        self.error: cfgmod.ConfigError | Exception | None = None
        self.n_runs = 0
        self.message = ""
        self.raw: dict = {}
        self._clean: dict | None = None
        self._ready = False

    # ------------------------------------------------------------ building
    def _initial(self, dotted: str, default: Any = MISSING) -> Any:
        value = lookup(self.base, dotted)
        sec, _, key = dotted.partition(".")
        if value is MISSING and sec == "distill" and key in METHODS[self.method].options:
            return METHODS[self.method].options[key].default
        if value is MISSING:
            try:
                value = cfgmod.field_default(sec, key) if key else default
            except KeyError:
                value = default
        if dotted == "distill.method" and value not in METHODS:
            value = "vanilla"
        return default if value is MISSING else value

    def teacher_source(self) -> str:
        t = self.base.get("teacher") if isinstance(self.base.get("teacher"), dict) else {}
        if t.get("from_run"):
            return "from_run"
        if t.get("train"):
            return "train"
        return "checkpoint"

    def run_choices(self, arch: Any) -> list[tuple[str, str]]:
        out = []
        current = lookup(self.base, "teacher.from_run")
        for r in reversed(self.app.runs):
            if r.status in ("failed", "cancelled"):
                continue
            if isinstance(arch, str) and arch and r.student_arch != arch:
                continue
            best = f" {r.best_top1:.2f}" if r.best_top1 is not None else ""
            out.append((f"#{r.id} {r.experiment} · {r.student_arch} · {r.status}{best}", str(r.id)))
        if isinstance(current, str) and current and current not in [v for _, v in out]:
            out.insert(0, (current, current))
        return out

    def control(self, field: Field, value: Any = MISSING) -> Widget:
        if value is MISSING:
            value = self._initial(field.key)
        if field.key == "teacher.source":
            value = self.teacher_source()
        if field.kind == "select":
            choices = list(field.choices)
            if field.key == "teacher.from_run":
                choices = self.run_choices(self._initial("teacher.arch"))
            values = [v for _, v in choices]
            return Select(
                [(Text(label), v) for label, v in choices],
                value=value if value in values else Select.NULL,
                allow_blank=field.key in ("teacher.arch", "teacher.from_run"),
                prompt="(none)" if field.key == "teacher.arch" else "Select",
                compact=True,
                id=field.id,
            )
        text = "" if value is MISSING or value == "" else show(value)
        if field.key in ("name", "description") and value is MISSING:
            text = ""
        return Input(text, placeholder=field.placeholder, compact=True, id=field.id)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            with VerticalScroll(id="form"):
                by_key = {f.key: f for f in self.fields}
                yield Static("experiment", classes="heading")
                for key in ("name", "description", "seeds"):
                    yield Row(by_key[key], self.control(by_key[key]))
                yield Static("data", classes="heading")
                for key in ("data.dataset", "data.batch_size"):
                    yield Row(by_key[key], self.control(by_key[key]))
                yield Static("distillation", classes="heading")
                yield Row(by_key["distill.method"], self.control(by_key["distill.method"]))
                yield Static("", id="method-info", classes="hint")
                yield Static("models", classes="heading")
                for key in (
                    "teacher.arch",
                    "teacher.source",
                    "teacher.checkpoint",
                    "teacher.from_run",
                    "student.arch",
                ):
                    yield Row(by_key[key], self.control(by_key[key]))
                yield Static("method options", id="options-heading", classes="heading")
                with Vertical(id="options"):
                    for field in option_fields(self.method):
                        yield Row(field, self.control(field))
                yield Static("optimiser", classes="heading")
                for field in optim_fields():
                    yield Row(field, self.control(field))
                yield Static("", id="extra", classes="hint")
            with VerticalScroll(id="side"):
                yield Static("", id="preview")
        yield Static("", id="help", classes="hint")
        yield Static("", id="status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#side").border_title = "file preview"
        self.query_one("#form").border_title = (
            Content(f"edit {short_path(self.path)}") if self.path else "new experiment"
        )
        self.set_class(self.size.width < 110, "-narrow")
        self.query_one("#f-name").focus()
        self.sync_visibility()
        self.validate()
        self._clean = copy.deepcopy(self.raw)
        self._ready = True
        if self.load_error:
            self.notify(self.load_error, severity="error", timeout=10)

    def on_resize(self) -> None:
        self.set_class(self.size.width < 110, "-narrow")

    # ------------------------------------------------------------ reading the form
    def read(self, field: Field) -> Any:
        try:
            widget = self.query_one(f"#{field.id}")
        except Exception:
            return MISSING
        if isinstance(widget, Select):
            value = widget.value
            return MISSING if value is Select.NULL else value
        value = parse_text(widget.value, field.kind)
        if field.key == "name" and value is MISSING:
            return ""
        return value

    def form_fields(self) -> list[Field]:
        return [*self.fields, *option_fields(self.method), *optim_fields()]

    def build_raw(self) -> dict:
        raw = copy.deepcopy(self.base)
        method = self.method
        spec = METHODS[method]
        method_swept = isinstance(lookup(raw, "distill.method"), list)
        values = {f.key: self.read(f) for f in self.form_fields()}
        source = values.pop("teacher.source", "checkpoint")
        for key in ("teacher.checkpoint", "teacher.from_run"):
            values.pop(key, None)
        for key, value in values.items():
            if key.startswith("distill.") and key != "distill.method":
                continue
            put(raw, key, value)
        # the teacher: exactly one source, and none at all without a teacher
        teacher = raw.get("teacher") if isinstance(raw.get("teacher"), dict) else None
        if teacher is not None:
            for key in ("checkpoint", "from_run", "train"):
                teacher.pop(key, None)
                drop_sweep(raw, f"teacher.{key}")
            if source == "checkpoint":
                put(raw, "teacher.checkpoint", self.read(self._field("teacher.checkpoint")))
            elif source == "from_run":
                value = self.read(self._field("teacher.from_run"))
                put(raw, "teacher.from_run", value if value is MISSING else str(value))
            elif source == "train":
                put(raw, "teacher.train", True)
        if not spec.needs_teacher and not method_swept:
            raw.pop("teacher", None)
        # method options: only this method's, from the form
        distill = raw.setdefault("distill", {})
        if not method_swept:
            for key in list(distill):
                if key != "method" and key not in spec.options:
                    distill.pop(key)
                    drop_sweep(raw, f"distill.{key}")
        for field in option_fields(method):
            put(raw, field.key, self.read(field))
        return raw

    def _field(self, key: str) -> Field:
        for f in self.fields:
            if f.key == key:
                return f
        raise KeyError(key)

    @property
    def target(self) -> Path:
        """The opened file while its name is unchanged; experiments/<name>.toml otherwise."""
        name = self.raw.get("name") or "untitled"
        if self.path is not None and name in (self.path.stem, self.opened_name):
            return self.path
        return self.app.root / "experiments" / f"{name}.toml"

    # ------------------------------------------------------------ validation
    def validate(self) -> bool:
        """The form's TOML through engine.config: the same verdict as `kdtui validate`."""
        self.raw = self.build_raw()
        self.experiment, self.error, self.n_runs = None, None, 0
        for widget in self.query(".-invalid"):
            widget.remove_class("-invalid")
        text = ""
        try:
            text = tomli_w.dumps(self.raw)
            exp = cfgmod.loads(text, file=short_path(self.target))
            self.n_runs = len(cfgmod.expand(exp))
            self.experiment = exp
        except cfgmod.ConfigError as e:
            self.error = e
        except (TypeError, ValueError) as e:  # a value tomli-w cannot write
            self.error = e
        status = self.query_one("#status", Static)
        if self.experiment is not None:
            exp = self.experiment
            self.message = f"valid · {sweep_size(exp, self.n_runs)}"
            status.update(
                Content.assemble(
                    ("✓ valid", "bold $success"),
                    f" · {sweep_size(exp, self.n_runs)} → {short_path(self.target)}",
                )
            )
            status.set_classes("ok")
            self.query_one("#preview", Static).update(
                Syntax(self.file_text(), "toml", theme="ansi_dark", word_wrap=False)
            )
        else:
            e = self.error
            if isinstance(e, cfgmod.ConfigError):
                message = f"{e.key}: {e.reason}" if e.key else e.reason
                self._mark_invalid(e.key)
            else:
                message = str(e)
            self.message = message
            status.update(Content.assemble(("✗ ", "bold $error"), (printable(message), "$error")))
            status.set_classes("error")
            self.query_one("#preview", Static).update(
                Syntax(
                    printable(text or "", keep="\n\t"), "toml", theme="ansi_dark", word_wrap=False
                )
            )
        self.refresh_method_info()
        self.refresh_extra()
        return self.experiment is not None

    def _mark_invalid(self, key: str | None) -> None:
        if not key:
            return
        key = key.removeprefix("sweep.")
        if key == "teacher":
            key = "teacher.source"
        for field in self.form_fields():
            if field.key == key:
                self.query(f"#{field.id}").add_class("-invalid")

    def file_text(self) -> str:
        exp = self.experiment
        assert exp is not None
        if self.file_header and self.target == self.path:
            # saving back: the header a person wrote (what it reproduces, the published
            # number) stays; comments inside the tables do not survive a rewrite
            return cfgmod.dumps(exp, header=self.file_header)
        header = HEADER.format(
            name=exp.name,
            description=exp.description or "a knowledge-distillation experiment",
            path=short_path(self.target),
        )
        return cfgmod.dumps(exp, header=header)

    def refresh_method_info(self) -> None:
        spec = METHODS[self.method]
        head = "the reused teacher classifier" if spec.head == "teacher" else "the student's own FC"
        self.query_one("#method-info", Static).update(
            Content(f"{spec.summary}. Test-time head: {head}.")
        )

    def refresh_extra(self) -> None:
        owned = {f.key for f in self.form_fields()} | {"teacher.train", "teacher.optim"}
        extra = []
        for sec, table in self.raw.items():
            if isinstance(table, dict) and sec != "sweep":
                extra += [f"{sec}.{k}" for k in table if f"{sec}.{k}" not in owned]
            elif sec == "sweep" and isinstance(table, dict):
                extra += [f"sweep.{k}" for k in table]
        self.query_one("#extra", Static).update(
            Content(printable("kept from the file: " + ", ".join(extra))) if extra else ""
        )

    def sync_visibility(self) -> None:
        spec = METHODS[self.method]
        source = self.read(self._field("teacher.source"))
        for key in ("teacher.arch", "teacher.source"):
            self.query_one(f"#row-f-{key.replace('.', '-')}").display = spec.needs_teacher
        self.query_one("#row-f-teacher-checkpoint").display = (
            spec.needs_teacher and source == "checkpoint"
        )
        self.query_one("#row-f-teacher-from_run").display = (
            spec.needs_teacher and source == "from_run"
        )
        self.query_one("#options-heading").display = bool(spec.options)
        schedule = self.read(next(f for f in optim_fields() if f.key == "optim.schedule"))
        self.query_one("#row-f-optim-milestones").display = schedule == "multistep"

    # ------------------------------------------------------------ events
    @on(Input.Changed)
    @on(Select.Changed)
    async def _changed(self, event: Input.Changed | Select.Changed) -> None:
        if not self._ready:
            return
        widget_id = event.control.id
        if widget_id == "f-distill-method" and isinstance(event, Select.Changed):
            if event.value is not Select.NULL and event.value != self.method:
                await self.switch_method(str(event.value))
        elif widget_id == "f-teacher-arch":
            self.refresh_runs_select()
        self.sync_visibility()
        self.validate()

    async def switch_method(self, method: str) -> None:
        """Rebuild the option rows; values typed for the old method that the new one has stay."""
        kept = {f.key: self.read(f) for f in option_fields(self.method)}
        self.method = method
        box = self.query_one("#options")
        await box.remove_children()
        rows = []
        for field in option_fields(method):
            value = kept.get(field.key, MISSING)
            rows.append(Row(field, self.control(field, value)))
        await box.mount_all(rows)

    def refresh_runs_select(self) -> None:
        select = self.query_one("#f-teacher-from_run", Select)
        current = select.value
        choices = self.run_choices(self.read(self._field("teacher.arch")))
        select.set_options([(Text(label), v) for label, v in choices])
        if current in [v for _, v in choices]:
            select.value = current

    @on(Input.Submitted)
    def _next_field(self) -> None:
        self.focus_next()

    def on_descendant_focus(self, event) -> None:
        widget = event.widget
        for row in widget.ancestors_with_self:
            if isinstance(row, Row):
                self.query_one("#help", Static).update(
                    Content.assemble((f"{row.field.key}: ", "bold"), row.field.help)
                )
                return

    # ------------------------------------------------------------ actions
    @property
    def dirty(self) -> bool:
        return self._clean is not None and self.raw != self._clean

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

        if not self.validate():
            self.notify(f"not saved: {self.message}", severity="error")
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
        text = self.file_text()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        except OSError as e:
            self.notify(f"cannot write {short_path(target)}: {e.strerror}", severity="error")
            return
        self.path = target
        self.base = tomllib.loads(text)
        self.opened_name = self.base.get("name")
        self.validate()
        self._clean = copy.deepcopy(self.raw)
        self.query_one("#form").border_title = Content(f"edit {short_path(target)}")
        if then_queue:
            self.queue(self.experiment, target)
        else:
            self.notify(f"saved {short_path(target)}")

    @work(thread=True, group="queue", exit_on_error=False)
    def queue(self, exp: cfgmod.Experiment, path: Path) -> None:
        app = self.app
        try:
            runs = app.store.submit(exp, source=short_path(path))
        except (StoreError, cfgmod.ConfigError) as e:
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
