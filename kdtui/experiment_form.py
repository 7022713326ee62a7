"""The composer's model: an experiment file as form fields, without widgets.

`ExperimentForm` holds the experiment as a TOML document. An existing file is
a tomlkit document, so saving it unchanged gives back the same bytes and an
edit rewrites only its own line: comments, order and layout stay. A new or
cloned experiment is saved through `engine.core.writing.dumps` (tomli-w) with a
header. A field shows the sweep over its key when there is one ("0.01, 0.05",
wherever the file spells it), else the key's value, else the default; typing a
list into a field sweeps it. The form validates by handing the document to
`engine.core.reading.parse` + `engine.core.planning.expand`, so it says what `kdtui validate` says. What
the form cannot edit (a projector list, keys without a field, keys a later
version adds) stays in the document and is listed read-only, never dropped.
The composer screen only binds widgets to this class.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import tomli_w
import tomlkit
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from engine.core import planning, reading, schema, writing
from engine.core.dotted import MISSING, drop_sweep, get_key, get_sweep, set_key, set_sweep
from engine.core.registry import ARCHS, DATASETS, METHODS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["MISSING", "ExperimentForm", "Field", "TOMLKitError", "parse_text", "show"]

TEACHER_SOURCES = (
    ("checkpoint file", "checkpoint"),
    ("earlier run", "from_run"),
    ("train one first", "train"),
)
SOURCE_KEYS = ("checkpoint", "from_run", "train")
NEW_HEADER = """{name}: {description}
Written by the kdtui composer; edit freely.
check: kdtui validate {path}
train: kdtui run {path}   (queue: kdtui submit {path})"""
NEW_EXPERIMENT = {"name": "", "data": {"dataset": "digits"}, "student": {"arch": "resnet8"}}


# ---------------------------------------------------------------- fields
@dataclass(frozen=True)
class Field:
    key: str  # dotted TOML key ("optim.lr"); "teacher.source" is the form's own
    label: str
    kind: str  # text (a string as typed), value (TOML; a list is a sweep), list, select
    choices: tuple = ()
    help: str = ""
    placeholder: str = ""

    @property
    def id(self) -> str:
        return "f-" + self.key.replace(".", "-")


def _help(section: str, key: str) -> str:
    return schema.field_help(section, key)


def _choices(key: str) -> tuple:
    for f in fields(schema.OptimConfig):
        if f.name == key:
            return tuple((c, c) for c in f.metadata["choices"])
    raise KeyError(key)


def base_fields() -> list[Field]:
    archs = tuple((a, a) for a in ARCHS)
    return [
        Field("name", "name", "text", help="experiment name: the file is experiments/<name>.toml"),
        Field("description", "description", "text", help="what this experiment reproduces"),
        Field("seeds", "seeds", "list", help="one run per seed: 0, 1, 2", placeholder="0"),
        Field(
            "data.dataset",
            "data set",
            "select",
            tuple((k, k) for k in DATASETS),
            help=_help("data", "dataset"),
        ),
        Field(
            "data.batch_size",
            "batch size",
            "value",
            help=_help("data", "batch_size"),
            placeholder="64",
        ),
        Field(
            "distill.method",
            "method",
            "select",
            tuple((k, k) for k in METHODS),
            help=_help("distill", "method") + "; several (kd, simkd) are a sweep",
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
            "value",
            help=_help("teacher", "checkpoint"),
            placeholder="teachers/resnet32x4_vanilla.pth",
        ),
        Field("teacher.from_run", "earlier run", "select", (), help=_help("teacher", "from_run")),
        Field("student.arch", "student", "select", archs, help=_help("student", "arch")),
    ]


def teacher_optim_fields() -> list[Field]:
    """[teacher.optim]: the teacher's own training when train = true; empty keeps [optim]'s."""
    inherit = " (empty: as in [optim])"
    return [
        Field(
            "teacher.optim.epochs",
            "epochs",
            "value",
            help="epochs of the teacher's training" + inherit,
            placeholder="as [optim]",
        ),
        Field(
            "teacher.optim.lr",
            "lr",
            "value",
            help="learning rate of the teacher's training" + inherit,
            placeholder="as [optim]",
        ),
        Field(
            "teacher.optim.schedule",
            "schedule",
            "select",
            _choices("schedule"),
            help="lr schedule of the teacher's training" + inherit,
        ),
        Field(
            "teacher.optim.milestones",
            "milestones",
            "list",
            help="the teacher's lr milestones" + inherit,
            placeholder="as [optim]",
        ),
    ]


def optim_fields() -> list[Field]:
    return [
        Field(
            "optim.optimizer",
            "optimiser",
            "select",
            _choices("optimizer"),
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
            "optim.schedule", "schedule", "select", _choices("schedule"), _help("optim", "schedule")
        ),
        Field(
            "optim.milestones",
            "milestones",
            "list",
            help=_help("optim", "milestones") + " (each below epochs)",
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


def option_fields(methods: list[str]) -> list[Field]:
    """The options of the chosen methods (of every swept one), each once."""
    out: dict[str, Field] = {}
    for method in methods:
        for key, opt in METHODS[method].options.items():
            if f"distill.{key}" in out:
                continue
            hint = opt.help
            if opt.min is not None or opt.max is not None:
                hint += f" (min {opt.min})" if opt.max is None else f" ({opt.min}…{opt.max})"
            if len(methods) > 1:
                hint = f"[{method}] {hint}"
            if opt.choices:
                choices = tuple((str(c), c) for c in opt.choices)
                field = Field(f"distill.{key}", key, "select", choices, hint)
            else:
                field = Field(
                    f"distill.{key}", key, "value", help=hint, placeholder=show(opt.default)
                )
            out[field.key] = field
    return list(out.values())


# ---------------------------------------------------------------- values as typed
def _plain(value: Any) -> Any:
    """tomlkit items as plain Python values."""
    return value.unwrap() if hasattr(value, "unwrap") else value


def _bare(text: str) -> bool:
    """A string that reads back as itself when typed without quotes."""
    if not text or text != text.strip() or any(c in text for c in ',"[]{}#'):
        return False
    try:
        tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return True
    return False


def show(value: Any) -> str:
    """A value as the user types it: lists without brackets, bare words, TOML for the rest."""
    value = _plain(value)
    if value is MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value if _bare(value) else tomli_w.dumps({"v": value}).partition("=")[2].strip()
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value):
        return ", ".join(show(v) for v in value)
    return _inline(value)


def _inline(value: Any) -> str:
    """TOML on one line: a projector list fits a form row."""
    if isinstance(value, dict):
        items = [
            f"{k if _BARE_KEY.match(k) else _inline(k)} = {_inline(v)}" for k, v in value.items()
        ]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return MISSING


def parse_text(text: str, kind: str) -> Any:
    """Typed text -> a value: TOML where it reads as TOML, comma lists as lists, else the
    words as a string (for the validator to judge); empty is MISSING (the key is unset)."""
    text = text.strip()
    if not text:
        return MISSING
    if kind == "text":
        return text
    value = _toml_value(text)
    if value is MISSING and "," in text:
        value = _toml_value(f"[{text}]")
        if value is MISSING:  # bare words: kl, l2+kl
            items = [item.strip() for item in text.split(",")]
            value = [v if (v := _toml_value(item)) is not MISSING else item for item in items]
    if value is MISSING:
        value = text
    if kind == "list" and not isinstance(value, list):
        value = [value]
    return value


def _kind(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_kind(v) for v in value)
    if isinstance(value, bool):
        return bool
    return float if isinstance(value, (int, float)) else type(value)


def same(a: Any, b: Any) -> bool:
    """Equal as the experiment reads them (4 and 4.0 alike, true and 1 not)."""
    if a is MISSING or b is MISSING:
        return a is b
    return a == b and _kind(a) == _kind(b)


def _structured(value: Any) -> bool:
    """A value no one-line field edits: a table, or a list holding tables or lists."""
    return isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
    )


def _flatten(table: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flatten(value, dotted + ".")  # an empty table shows nothing
        else:
            out.append((dotted, value))
    return out


def _table() -> Any:
    return tomlkit.table()


def _body(node: Any) -> Container | None:
    """The tomlkit container that orders a table's lines (None for a dict)."""
    if isinstance(node, Container):
        return node
    return node.value if isinstance(node, Table) else None


def new_header(exp: schema.Experiment, path: str) -> str:
    description = exp.description or "a knowledge-distillation experiment"
    return NEW_HEADER.format(name=exp.name, description=description, path=path)


def sweep_size(exp: schema.Experiment, n_runs: int) -> str:
    parts = [f"{k.split('.')[-1]} ×{len(v)}" for k, v in exp.sweep.items()]
    if len(exp.seeds) > 1:
        parts.append(f"seeds ×{len(exp.seeds)}")
    if any(p.role == "teacher" for p in planning.expand(exp)):
        parts.append("+ teacher")
    plural = "s" if n_runs != 1 else ""
    return f"{n_runs} run{plural}" + (f" ({' · '.join(parts)})" if parts else "")


# ---------------------------------------------------------------- the form
class ExperimentForm:
    """One experiment being edited: values in, a validated experiment and its TOML out."""

    def __init__(
        self, text: str | None = None, *, base: Mapping | None = None, file: str | None = None
    ) -> None:
        """`text`: an existing file (raises TOMLKitError when it is not TOML); `base`: the
        values of a new experiment (a clone); neither: a blank new experiment."""
        self.file = file
        self.new = text is None
        if text is not None:
            self.doc = tomlkit.parse(text)
        else:
            self.doc = tomlkit.document()
            for key, value in copy.deepcopy(
                dict(base if base is not None else NEW_EXPERIMENT)
            ).items():
                self.doc[key] = value
        self._stash: dict[str, Any] = {}  # what a method or teacher-source switch took out
        self._source: str | None = None  # the teacher source chosen in the form
        self._slots: dict[str, tuple] = {}  # where removed keys stood (see _unset)
        self._clean = self.doc.unwrap()
        self.experiment: schema.Experiment | None = None
        self.error: Exception | None = None
        self.n_runs = 0
        self.check()

    # ------------------------------------------------------------ reading
    @property
    def name(self) -> str:
        name = _plain(self.doc.get("name", ""))
        return name if isinstance(name, str) else ""

    @property
    def methods(self) -> list[str]:
        """The chosen method, or every method a sweep runs."""
        value = self.value("distill.method")
        methods = value if isinstance(value, list) else [value]
        known = [m for m in methods if isinstance(m, str) and m in METHODS]
        return known or ["vanilla"]

    @property
    def needs_teacher(self) -> bool:
        return any(METHODS[m].needs_teacher for m in self.methods)

    @property
    def teacher_source(self) -> str:
        """checkpoint | from_run | train: the one chosen, else the one the file gives."""
        if self._source is not None:
            return self._source
        if get_key(self.doc, "teacher.from_run") not in (MISSING, ""):
            return "from_run"
        if get_key(self.doc, "teacher.train") is True:
            return "train"
        return "checkpoint"

    def fields(self) -> list[Field]:
        """Every field the form has now (the method options follow the chosen methods)."""
        return [
            *base_fields(),
            *teacher_optim_fields(),
            *option_fields(self.methods),
            *optim_fields(),
        ]

    def field(self, key: str) -> Field:
        for f in [*base_fields(), *teacher_optim_fields(), *optim_fields()]:
            if f.key == key:
                return f
        for f in option_fields(self.methods):
            if f.key == key:
                return f
        raise KeyError(key)

    def sweepable(self, key: str) -> bool:
        """Whether a list typed into this field is a sweep (else it is the value itself)."""
        if key == "teacher.source" or key.startswith("teacher.optim."):
            return False  # the form's own select; teacher overrides take one value
        if key == "distill.method":
            return True
        try:
            if self.field(key).kind not in ("value", "select"):
                return False
        except KeyError:
            return True  # a key without a field: as the file has it
        option = key.removeprefix("distill.")
        if key.startswith("distill.") and option != "method":  # projectors: a list is a value
            specs = [
                METHODS[m].options[option] for m in self.methods if option in METHODS[m].options
            ]
            return any(spec.check is None for spec in specs)
        return True

    def swept(self, key: str) -> bool:
        if key == "teacher.source" or not self.sweepable(key):
            return False
        return get_sweep(self.doc, key) is not MISSING or isinstance(
            _plain(get_key(self.doc, key)), list
        )

    def current(self, key: str) -> Any:
        """What the document gives a key: the sweep over it, else its value, else MISSING."""
        if key == "teacher.source":
            return self.teacher_source
        swept = get_sweep(self.doc, key)
        if swept is not MISSING and self.sweepable(key):
            return _plain(swept)
        return _plain(get_key(self.doc, key))

    def value(self, key: str) -> Any:
        """What the field shows: the document's value, else the default."""
        value = self.current(key)
        if value is not MISSING or key.startswith("teacher.") or key in ("name", "description"):
            return value
        sec, _, name = key.partition(".")
        if sec == "distill" and name != "method":
            for method in self.methods:
                if name in METHODS[method].options:
                    return METHODS[method].options[name].default
            return MISSING
        try:
            return schema.field_default(sec, name)
        except KeyError:
            return MISSING

    def editable(self, key: str) -> bool:
        """False for values a one-line field cannot hold (a projector list): shown read-only."""
        value = self.value(key)
        if _structured(value):
            return False
        return not isinstance(value, list) or self.field(key).kind == "list" or self.sweepable(key)

    def _schedules(self, key: str) -> list:
        value = self.value(key)
        return value if isinstance(value, list) else [value]

    def visible(self, key: str) -> bool:
        if key.startswith("teacher."):
            source = self.teacher_source
            if not self.needs_teacher:
                return False
            if key in ("teacher.checkpoint", "teacher.from_run"):
                return source == key[8:]
            if key.startswith("teacher.optim."):
                if source != "train":
                    return False
                if key == "teacher.optim.milestones":
                    own = self.value("teacher.optim.schedule")
                    return "multistep" in (
                        [own] if own is not MISSING else self._schedules("optim.schedule")
                    )
        if key == "optim.milestones":
            return "multistep" in self._schedules("optim.schedule")
        return True

    def kept(self) -> list[tuple[str, Any]]:
        """Keys in the document that no shown row holds: listed read-only, saved as they are."""
        shown = {f.key for f in self.fields() if self.visible(f.key)} - {"teacher.source"}
        if self.visible("teacher.source"):
            shown.add(f"teacher.{self.teacher_source}")
        out = []
        for dotted, value in _flatten(self.doc.unwrap()):
            if dotted.startswith("sweep."):
                key = dotted[6:]
                if key in shown and self.swept(key):
                    continue
            elif dotted in shown:
                continue
            elif dotted == "teacher.train" and value is False:
                continue  # what the source select says
            out.append((dotted, value))
        return out

    @property
    def dirty(self) -> bool:
        return self.doc.unwrap() != self._clean

    # ------------------------------------------------------------ editing
    def set(self, key: str, value: Any) -> bool:
        """Set a field (MISSING: unset its key); a list in a sweepable field is a sweep.
        Returns whether the document changed."""
        value = value if value is MISSING else copy.deepcopy(value)
        if key == "teacher.source":
            if value == self.teacher_source or value is MISSING:
                return False
            self._set_source(value)
        else:
            if same(value, self.current(key)):
                return False
            if key == "distill.method":
                self._set_method(value)
            else:
                self._put(key, value)
        self.check()
        return True

    def _put(self, key: str, value: Any) -> None:
        if isinstance(value, list) and self.sweepable(key):
            if get_sweep(self.doc, key) is MISSING and isinstance(
                _plain(get_key(self.doc, key)), list
            ):
                self._set(key, value)  # a list in its own table stays there
            else:
                set_sweep(self.doc, key, value, new_table=_table)
                self._unset(key)  # the sweep is the key's only value
            return
        drop_sweep(self.doc, key)
        if value is MISSING:
            self._unset(key)
        else:
            self._set(key, value)

    def _unset(self, key: str) -> None:
        """Remove a key but keep its table's header (and the comments in it); where it stood
        is remembered, so a value typed again goes back to its line."""
        *path, name = key.split(".")
        node = get_key(self.doc, ".".join(path)) if path else self.doc
        if not isinstance(node, dict) or name not in node:
            return
        body = _body(node)
        if body is not None:
            for i, (k, item) in enumerate(body.body):
                if k is not None and k.key == name:
                    self._slots[key] = (body, i, item)
        del node[name]

    def _set(self, key: str, value: Any) -> None:
        """Set a key, on the line it had when it was removed in this session."""
        *path, name = key.split(".")
        slot = self._slots.pop(key, None)
        node = get_key(self.doc, ".".join(path)) if path else self.doc
        if slot is not None and isinstance(node, dict) and name not in node:
            body, index, item = slot
            if _body(node) is body and index < len(body.body):
                body._insert_at(index, name, item)  # tomlkit keeps a removed key's slot
        if get_key(self.doc, key) is not value:
            set_key(self.doc, key, value, new_table=_table)

    def _take(self, key: str) -> None:
        """Move a key (and its sweep) out of the document, comments and all."""
        value = get_key(self.doc, key)
        if value is not MISSING:
            self._stash[key] = value
            self._unset(key)
        swept = get_sweep(self.doc, key)
        if swept is not MISSING:
            self._stash["sweep." + key] = swept
            drop_sweep(self.doc, key)

    def _give_back(self, key: str) -> None:
        if key in self._stash and get_key(self.doc, key) is MISSING:
            self._set(key, self._stash.pop(key))
        if "sweep." + key in self._stash and get_sweep(self.doc, key) is MISSING:
            set_sweep(self.doc, key, self._stash.pop("sweep." + key), new_table=_table)

    def _set_method(self, value: Any) -> None:
        """A method switch: options no chosen method has leave the file (they would make it
        invalid) and come back if a method that has them is chosen again; so does [teacher]."""
        self._put("distill.method", value)
        names = value if isinstance(value, list) else [value]
        if not all(isinstance(m, str) and m in METHODS for m in names):
            return  # a name still being typed: the validator says so, nothing moves
        wanted = {k for m in self.methods for k in METHODS[m].options}
        every = {k for spec in METHODS.values() for k in spec.options}
        present = {
            k
            for k in every
            if get_key(self.doc, f"distill.{k}") is not MISSING
            or get_sweep(self.doc, f"distill.{k}") is not MISSING
        }
        for key in present - wanted:
            self._take(f"distill.{key}")
        for key in list(self._stash):  # in the order the file had them
            if key.removeprefix("sweep.").removeprefix("distill.") in wanted:
                self._give_back(key.removeprefix("sweep."))
        if not self.needs_teacher:
            self._take("teacher")
        else:
            self._give_back("teacher")

    def _set_source(self, source: str) -> None:
        """One teacher source at a time; what the others held comes back when chosen again."""
        self._source = source
        for key in SOURCE_KEYS:
            if key != source:
                self._take(f"teacher.{key}")
        if source != "train":
            self._take("teacher.optim")
            self._give_back(f"teacher.{source}")
        else:
            self._set("teacher.train", True)
            self._give_back("teacher.optim")

    # ------------------------------------------------------------ checking and saving
    def check(self) -> bool:
        """The document through engine.core.reading: the same verdict as `kdtui validate`."""
        self.experiment, self.error, self.n_runs = None, None, 0
        try:
            exp = reading.parse(self.doc.unwrap(), file=self.file, text=tomlkit.dumps(self.doc))
            self.n_runs = len(planning.expand(exp))
            self.experiment = exp
        except (schema.ConfigError, TypeError, ValueError) as e:
            self.error = e
        return self.experiment is not None

    @property
    def message(self) -> str:
        if self.experiment is not None:
            return f"valid · {sweep_size(self.experiment, self.n_runs)}"
        e = self.error
        if isinstance(e, schema.ConfigError):
            return f"{e.key}: {e.reason}" if e.key else e.reason
        return str(e)

    @property
    def error_key(self) -> str | None:
        """The field an error is about (a sweep's error is its key's)."""
        e = self.error
        if not isinstance(e, schema.ConfigError) or not e.key:
            return None
        key = e.key.removeprefix("sweep.")
        return "teacher.source" if key == "teacher" else key

    def text(self, path: str = "") -> str:
        """The file to write: the document itself for an opened file (comments kept); for a
        new one, the experiment as engine.core.writing writes it, under a header (`path` in it)."""
        if not self.new:
            return tomlkit.dumps(self.doc)
        if self.experiment is None:
            return tomlkit.dumps(self.doc)
        return writing.dumps(self.experiment, header=new_header(self.experiment, path))

    def saved(self, text: str) -> None:
        """After writing `text`: from now on the form edits that file."""
        self.doc = tomlkit.parse(text)
        self.new = False
        self._clean = self.doc.unwrap()
        self.check()
