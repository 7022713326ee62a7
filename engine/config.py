"""Experiment TOML: typed schema, loading with clear errors, saving, sweeps.

Torch-free: the app validates as the user types. Every error names the
file, the key and (where it can be found) the line, and suggests the
nearest valid key or lists the valid choices.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from engine.registry import ARCHS, DATASETS, METHODS


class ConfigError(ValueError):
    """A bad experiment file: one message naming file, key and line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ):
        self.file, self.key, self.line, self.reason = file, key, line, message
        where = file or "<config>"
        if line:
            where += f":{line}"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def meta(
    help: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    sweepable: bool = True,
) -> dict:
    return {"help": help, "choices": choices, "min": min, "max": max, "sweepable": sweepable}


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta(help, **kw))
    return field(default=default, metadata=meta(help, **kw))


@dataclass
class DataConfig:
    dataset: str = _f("digits", "data set", choices=tuple(DATASETS))
    root: str = _f("data", "where data sets live (cifar*, folder)")
    download: bool = _f(False, "download CIFAR through torchvision when missing")
    batch_size: int = _f(64, "training batch size", min=1)
    eval_batch_size: int = _f(512, "evaluation batch size", min=1)
    augment: bool = _f(True, "zero-pad 4 + random crop + flip on the training set")
    hflip: str = _f(
        "auto",
        "horizontal flip: auto (on except for digits), on, off",
        choices=("auto", "on", "off"),
    )
    loader: str = _f(
        "auto",
        "auto: device-resident tensors for in-memory data sets, "
        "DataLoader for folders; device; dataloader (PIL, reference style)",
        choices=("auto", "device", "dataloader"),
    )
    strong_view: str = _f(
        "auto",
        "a second, strongly augmented view of every training image (own crop + flip, "
        "RandAugment n=2 with random magnitudes, Cutout; what MLKD trains on): auto (on when "
        "the method reads it), on, off",
        choices=("auto", "on", "off"),
    )
    num_workers: int = _f(2, "DataLoader workers (dataloader path only)", min=0)
    data_seed: int = _f(-1, "seed of shuffling and augmentation; -1 uses the run's seed")
    # synthetic / folder only
    num_classes: int = _f(10, "classes of the synthetic data set", min=2)
    train_size: int = _f(2048, "training images of the synthetic data set", min=1)
    test_size: int = _f(512, "test images of the synthetic data set", min=1)
    image_size: int = _f(32, "side of synthetic images; crop size for folders", min=8)


@dataclass
class OptimConfig:
    optimizer: str = _f("sgd", "optimiser", choices=("sgd", "adamw"))
    lr: float = _f(0.05, "base learning rate", min=0.0)
    momentum: float = _f(0.9, "SGD momentum", min=0.0, max=1.0)
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "weight decay", min=0.0)
    epochs: int = _f(240, "training epochs", min=1)
    schedule: str = _f("multistep", "lr schedule", choices=("multistep", "cosine", "constant"))
    milestones: list[int] = _f(
        [150, 180, 210], "epochs where lr is multiplied by gamma", sweepable=False
    )
    gamma: float = _f(0.1, "multistep decay factor", min=0.0, max=1.0)
    warmup_epochs: int = _f(0, "linear lr warm-up epochs", min=0)
    min_lr: float = _f(0.0, "final lr of the cosine schedule", min=0.0)


@dataclass
class TeacherConfig:
    arch: str = _f("", "teacher architecture", choices=tuple(ARCHS))
    checkpoint: str = _f("", "teacher weights: our checkpoint or a RepDistiller/SimKD file")
    from_run: str = _f("", "use the best checkpoint of an earlier run (run id or experiment name)")
    train: bool = _f(False, "train this teacher first (vanilla) and distil from it")
    # overrides of [optim] for the teacher's own training when train = true
    optim: dict = field(
        default_factory=dict,
        metadata=meta("overrides of [optim] for training the teacher", sweepable=False),
    )


@dataclass
class StudentConfig:
    arch: str = _f("resnet8x4", "student architecture", choices=tuple(ARCHS))
    checkpoint: str = _f("", "initialise the student from these weights")


@dataclass
class DistillConfig:
    method: str = _f("vanilla", "distillation method", choices=tuple(METHODS))
    # method-specific options (see engine.registry.METHODS[method].options)
    options: dict = field(default_factory=dict, metadata=meta("method options", sweepable=False))


@dataclass
class RunConfig:
    device: str = _f("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    amp: str = _f(
        "auto",
        "mixed precision: auto (bf16 on CUDA), bf16, fp16, off",
        choices=("auto", "bf16", "fp16", "off"),
    )
    channels_last: str = _f(
        "auto",
        "channels_last memory format: auto (on CUDA), on, off",
        choices=("auto", "on", "off"),
    )
    compile: bool = _f(False, "torch.compile the training step")
    compile_mode: str = _f(
        "auto",
        "torch.compile mode: auto (reduce-overhead = CUDA graphs on CUDA, default on CPU), "
        "default, reduce-overhead, max-autotune",
        choices=("auto", "default", "reduce-overhead", "max-autotune"),
    )
    threads: int = _f(
        0,
        "CPU threads for torch (0: auto = $OMP_NUM_THREADS when set, e.g. the engine's "
        "share of the cores, else every core)",
        min=0,
    )
    eval_every: int = _f(1, "evaluate every N epochs (and always at the end)", min=1)
    log_every: int = _f(20, "record training loss every N steps", min=1)
    checkpoint_every: int = _f(1, "save the `last` checkpoint every N epochs", min=1)
    deterministic: bool = _f(False, "cudnn deterministic algorithms (slower)")
    priority: int = _f(0, "engine queue priority (higher first)")
    fuse: bool = _f(
        True,
        "train sweep points that share teacher and data order in one process with one teacher pass",
    )
    teacher_cache: str = _f(
        "off",
        "exact teacher-logit cache for logit methods: off, memory, disk",
        choices=("off", "memory", "disk"),
    )
    teacher_cache_dtype: str = _f("fp16", "cache precision", choices=("fp32", "fp16", "bf16"))
    teacher_cache_mb: int = _f(2048, "cache size limit in MiB", min=1)
    max_steps: int = _f(0, "stop each epoch after N steps (0: full epochs; for smoke tests)", min=0)


@dataclass
class Experiment:
    name: str = _f("", "experiment name")
    description: str = _f("", "what this experiment reproduces", sweepable=False)
    seeds: list[int] = _f([0], "one run per seed", sweepable=False)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # dotted key -> list of values; expanded to the grid of runs
    sweep: dict = field(default_factory=dict)

    @property
    def method(self):
        return METHODS[self.distill.method]

    def option(self, key: str) -> Any:
        """A method option with its registry default filled in."""
        spec = self.method.options[key]
        return self.distill.options.get(key, spec.default)


SECTIONS = {
    "data": DataConfig,
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "distill": DistillConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}
TOP_LEVEL = ("name", "description", "seeds", *SECTIONS, "sweep")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/+]*$")


# ---------------------------------------------------------------- helpers
def _suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _choices_text(choices) -> str:
    return ", ".join(repr(c) if not isinstance(c, str) else c for c in choices)


def _hints(cls) -> dict[str, Any]:
    return get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}s"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a table",
    }.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return the value as type tp or raise TypeError."""
    origin = get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise TypeError
        return [_coerce(v, get_args(tp)[0]) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise TypeError
        return value
    raise TypeError


def _check_range(value: Any, md: dict) -> str | None:
    choices = md.get("choices")
    if choices is not None and value not in choices:
        return f"{value!r} is not one of: {_choices_text(choices)}{_suggest(str(value), map(str, choices))}"
    lo, hi = md.get("min"), md.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            return f"{value!r} is below the minimum {lo}"
        if hi is not None and value > hi:
            return f"{value!r} is above the maximum {hi}"
    return None


class _Locator:
    """Finds the line of a dotted key in TOML text (tomllib gives none)."""

    def __init__(self, text: str | None):
        self.lines = text.splitlines() if text else []

    def line(self, dotted: str) -> int | None:
        if not self.lines:
            return None
        parts = dotted.split(".")
        section, key = parts[:-1], parts[-1]
        if parts[0] == "sweep" and len(parts) > 2:  # "section.key" quoted inside [sweep]
            section, key = ["sweep"], ".".join(parts[1:])
        current: list[str] = []
        header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
        keyre = re.compile(r'^\s*("?)' + re.escape(key) + r"\1\s*=")
        dotted_re = re.compile(r"^\s*" + re.escape(".".join(parts)) + r"\s*=")
        quoted_re = re.compile(r'^\s*"' + re.escape(dotted) + r'"\s*=')
        for i, raw in enumerate(self.lines, 1):
            m = header.match(raw)
            if m:
                current = [p.strip().strip('"') for p in m.group(1).split(".")]
                if current == parts:  # the key is itself a table
                    return i
                continue
            if current == section and keyre.match(raw):
                return i
            if not current and (dotted_re.match(raw) or quoted_re.match(raw)):
                return i
            if current == ["sweep"] and quoted_re.match(raw):
                return i
        # fall back to the section header
        for i, raw in enumerate(self.lines, 1):
            m = header.match(raw)
            if m and [p.strip() for p in m.group(1).split(".")] == section:
                return i
        return None


# ---------------------------------------------------------------- parsing
class _Parser:
    def __init__(self, file: str | None, text: str | None):
        self.file = file
        self.loc = _Locator(text)

    def error(self, key: str | None, message: str) -> ConfigError:
        line = self.loc.line(key) if key else None
        return ConfigError(message, file=self.file, key=key, line=line)

    def section(self, cls, raw: Any, prefix: str):
        if not isinstance(raw, dict):
            raise self.error(prefix, f"must be a table [{prefix}]")
        hints = _hints(cls)
        names = [f.name for f in fields(cls)]
        kwargs = {}
        for key, value in raw.items():
            dotted = f"{prefix}.{key}"
            if cls is DistillConfig and key not in names:
                continue  # method options, checked in _distill
            if cls is TeacherConfig and key == "optim":
                kwargs["optim"] = self.optim_overrides(value, dotted)
                continue
            if key not in names:
                raise self.error(
                    dotted,
                    f"unknown key in [{prefix}]{_suggest(key, names)} (valid: {', '.join(names)})",
                )
            kwargs[key] = self.value(cls, key, value, hints[key], dotted)
        obj = cls(**kwargs)
        if cls is DistillConfig:
            obj.options = with_defaults([obj.method], self.distill_options(obj.method, raw, prefix))
        return obj

    def value(self, cls, key: str, value: Any, tp: Any, dotted: str) -> Any:
        fmeta = {f.name: f.metadata for f in fields(cls)}[key]
        try:
            value = _coerce(value, tp)
        except TypeError:
            raise self.error(dotted, f"must be {_type_name(tp)}, got {value!r}") from None
        if key in ("arch",) and value == "" and cls is TeacherConfig:
            return value
        problem = _check_range(value, fmeta)
        if problem:
            raise self.error(dotted, problem)
        return value

    def optim_overrides(self, raw: Any, dotted: str) -> dict:
        if not isinstance(raw, dict):
            raise self.error(dotted, "must be a table [teacher.optim]")
        hints = _hints(OptimConfig)
        out = {}
        for key, value in raw.items():
            if key not in hints:
                raise self.error(f"{dotted}.{key}", f"unknown optimiser key{_suggest(key, hints)}")
            out[key] = self.value(OptimConfig, key, value, hints[key], f"{dotted}.{key}")
        return out

    def distill_options(self, method: str, raw: dict, prefix: str) -> dict:
        spec = METHODS[method]
        own = {f.name for f in fields(DistillConfig)}
        out = {}
        for key, value in raw.items():
            if key in own:
                continue
            dotted = f"{prefix}.{key}"
            if key not in spec.options:
                others = sorted(m for m, s in METHODS.items() if key in s.options)
                if others:
                    msg = (
                        f"not an option of method '{method}' (it belongs to "
                        f"{', '.join(others)}); options of {method}: "
                        f"{', '.join(spec.options) or 'none'}"
                    )
                else:
                    valid = ["method", *spec.options]
                    msg = f"unknown key in [distill]{_suggest(key, valid)} (valid for {method}: {', '.join(valid)})"
                raise self.error(dotted, msg)
            out[key] = self.method_option(method, key, value, dotted)
        return out

    def method_option(self, method: str, key: str, value: Any, dotted: str) -> Any:
        opt = METHODS[method].options[key]
        default = opt.default
        if opt.check is not None:
            problem = opt.check(value)
        else:
            tp = type(default)
            try:
                value = _coerce(value, tp)
            except TypeError:
                raise self.error(dotted, f"must be {_type_name(tp)}, got {value!r}") from None
            problem = _check_range(value, {"choices": opt.choices, "min": opt.min, "max": opt.max})
        if problem:
            raise self.error(dotted, problem)
        return value

    def experiment(self, raw: dict) -> Experiment:
        for key in raw:
            if key not in TOP_LEVEL:
                raise self.error(
                    key,
                    f"unknown top-level key{_suggest(key, TOP_LEVEL)} "
                    f"(valid: {', '.join(TOP_LEVEL)})",
                )
        raw = copy.deepcopy(raw)
        sweep = self.sweep(raw.pop("sweep", {}), raw)
        # a list where a scalar is expected (e.g. optim.lr = [...]) is a sweep
        for sec, cls in SECTIONS.items():
            table = raw.get(sec)
            if not isinstance(table, dict):
                continue
            hints = _hints(cls)
            for key in list(table):
                tp = hints.get(key)
                if isinstance(table[key], list) and tp in (int, float, str, bool):
                    if f"{sec}.{key}" in sweep:
                        raise self.error(f"{sec}.{key}", "swept twice: as a list and in [sweep]")
                    sweep[f"{sec}.{key}"] = self.sweep_values(f"{sec}.{key}", table[key])
                    table[key] = table[key][0] if table[key] else None
            if sec == "distill" and isinstance(table.get("method"), str):
                spec = METHODS.get(table["method"])
                for key in list(table):
                    opt = spec.options.get(key) if spec else None
                    if opt is not None and opt.check is None and isinstance(table[key], list):
                        sweep[f"distill.{key}"] = self.sweep_values(f"distill.{key}", table[key])
                        table[key] = table[key][0]
        exp = Experiment()
        if "name" in raw:
            exp.name = self.value(Experiment, "name", raw["name"], str, "name")
        if "description" in raw:
            exp.description = self.value(
                Experiment, "description", raw["description"], str, "description"
            )
        if "seeds" in raw:
            seeds = raw["seeds"]
            if isinstance(seeds, int) and not isinstance(seeds, bool):
                seeds = [seeds]
            exp.seeds = self.value(Experiment, "seeds", seeds, list[int], "seeds")
        # a method sweep validates options against each swept method
        methods = sweep.get("distill.method")
        for sec, cls in SECTIONS.items():
            if sec not in raw:
                continue
            if sec == "distill" and methods:
                setattr(exp, sec, self.swept_distill(raw[sec], methods))
            else:
                setattr(exp, sec, self.section(cls, raw[sec], sec))
        exp.sweep = sweep
        self.check(exp)
        for point in grid(sweep):  # every grid point must be a valid experiment
            apply_point(exp, point, self)
        return exp

    def swept_distill(self, raw: dict, methods: list[str]) -> DistillConfig:
        own = {f.name for f in fields(DistillConfig)}
        out = {}
        for key, value in raw.items():
            if key in own:
                continue
            owners = [m for m in methods if key in METHODS[m].options]
            if not owners:
                valid = sorted({k for m in methods for k in METHODS[m].options})
                raise self.error(
                    f"distill.{key}",
                    f"not an option of any swept method "
                    f"({', '.join(methods)}){_suggest(key, valid)}",
                )
            out[key] = self.method_option(owners[0], key, value, f"distill.{key}")
        return DistillConfig(method=methods[0], options=with_defaults(methods, out))

    def sweep_values(self, key: str, values: Any) -> list:
        if not isinstance(values, list) or not values:
            raise self.error(key, "a sweep needs a non-empty list of values")
        return list(values)

    def sweep(self, raw: Any, full: dict) -> dict:
        if not isinstance(raw, dict):
            raise self.error("sweep", 'must be a table [sweep] of "section.key" = [values]')
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: dict):  # accept both "optim.lr" and [sweep.optim] lr
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else k
                if isinstance(v, dict):
                    walk(key, v)
                else:
                    flat[key] = v

        walk("", raw)
        out = {}
        for key, values in flat.items():
            dotted = f"sweep.{key}"
            sec, _, name = key.partition(".")
            if sec not in SECTIONS or not name:
                raise self.error(
                    dotted,
                    f'sweep keys look like "section.key" with section one '
                    f"of {', '.join(SECTIONS)}{_suggest(key, _sweepable_keys())}",
                )
            if sec == "distill" and name != "method":
                known = {k for s in METHODS.values() for k in s.options}
                if name not in known:
                    raise self.error(dotted, f"unknown method option{_suggest(name, known)}")
            elif not (sec == "distill" and name == "method"):
                names = {f.name: f for f in fields(SECTIONS[sec])}
                if name not in names:
                    raise self.error(dotted, f"unknown key{_suggest(key, _sweepable_keys())}")
                if not names[name].metadata.get("sweepable", True):
                    raise self.error(dotted, "cannot be swept")
            out[key] = self.sweep_values(dotted, values)
            if sec == "distill" and name == "method":
                for m in out[key]:
                    if m not in METHODS:
                        raise self.error(
                            dotted, f"unknown method {m!r}; valid: {', '.join(METHODS)}"
                        )
        return out

    def check(self, exp: Experiment) -> None:
        """Cross-field rules that no single key can check."""
        if not exp.name:
            raise self.error("name", "every experiment needs a name")
        if not NAME_RE.match(exp.name):
            raise self.error("name", "use letters, digits and _ . - / + (no spaces)")
        if not exp.seeds:
            raise self.error("seeds", "needs at least one seed")
        if len(set(exp.seeds)) != len(exp.seeds):
            raise self.error("seeds", "repeats a seed")


def with_defaults(methods: list[str], options: dict) -> dict:
    """Options of the given methods, defaults filled in, so equality is by meaning."""
    out = {}
    for m in methods:
        for key, opt in METHODS[m].options.items():
            out.setdefault(key, copy.deepcopy(opt.default))
    out.update(options)
    return out


def _sweepable_keys() -> list[str]:
    keys = []
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in fields(cls) if f.metadata.get("sweepable", True)]
    keys += [f"distill.{k}" for s in METHODS.values() for k in s.options]
    return keys


def check_point(exp: Experiment, parser: _Parser) -> None:
    """Rules for one fully expanded run."""
    spec = exp.method
    if spec.needs_teacher:
        t = exp.teacher
        if not t.arch:
            raise parser.error(
                "teacher.arch",
                f"method '{spec.name}' needs a teacher; valid architectures: {', '.join(ARCHS)}",
            )
        sources = [bool(t.checkpoint), bool(t.from_run), t.train]
        if sum(sources) != 1:
            raise parser.error(
                "teacher",
                'give exactly one of checkpoint = "PATH", from_run = "NAME" or train = true',
            )
    for key in exp.distill.options:
        if key not in spec.options:
            raise parser.error(f"distill.{key}", f"not an option of method '{spec.name}'")
    if spec.strong_view and exp.data.strong_view == "off":
        raise parser.error(
            "data.strong_view",
            f"method '{spec.name}' trains on a weak and a strong view of every image; "
            'use strong_view = "auto" (or "on")',
        )
    if exp.optim.schedule == "multistep":
        ms = exp.optim.milestones
        if ms != sorted(ms):
            raise parser.error("optim.milestones", "must be increasing")
    if exp.optim.warmup_epochs >= exp.optim.epochs and exp.optim.warmup_epochs:
        raise parser.error("optim.warmup_epochs", "must be shorter than optim.epochs")


def strong_view(exp: Experiment) -> bool:
    """Whether this run's training batches carry the strong view (`[data] strong_view`)."""
    mode = exp.data.strong_view
    return mode == "on" or (mode == "auto" and exp.method.strong_view)


def grid(sweep: dict) -> list[dict]:
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def apply_point(exp: Experiment, point: dict, parser: _Parser | None = None) -> Experiment:
    """A copy of exp with the sweep point's values set (validated)."""
    parser = parser or _Parser(None, None)
    out = copy.deepcopy(exp)
    out.sweep = {}
    method = point.get("distill.method", exp.distill.method)
    if "distill.method" in point:  # keep only the options of this point's method
        out.distill = DistillConfig(
            method=method,
            options={k: v for k, v in exp.distill.options.items() if k in METHODS[method].options},
        )
    for key, value in point.items():
        sec, _, name = key.partition(".")
        dotted = f"sweep.{key}"
        if sec == "distill" and name != "method":
            if name not in METHODS[method].options:
                continue  # an option of another swept method
            out.distill.options[name] = parser.method_option(method, name, value, dotted)
        elif sec == "distill":
            continue
        else:
            obj = getattr(out, sec)
            tp = _hints(type(obj))[name]
            setattr(obj, name, parser.value(type(obj), name, value, tp, dotted))
    check_point(out, parser)
    return out


# ---------------------------------------------------------------- public API
def parse(raw: dict, *, file: str | None = None, text: str | None = None) -> Experiment:
    return _Parser(file, text).experiment(raw)


def loads(text: str, *, file: str | None = None) -> Experiment:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(
            f"not valid TOML: {e}", file=file, line=int(m.group(1)) if m else None
        ) from None
    return parse(raw, file=file, text=text)


def load(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=str(path)) from None
    if overrides:
        raw = _raw_with_overrides(text, str(path), overrides)
        try:
            return parse(raw, file=str(path), text=text)
        except ConfigError as e:
            given = {parse_override(o)[0]: o for o in overrides}
            if e.key in given or f"sweep.{e.key}" in given:
                item = given.get(e.key) or given[f"sweep.{e.key}"]
                raise ConfigError(e.reason, file=f"{path} (--set {item})", key=e.key) from None
            raise
    return loads(text, file=str(path))


def _raw_with_overrides(text: str, file: str, overrides: list[str]) -> dict:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", file=file) from None
    for item in overrides:
        key, value = parse_override(item)
        node = raw
        parts = key.split(".")
        if parts[0] == "sweep":
            raw.setdefault("sweep", {})[".".join(parts[1:])] = value
            continue
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {key}: {p} is not a table", file="--set", key=key)
        node[parts[-1]] = value
        # an override of a swept key replaces the sweep
        if isinstance(raw.get("sweep"), dict):
            raw["sweep"].pop(key, None)
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """`optim.lr=0.01` -> ("optim.lr", 0.01); values are TOML, bare words are strings."""
    if "=" not in item:
        raise ConfigError(f"expected KEY=VALUE, got {item!r}", file="--set")
    key, _, value = item.partition("=")
    key, value = key.strip(), value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key, parsed


def to_dict(exp: Experiment, *, full: bool = True) -> dict:
    """Plain dict in file order; `full=False` drops values equal to defaults."""
    default = Experiment()
    out: dict[str, Any] = {"name": exp.name}
    if exp.description:
        out["description"] = exp.description
    out["seeds"] = list(exp.seeds)
    for sec in SECTIONS:
        obj, ref = getattr(exp, sec), getattr(default, sec)
        table = {}
        for f in fields(obj):
            v = getattr(obj, f.name)
            if sec == "distill" and f.name == "options":
                methods = exp.sweep.get("distill.method") or [exp.distill.method]
                defaults = with_defaults(methods, {})
                for k, val in with_defaults(methods, exp.distill.options).items():
                    if full or val != defaults[k]:
                        table[k] = val
                continue
            if sec == "teacher" and f.name == "optim":
                if v:
                    table["optim"] = dict(v)
                continue
            if full or v != getattr(ref, f.name) or f"{sec}.{f.name}" in ALWAYS_WRITTEN:
                table[f.name] = v
        if table:
            out[sec] = table
    if exp.sweep:
        out["sweep"] = dict(exp.sweep)
    return out


# written even when equal to the default: what a reader looks for first
ALWAYS_WRITTEN = {
    "data.dataset",
    "data.batch_size",
    "student.arch",
    "distill.method",
    "optim.lr",
    "optim.epochs",
}
_ARRAY_RE = re.compile(r"\[\n((?:    [^\n\[\]{}]+,\n)+)\]")


def _compact(text: str) -> str:
    """tomli-w writes one array item per line; arrays of scalars read better inline."""
    return _ARRAY_RE.sub(
        lambda m: (
            "[" + ", ".join(item.strip().rstrip(",") for item in m.group(1).splitlines()) + "]"
        ),
        text,
    )


def dumps(exp: Experiment, *, full: bool = False, header: str | None = None) -> str:
    text = _compact(tomli_w.dumps(to_dict(exp, full=full)))
    if header:
        text = (
            "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + "\n" + text
        )
    return text


def save(
    exp: Experiment, path: str | Path, *, full: bool = False, header: str | None = None
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(exp, full=full, header=header))
    return path


# ---------------------------------------------------------------- expansion
@dataclass
class RunPlan:
    """One run to create: a fully resolved single-point, single-seed experiment."""

    config: Experiment
    seed: int
    point: dict  # swept key -> value (empty for no sweep)
    role: str = "student"  # "teacher" for a teacher trained first

    @property
    def label(self) -> str:
        parts = [f"{k.split('.')[-1]}={v}" for k, v in self.point.items()]
        return " ".join(parts + [f"seed={self.seed}"])


PATH_KEYS = (("data", "root"), ("teacher", "checkpoint"), ("student", "checkpoint"))


def absolute_paths(exp: Experiment, base: str | Path | None = None) -> Experiment:
    """A copy whose file paths are absolute (relative ones are taken from `base`, default the
    working directory), so the engine, started elsewhere, finds the same files."""
    base = Path(base) if base is not None else Path.cwd()
    out = copy.deepcopy(exp)
    for sec, key in PATH_KEYS:
        value = getattr(getattr(out, sec), key)
        if value:
            setattr(getattr(out, sec), key, str((base / Path(value).expanduser()).absolute()))
    return out


def teacher_experiment(exp: Experiment) -> Experiment:
    """The vanilla run that trains the teacher of a `teacher.train = true` experiment."""
    t = copy.deepcopy(exp)
    t.sweep = {}
    t.student = StudentConfig(arch=exp.teacher.arch)
    t.teacher = TeacherConfig()
    t.distill = DistillConfig(method="vanilla")
    for key, value in exp.teacher.optim.items():
        setattr(t.optim, key, value)
    t.seeds = [exp.seeds[0]]
    return t


def expand(exp: Experiment) -> list[RunPlan]:
    """Grid x seeds, plus the teacher run first when the teacher is trained here."""
    plans: list[RunPlan] = []
    parser = _Parser(None, None)
    points = grid(exp.sweep)
    configs = [(point, apply_point(exp, point, parser)) for point in points]
    if any(cfg.teacher.train and cfg.method.needs_teacher for _, cfg in configs):
        plans.append(RunPlan(teacher_experiment(exp), exp.seeds[0], {}, role="teacher"))
    for point, cfg in configs:
        for seed in exp.seeds:
            one = copy.deepcopy(cfg)
            one.seeds = [seed]
            plans.append(RunPlan(one, seed, dict(point)))
    return plans


def resolved_toml(exp: Experiment) -> str:
    """The full, default-filled config of one run, as stored with it."""
    return _compact(tomli_w.dumps(to_dict(exp, full=True)))


def is_dataclass_instance(obj: Any) -> bool:
    return is_dataclass(obj) and not isinstance(obj, type)


def field_help(section: str, key: str) -> str:
    cls = SECTIONS[section]
    for f in fields(cls):
        if f.name == key:
            return f.metadata.get("help", "")
    raise KeyError(key)


def field_default(section: str, key: str) -> Any:
    for f in fields(SECTIONS[section]):
        if f.name == key:
            if f.default is not MISSING:
                return f.default
            return f.default_factory()  # type: ignore[misc]
    raise KeyError(key)


__all__ = [
    "ConfigError",
    "Experiment",
    "DataConfig",
    "OptimConfig",
    "TeacherConfig",
    "StudentConfig",
    "DistillConfig",
    "RunConfig",
    "RunPlan",
    "load",
    "loads",
    "parse",
    "dumps",
    "save",
    "expand",
    "resolved_toml",
    "to_dict",
    "parse_override",
    "asdict",
]
