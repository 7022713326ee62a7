"""Experiment TOML: typed schema, loading with clear errors, saving, sweeps.

Torch-free: the app validates as the user types. Every error names the
file, the key and (where it can be found) the line, and suggests the
nearest valid key or lists the valid choices.
"""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
import math
import os
import re
import reprlib
import stat
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from engine.inert import printable, shorten
from engine.registry import ARCHS, DATASETS, METHODS

# Limits that keep a hostile or mistyped file from hanging, overflowing or flooding anything.
FILE_MAX_BYTES = 1 << 20  # an experiment file is a few KB
DEPTH_MAX = 8  # [teacher.optim], [[distill.projectors]] and [sweep.optim] need 3
ERRORS_MAX = 20  # `kdtui validate` lists at most this many errors of one file
RUNS_CONFIRM = 1_000  # `kdtui run`/`submit` of more runs needs --yes
RUNS_MAX = 10_000  # sweep points x seeds in one experiment
INT_MAX = 2**53  # integers without a stated range (exact as floats, fit SQLite)
SEED_MAX = 2**32 - 1  # numpy's and most seeders' range
EPOCHS_MAX = 100_000
STEPS_MAX = 1_000_000_000
NPROC_MAX = 256  # processes of one run on one node (GPUs, or CPU processes)
NNODES_MAX = 4096
NAME_MAX = 128
TEXT_MAX = {"name": NAME_MAX, "description": 20_000}  # other strings (paths, refs): 4096
DEVICE_RE = re.compile(r"auto|cpu|mps|xpu|cuda(:[0-9]{1,3})?")
_CUDA_N = re.compile(r"cuda:[0-9]{1,3}")


class ConfigError(ValueError):
    """A bad experiment file: one message naming file, key and line.

    `errors` holds every problem found in the file (this one first), so
    `kdtui validate` can list them all; str() is the first one's line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ):
        self.file, self.key, self.line, self.reason = file, key, line, message
        self.errors: list[ConfigError] = [self]
        self.truncated = False  # more errors than ERRORS_MAX were found
        where = file or "<config>"
        if line:
            where += f":{line}"
        message = shorten(message, 600)
        super().__init__(
            f"{where}: {shorten(key, 100)}: {message}" if key else f"{where}: {message}"
        )

    @classmethod
    def several(cls, errors: list[ConfigError], truncated: bool = False) -> ConfigError:
        first = errors[0]
        out = cls(first.reason, file=first.file, key=first.key, line=first.line)
        out.errors, out.truncated = list(errors), truncated
        return out


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
    batch_size: int = _f(64, "training batch size", min=1, max=65536)
    eval_batch_size: int = _f(512, "evaluation batch size", min=1, max=65536)
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
    num_workers: int = _f(2, "DataLoader workers (dataloader path only)", min=0, max=256)
    data_seed: int = _f(
        -1, "seed of shuffling and augmentation; -1 uses the run's seed", min=-1, max=SEED_MAX
    )
    # synthetic / folder only
    num_classes: int = _f(10, "classes of the synthetic data set", min=2, max=100_000)
    train_size: int = _f(2048, "training images of the synthetic data set", min=1, max=10_000_000)
    test_size: int = _f(512, "test images of the synthetic data set", min=1, max=10_000_000)
    image_size: int = _f(32, "side of synthetic images; crop size for folders", min=8, max=1024)


@dataclass
class OptimConfig:
    optimizer: str = _f("sgd", "optimiser", choices=("sgd", "adamw"))
    lr: float = _f(0.05, "base learning rate", min=0.0)
    momentum: float = _f(0.9, "SGD momentum", min=0.0, max=1.0)
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "weight decay", min=0.0)
    epochs: int = _f(240, "training epochs", min=1, max=EPOCHS_MAX)
    schedule: str = _f("multistep", "lr schedule", choices=("multistep", "cosine", "constant"))
    milestones: list[int] = _f(
        [150, 180, 210],
        "epochs where lr is multiplied by gamma",
        min=0,
        max=EPOCHS_MAX,
        sweepable=False,
    )
    gamma: float = _f(0.1, "multistep decay factor", min=0.0, max=1.0)
    warmup_epochs: int = _f(0, "linear lr warm-up epochs", min=0, max=EPOCHS_MAX)
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
    device: str = _f(
        "auto",
        "auto (CUDA when present), cpu, cuda, cuda:N (under the engine N is the GPU id as "
        "`kdtui engine start --gpus` names it), mps",
    )
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
        max=1024,
    )
    eval_every: int = _f(
        1, "evaluate every N epochs (and always at the end)", min=1, max=EPOCHS_MAX
    )
    log_every: int = _f(20, "record training loss every N steps", min=1, max=STEPS_MAX)
    checkpoint_every: int = _f(
        1, "save the `last` checkpoint every N epochs", min=1, max=EPOCHS_MAX
    )
    deterministic: bool = _f(
        False,
        "deterministic kernels (torch.use_deterministic_algorithms, warn_only), TF32 and "
        "cuDNN autotuning off: slower on a GPU",
    )
    priority: int = _f(0, "engine queue priority (higher first)", min=-1_000_000, max=1_000_000)
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
    teacher_cache_mb: int = _f(2048, "cache size limit in MiB", min=1, max=1 << 20)
    max_steps: int = _f(
        0, "stop each epoch after N steps (0: full epochs; for smoke tests)", min=0, max=STEPS_MAX
    )
    nproc_per_node: int = _f(
        1,
        "processes per node: N > 1 trains this run data-parallel (DDP under torchrun) on N "
        "GPUs, or N CPU processes on a CPU box; data.batch_size is per process",
        min=1,
        max=NPROC_MAX,
    )
    nnodes: int = _f(
        1,
        "nodes of a data-parallel run (more than one needs the Slurm backend)",
        min=1,
        max=NNODES_MAX,
    )
    sync_bn: bool = _f(
        False,
        "SyncBatchNorm in the student and projectors when the run spans several processes "
        "(batch statistics over the effective batch; GPUs only)",
    )


@dataclass
class Experiment:
    name: str = _f("", "experiment name")
    description: str = _f("", "what this experiment reproduces", sweepable=False)
    seeds: list[int] = _f([0], "one run per seed", min=0, max=SEED_MAX, sweepable=False)
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
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/+]*")  # fullmatch: `$` would pass "x\n"


# ---------------------------------------------------------------- helpers
class _Repr(reprlib.Repr):
    """Bounded repr for messages: a 100,000-character value or a 5,000-digit integer is
    named by its size, never printed whole (nor converted: str(int) has a digit limit)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring, self.maxother, self.maxlist, self.maxdict, self.maxlevel = 60, 60, 6, 6, 3

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if abs(x) < 10**30 else f"<an integer of {x.bit_length():,} bits>"

    def repr_str(self, x: str, level: int) -> str:
        shown = super().repr_str(x, level)
        return shown if len(x) <= self.maxstring else f"{shown} ({len(x):,} characters)"


_show = _Repr().repr


def _suggest(word: Any, candidates) -> str:
    if not isinstance(word, str) or len(word) > 100:  # difflib is quadratic in the length
        return ""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _choices_text(choices) -> str:
    return ", ".join(repr(c) if not isinstance(c, str) else c for c in choices)


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return get_type_hints(cls)


@functools.cache
def _metas(cls) -> dict[str, Any]:
    return {f.name: f.metadata for f in fields(cls)}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        item = get_args(tp)[0]
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(item, item)}"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a table",
    }.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return the value as type tp or raise TypeError (OverflowError: an int too big for a float)."""
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


def _number_problem(value: Any) -> str | None:
    """NaN, infinities and integers beyond INT_MAX anywhere in a value (lists and tables too)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, got {v}"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_MAX:
            return f"{_show(v)} is too large (at most {INT_MAX:,} in absolute value)"
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return None


def _check_range(value: Any, md: dict) -> str | None:
    if isinstance(value, list):  # seeds, milestones: the range applies to every item
        for i, item in enumerate(value):
            problem = _check_range(item, md)
            if problem:
                return f"item {i}: {problem}"
        return None
    problem = _number_problem(value)
    if problem:
        return problem
    choices = md.get("choices")
    if choices is not None and value not in choices:
        return f"{_show(value)} is not one of: {_choices_text(choices)}{_suggest(value, map(str, choices))}"
    lo, hi = md.get("min"), md.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            return f"{value!r} is below the minimum {lo}"
        if hi is not None and value > hi:
            return f"{value!r} is above the maximum {hi:,}"
    return None


def _text_problem(key: str, value: str) -> str | None:
    limit = TEXT_MAX.get(key, 4096)
    if len(value) > limit:
        return f"is {len(value):,} characters long; at most {limit:,}"
    allowed = "\n\t" if key == "description" else ""
    shown = printable(value, keep=allowed)
    if len(shown) != len(value):  # a control, C1 or bidi character was escaped
        bad = next(c for c in value if printable(c, keep=allowed) != c)
        return f"contains the control character {printable(bad)}; remove it"
    if key == "device" and not DEVICE_RE.fullmatch(value):
        return f"{_show(value)} is not a device: use auto, cpu, cuda, cuda:N or mps"
    return None


def _depth(raw: Any) -> int:
    """How deeply tables and arrays nest (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(raw, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > DEPTH_MAX:
            break
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


_TOO_DEEP = f"tables and arrays nest more than {DEPTH_MAX} levels deep; an experiment needs 3"


def run_count(exp: Experiment) -> int:
    """Student runs an experiment queues: sweep points x seeds (a trained teacher adds one)."""
    return math.prod(len(v) for v in exp.sweep.values()) * len(exp.seeds)


_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-.]+)\s*=""")


class _Locator:
    """Finds the line of a dotted key in TOML text (tomllib gives none).

    One pass builds an index of table headers and `key =` lines, so a file
    with many errors costs one scan, not one per error."""

    def __init__(self, text: str | None):
        self.text = text or ""
        self._index: tuple[dict, dict] | None = None

    def _build(self) -> tuple[dict, dict]:
        headers: dict[tuple, int] = {}
        keys: dict[tuple, int] = {}
        current: tuple = ()
        for i, raw in enumerate(self.text.splitlines(), 1):
            m = _HEADER_RE.match(raw)
            if m:
                current = tuple(p.strip().strip('"') for p in m.group(1).split("."))
                headers.setdefault(current, i)
                continue
            m = _KEY_RE.match(raw)
            if m:
                token = m.group(1)
                keys.setdefault((current, token.strip("\"'")), i)
        return headers, keys

    def line(self, dotted: str) -> int | None:
        if not self.text:
            return None
        if self._index is None:
            self._index = self._build()
        headers, keys = self._index
        parts = dotted.split(".")
        section, key = tuple(parts[:-1]), parts[-1]
        if parts[0] == "sweep" and len(parts) > 2:  # "section.key" quoted inside [sweep]
            section, key = ("sweep",), ".".join(parts[1:])
        found = [
            headers.get(tuple(parts)),  # the key is itself a table
            keys.get((section, key)),
            keys.get(((), dotted)),  # optim.lr = ... at the top
            keys.get((("sweep",), dotted)),
        ]
        if parts[0] == "sweep" and len(parts) > 2:  # optim.lr = [...] in [optim] is a sweep too
            found.append(keys.get((tuple(parts[1:-1]), parts[-1])))
        lines = [n for n in found if n]
        return min(lines) if lines else headers.get(section)


# ---------------------------------------------------------------- parsing
class _Parser:
    """Turns a TOML dict into an Experiment, collecting every error instead of stopping at the
    first; `check_files` also checks that checkpoint paths name files (as `kdtui validate` does)."""

    def __init__(
        self,
        file: str | None,
        text: str | None,
        *,
        check_files: bool = False,
        resolved: bool = False,
    ):
        self.file = file
        self.loc = _Locator(text)
        self.check_files = check_files
        self.resolved = resolved  # a run's stored config: every default written out
        self.errors: list[ConfigError] = []
        self.failed: set[str] = set()  # keys with an error (rules built on them are skipped)
        self._seen: set[str] = set()

    def error(self, key: str | None, message: str) -> ConfigError:
        line = self.loc.line(key) if key else None
        return ConfigError(message, file=self.file, key=key, line=line)

    def collect(self, e: ConfigError) -> None:
        for one in e.errors:
            self.failed.add(one.key or "")
            if str(one) not in self._seen:
                self._seen.add(str(one))
                self.errors.append(one)
        if len(self.errors) >= ERRORS_MAX:
            raise ConfigError.several(self.errors, truncated=True)

    def fail(self, key: str | None, message: str) -> None:
        self.collect(self.error(key, message))

    def ok(self, *prefixes: str) -> bool:
        """No error yet in these keys (or their sweeps): rules on them will not cascade."""
        heads = tuple(p for s in prefixes for p in (s, f"sweep.{s}"))
        return not any(k == h or k.startswith(h + ".") for k in self.failed for h in heads)

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigError.several(self.errors)

    def section(self, cls, raw: Any, prefix: str):
        if not isinstance(raw, dict):
            self.fail(prefix, f"must be a table [{prefix}], got {_show(raw)}")
            return cls()
        hints = _hints(cls)
        names = [f.name for f in fields(cls)]
        kwargs = {}
        for key, value in raw.items():
            dotted = f"{prefix}.{key}"
            try:
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
            except ConfigError as e:
                self.collect(e)
        obj = cls(**kwargs)
        if cls is DistillConfig:
            if "method" in raw and "method" not in kwargs:
                return obj  # an unknown method: its options cannot be checked
            obj.options = with_defaults([obj.method], self.distill_options(obj.method, raw, prefix))
        return obj

    def value(self, cls, key: str, value: Any, tp: Any, dotted: str) -> Any:
        fmeta = _metas(cls)[key]
        try:
            value = _coerce(value, tp)
        except TypeError:
            raise self.error(dotted, f"must be {_type_name(tp)}, got {_show(value)}") from None
        except OverflowError:
            raise self.error(dotted, f"{_show(value)} is too large for a number") from None
        if key in ("arch",) and value == "" and cls is TeacherConfig:
            return value
        problem = _text_problem(key, value) if isinstance(value, str) else None
        problem = problem or _check_range(value, fmeta)
        if problem:
            raise self.error(dotted, problem)
        return value

    def optim_overrides(self, raw: Any, dotted: str) -> dict:
        if not isinstance(raw, dict):
            raise self.error(dotted, "must be a table [teacher.optim]")
        hints = _hints(OptimConfig)
        out = {}
        for key, value in raw.items():
            try:
                if key not in hints:
                    raise self.error(
                        f"{dotted}.{key}", f"unknown optimiser key{_suggest(key, hints)}"
                    )
                out[key] = self.value(OptimConfig, key, value, hints[key], f"{dotted}.{key}")
            except ConfigError as e:
                self.collect(e)
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
                self.fail(dotted, msg)
                continue
            try:
                out[key] = self.method_option(method, key, value, dotted)
            except ConfigError as e:
                self.collect(e)
        return out

    def method_option(self, method: str, key: str, value: Any, dotted: str) -> Any:
        opt = METHODS[method].options[key]
        default = opt.default
        if opt.check is not None:
            problem = opt.check(value) or _number_problem(value)
        else:
            tp = type(default)
            try:
                value = _coerce(value, tp)
            except TypeError:
                raise self.error(dotted, f"must be {_type_name(tp)}, got {_show(value)}") from None
            except OverflowError:
                raise self.error(dotted, f"{_show(value)} is too large for a number") from None
            problem = _check_range(value, {"choices": opt.choices, "min": opt.min, "max": opt.max})
        if problem:
            raise self.error(dotted, problem)
        return value

    def experiment(self, raw: dict) -> Experiment:
        if _depth(raw) > DEPTH_MAX:
            raise ConfigError(_TOO_DEEP, file=self.file)
        for key in raw:
            if key not in TOP_LEVEL:
                self.fail(
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
                    try:
                        if f"{sec}.{key}" in sweep:
                            raise self.error(
                                f"{sec}.{key}", "swept twice: as a list and in [sweep]"
                            )
                        sweep[f"{sec}.{key}"] = self.sweep_key(f"{sec}.{key}", table[key])
                    except ConfigError as e:
                        self.collect(e)
                        del table[key]
                        continue
                    table[key] = table[key][0]
            if sec == "distill" and isinstance(table.get("method"), str):
                spec = METHODS.get(table["method"])
                for key in list(table):
                    opt = spec.options.get(key) if spec else None
                    if opt is not None and opt.check is None and isinstance(table[key], list):
                        try:
                            sweep[f"distill.{key}"] = self.sweep_values(
                                f"distill.{key}", table[key]
                            )
                        except ConfigError as e:
                            self.collect(e)
                            del table[key]
                            continue
                        table[key] = table[key][0]
        exp = Experiment()
        for key, tp in (("name", str), ("description", str), ("seeds", list[int])):
            if key not in raw:
                continue
            value = raw[key]
            if key == "seeds" and isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            try:
                setattr(exp, key, self.value(Experiment, key, value, tp, key))
            except ConfigError as e:
                self.collect(e)
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
        runs = run_count(exp)
        if runs > RUNS_MAX:
            points = runs // max(len(exp.seeds), 1)
            self.fail(
                "sweep" if exp.sweep else "seeds",
                f"{runs:,} runs ({points:,} sweep points x {len(exp.seeds):,} seeds); "
                f"at most {RUNS_MAX:,} per experiment: split it into several files",
            )
        else:
            optim = raw.get("optim") if isinstance(raw.get("optim"), dict) else {}
            for point in grid(sweep):  # every grid point must be a valid experiment
                one = apply_point(exp, point, self)
                if "milestones" in optim and not self.resolved and self.ok("optim"):
                    self.milestones(one.optim, "optim", point)
            written = "milestones" in {*optim, *exp.teacher.optim} and not self.resolved
            if exp.teacher.train and written and self.ok("optim", "teacher"):
                self.milestones(teacher_experiment(exp).optim, "teacher.optim", {})
        self.raise_errors()
        return exp

    def milestones(self, o: OptimConfig, prefix: str, point: dict) -> None:
        """Milestones a file sets must fall inside the run: epochs count from 0, so one at or
        past `epochs` never lowers the lr (the run silently keeps its first lr)."""
        late = [m for m in o.milestones if m >= o.epochs]
        if o.schedule != "multistep" or not late:
            return
        fix = sorted({int(o.epochs * f) for f in (0.625, 0.75, 0.875)} - {0})
        where = f"{prefix}.epochs = {o.epochs}"
        if f"{prefix}.epochs" in point:
            where += " (a sweep point)"
        self.fail(
            f"{prefix}.milestones",
            f"{', '.join(map(str, late))} never take{'s' * (len(late) == 1)} effect: "
            f"{where} ends at epoch {o.epochs - 1} (epochs count from 0). Use milestones "
            f"below {o.epochs}, e.g. {prefix}.milestones = {fix}, or "
            f'{prefix}.schedule = "cosine"',
        )

    def swept_distill(self, raw: Any, methods: list[str]) -> DistillConfig:
        if not isinstance(raw, dict):
            self.fail("distill", f"must be a table [distill], got {_show(raw)}")
            return DistillConfig(method=methods[0], options=with_defaults(methods, {}))
        own = {f.name for f in fields(DistillConfig)}
        out = {}
        for key, value in raw.items():
            if key in own:
                continue
            owners = [m for m in methods if key in METHODS[m].options]
            try:
                if not owners:
                    valid = sorted({k for m in methods for k in METHODS[m].options})
                    raise self.error(
                        f"distill.{key}",
                        f"not an option of any swept method "
                        f"({', '.join(methods)}){_suggest(key, valid)}",
                    )
                out[key] = self.method_option(owners[0], key, value, f"distill.{key}")
            except ConfigError as e:
                self.collect(e)
        return DistillConfig(method=methods[0], options=with_defaults(methods, out))

    def sweep_values(self, key: str, values: Any) -> list:
        if not isinstance(values, list) or not values:
            raise self.error(key, "a sweep needs a non-empty list of values")
        return list(values)

    def sweep(self, raw: Any, full: dict) -> dict:
        if not isinstance(raw, dict):
            self.fail("sweep", 'must be a table [sweep] of "section.key" = [values]')
            return {}
        flat: dict[str, Any] = {}
        stack = [("", raw)]  # accept both "optim.lr" and [sweep.optim] lr
        while stack:
            prefix, node = stack.pop(0)
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else k
                if isinstance(v, dict):
                    stack.append((key, v))
                else:
                    flat[key] = v
        out = {}
        for key, values in flat.items():
            try:
                out[key] = self.sweep_key(key, values)
            except ConfigError as e:
                self.collect(e)
        return out

    def sweep_key(self, key: str, values: Any) -> list:
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
        values = self.sweep_values(dotted, values)
        if sec == "distill" and name == "method":
            for m in values:
                if not isinstance(m, str) or m not in METHODS:
                    raise self.error(
                        dotted, f"unknown method {_show(m)}; valid: {', '.join(METHODS)}"
                    )
        return values

    def check(self, exp: Experiment) -> None:
        """Cross-field rules that no single key can check."""
        name = exp.name
        if "name" in self.failed:
            pass
        elif not name:
            self.fail("name", "every experiment needs a name")
        elif len(name) > NAME_MAX:
            self.fail("name", f"is {len(name):,} characters long; at most {NAME_MAX}")
        elif not NAME_RE.fullmatch(name) or any(p in ("", ".", "..") for p in name.split("/")):
            self.fail(
                "name",
                "use letters, digits and _ . - / + (no spaces), starting with a letter or "
                "digit; / separates folders (no empty, . or .. parts)",
            )
        if "seeds" in self.failed:
            return
        if not exp.seeds:
            self.fail("seeds", "needs at least one seed")
        elif len(set(exp.seeds)) != len(exp.seeds):
            self.fail("seeds", "repeats a seed")


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


def _file_problem(value: str) -> str | None:
    """A checkpoint path that is not a file, resolved as `absolute_paths` will resolve it."""
    path = (Path.cwd() / Path(value).expanduser()).absolute()
    try:
        st = path.stat()
    except OSError as e:
        why = "no such file" if isinstance(e, FileNotFoundError) else e.strerror
        return (
            f"{why}: {path} (a relative path is taken from the working directory, "
            "where kdtui run/submit are started)"
        )
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a file (a folder or device); name the checkpoint file itself"
    return None


def check_point(exp: Experiment, parser: _Parser) -> None:
    """Rules for one fully expanded run (each problem collected by the parser)."""
    spec = exp.method
    if spec.needs_teacher and parser.ok("teacher", "distill"):
        t = exp.teacher
        sources = [bool(t.checkpoint), bool(t.from_run), t.train]
        if not t.arch:
            parser.fail(
                "teacher.arch",
                f"method '{spec.name}' needs a teacher; valid architectures: {', '.join(ARCHS)}",
            )
        elif sum(sources) != 1:
            parser.fail(
                "teacher",
                'give exactly one of checkpoint = "PATH", from_run = "NAME" or train = true',
            )
        elif t.checkpoint and parser.check_files:
            problem = _file_problem(t.checkpoint)
            if problem:
                parser.fail("teacher.checkpoint", problem)
    if exp.student.checkpoint and parser.check_files and parser.ok("student"):
        problem = _file_problem(exp.student.checkpoint)
        if problem:
            parser.fail("student.checkpoint", problem)
    if parser.ok("distill"):
        for key in exp.distill.options:
            if key not in spec.options:
                parser.fail(f"distill.{key}", f"not an option of method '{spec.name}'")
    if spec.strong_view and exp.data.strong_view == "off" and parser.ok("data"):
        parser.fail(
            "data.strong_view",
            f"method '{spec.name}' trains on a weak and a strong view of every image; "
            'use strong_view = "auto" (or "on")',
        )
    if parser.ok("optim"):
        if exp.optim.schedule == "multistep":
            ms = exp.optim.milestones
            if ms != sorted(ms):
                parser.fail("optim.milestones", "must be increasing")
        if exp.optim.warmup_epochs >= exp.optim.epochs and exp.optim.warmup_epochs:
            parser.fail("optim.warmup_epochs", "must be shorter than optim.epochs")
    if world_size(exp) > 1 and parser.ok("run"):
        check_data_parallel(exp, parser)


def world_size(exp: Experiment) -> int:
    """Processes that train one run together (`nproc_per_node` x `nnodes`)."""
    return exp.run.nproc_per_node * exp.run.nnodes


def effective_batch(exp: Experiment) -> int:
    """Images per optimiser step: `data.batch_size` is per process."""
    return exp.data.batch_size * world_size(exp)


def check_data_parallel(exp: Experiment, parser: _Parser) -> None:
    """What a run of several processes cannot combine with (each refusal says why)."""
    r = exp.run
    n = f"nproc_per_node = {r.nproc_per_node}" + (f", nnodes = {r.nnodes}" if r.nnodes > 1 else "")
    if r.compile:
        parser.fail(
            "run.compile",
            f"torch.compile is not combined with data-parallel training ({n}) yet; set "
            "compile = false, or nproc_per_node = 1 to compile",
        )
    if r.teacher_cache != "off":
        parser.fail(
            "run.teacher_cache",
            f"the teacher cache is per process and a data-parallel run ({n}) gives each "
            'process other images every epoch; set teacher_cache = "off"',
        )
    if _CUDA_N.fullmatch(r.device):
        parser.fail(
            "run.device",
            f"{r.device!r} names one GPU but this run takes {r.nproc_per_node} ({n}); use "
            'device = "cuda" (the engine picks the GPUs) or "auto"',
        )
    elif r.device in ("mps", "xpu"):
        parser.fail(
            "run.device",
            f"data-parallel training ({n}) runs on CUDA GPUs (NCCL) or CPUs (gloo); use "
            'device = "cuda", "cpu" or "auto"',
        )
    elif r.device == "cpu" and r.sync_bn:
        parser.fail(
            "run.sync_bn",
            "SyncBatchNorm runs on GPUs only (torch refuses CPU tensors); set sync_bn = false "
            "for a CPU run",
        )


def check_local(exp: Experiment, file: str | None = None) -> None:
    """Refuse what the local engine and `kdtui run` cannot place: several nodes."""
    nodes = max([exp.run.nnodes, *exp.sweep.get("run.nnodes", [])])
    if nodes > 1:
        raise ConfigError(
            f"{nodes} nodes: a run across several nodes needs the Slurm backend, which this "
            "kdtui does not have yet; the local engine and `kdtui run` train on one box: set "
            "nnodes = 1 (and nproc_per_node = the GPUs of this box)",
            file=file,
            key="run.nnodes",
        )


def strong_view(exp: Experiment) -> bool:
    """Whether this run's training batches carry the strong view (`[data] strong_view`)."""
    mode = exp.data.strong_view
    return mode == "on" or (mode == "auto" and exp.method.strong_view)


def grid(sweep: dict) -> list[dict]:
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def _copy_point(exp: Experiment) -> Experiment:
    """A deep copy without the sweep, field by field: 10,000 sweep points are checked in
    seconds (copy.deepcopy of the whole experiment took 4x as long)."""
    out = copy.copy(exp)
    out.sweep, out.seeds = {}, list(exp.seeds)
    for sec in SECTIONS:
        obj = copy.copy(getattr(exp, sec))
        for key, value in vars(obj).items():
            if isinstance(value, (list, dict)):
                setattr(obj, key, copy.deepcopy(value))
        setattr(out, sec, obj)
    return out


def apply_point(exp: Experiment, point: dict, parser: _Parser | None = None) -> Experiment:
    """A copy of exp with the sweep point's values set (validated).

    With a parser the problems are collected in it; without one they are raised."""
    own = parser is None
    parser = parser or _Parser(None, None)
    out = _copy_point(exp)
    method = point.get("distill.method", exp.distill.method)
    if "distill.method" in point:  # keep only the options of this point's method
        out.distill = DistillConfig(
            method=method,
            options={k: v for k, v in exp.distill.options.items() if k in METHODS[method].options},
        )
    for key, value in point.items():
        sec, _, name = key.partition(".")
        dotted = f"sweep.{key}"
        try:
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
        except ConfigError as e:
            parser.collect(e)
    try:
        check_point(out, parser)
    except ConfigError as e:
        parser.collect(e)
    if own:
        parser.raise_errors()
    return out


# ---------------------------------------------------------------- public API
def parse(
    raw: dict,
    *,
    file: str | None = None,
    text: str | None = None,
    check_files: bool = False,
    resolved: bool = False,
) -> Experiment:
    """`resolved`: a run's stored config (`resolved_toml`), where the defaults are written
    out too, so rules about what a user wrote (milestones inside the run) do not apply."""
    return _Parser(file, text, check_files=check_files, resolved=resolved).experiment(raw)


def _toml(text: str, file: str | None) -> dict:
    """tomllib.loads with every failure as a ConfigError (bad syntax, a 5,000-digit integer,
    arrays nested past Python's recursion limit)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(
            f"not valid TOML: {e}", file=file, line=int(m.group(1)) if m else None
        ) from None
    except RecursionError:
        raise ConfigError(_TOO_DEEP, file=file) from None
    except ValueError:  # int("9" * 5000): over Python's digit limit
        raise ConfigError(
            "an integer literal of thousands of digits; no setting takes one", file=file
        ) from None


def loads(
    text: str, *, file: str | None = None, check_files: bool = False, resolved: bool = False
) -> Experiment:
    return parse(
        _toml(text, file), file=file, text=text, check_files=check_files, resolved=resolved
    )


def read_text(path: Path) -> str:
    """An experiment file's text: a regular UTF-8 file of at most FILE_MAX_BYTES (so neither
    /dev/zero nor a FIFO can hang a command, and a Latin-1 file gets a clear error)."""
    file = str(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError("is a folder; give an experiment .toml file", file=file)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("is not a regular file (a device, pipe or socket)", file=file)
        with open(path, "rb") as f:
            data = f.read(FILE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=file) from None
    if len(data) > FILE_MAX_BYTES:
        raise ConfigError(
            f"is larger than {FILE_MAX_BYTES // 1024} KiB; an experiment file is a few KB",
            file=file,
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} at column {column}{hint}; "
            "save the file as UTF-8",
            file=file,
            line=line,
        ) from None


def load(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """An experiment file, checked like `kdtui validate` checks it (checkpoint files too)."""
    path = Path(path)
    text = read_text(path)
    raw = _toml(text, str(path))
    if not overrides:
        return parse(raw, file=str(path), text=text, check_files=True)
    raw = _with_overrides(raw, overrides, str(path))
    try:
        return parse(raw, file=str(path), text=text, check_files=True)
    except ConfigError as e:
        given = {parse_override(o)[0]: o for o in overrides}
        errors = []
        for one in e.errors:
            item = given.get(one.key or "") or given.get(f"sweep.{one.key}")
            if item is not None:
                one = ConfigError(one.reason, file=_set_label(path, item), key=one.key)
            errors.append(one)
        raise ConfigError.several(errors, e.truncated) from None


def _set_label(path: str | Path, item: str) -> str:
    return f"{path} (--set {shorten(item, 60)})".lstrip()


def _with_overrides(raw: dict, overrides: list[str], file: str = "") -> dict:
    for item in overrides:
        key, value = parse_override(item, file)
        try:
            if key.startswith("sweep."):
                set_sweep(raw, key.removeprefix("sweep."), value)
            else:
                set_key(raw, key, value)
                drop_sweep(raw, key)  # an override of a swept key replaces the sweep
        except ConfigError as e:
            raise ConfigError(e.reason, file=_set_label(file, item), key=key) from None
    return raw


# ---------------------------------------------------------------- raw tables
# A raw table is what a TOML reader gives: a dict, or a tomlkit document that keeps a
# file's comments. `--set` and the composer edit experiments only through these, so a
# dotted key and a sweep over it mean the same in both.
def get_key(raw: Mapping, dotted: str) -> Any:
    """The value at a dotted key ("optim.lr"); MISSING when the file does not set it."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def get_sweep(raw: Mapping, dotted: str) -> Any:
    """The values [sweep] gives a key (`"optim.lr" = [...]` or `[sweep.optim] lr = [...]`)."""
    sweep = raw.get("sweep")
    if not isinstance(sweep, Mapping):
        return MISSING
    return sweep[dotted] if dotted in sweep else get_key(sweep, dotted)


def set_key(
    raw: MutableMapping, dotted: str, value: Any, *, new_table: Callable[[], Any] = dict
) -> None:
    """Set a dotted key, making the tables on the way; MISSING removes it (and the tables
    that removal empties)."""
    *path, key = dotted.split(".")
    node, trail = raw, []
    for part in path:
        if part not in node:
            if value is MISSING:
                return
            node[part] = new_table()
        elif not isinstance(node[part], MutableMapping):
            if value is MISSING:
                return
            raise ConfigError(f"cannot set it: {part} is not a table", key=dotted)
        trail.append((node, part))
        node = node[part]
    if value is not MISSING:
        node[key] = value
        return
    if key in node:
        del node[key]
    for parent, part in reversed(trail):
        if parent[part]:
            break
        del parent[part]


def drop_sweep(raw: MutableMapping, dotted: str) -> None:
    """Remove a key's sweep (in either spelling), and [sweep] when that empties it."""
    sweep = raw.get("sweep")
    if not isinstance(sweep, MutableMapping):
        return
    if dotted in sweep:
        del sweep[dotted]
    set_key(sweep, dotted, MISSING)
    if not sweep:
        del raw["sweep"]


def set_sweep(
    raw: MutableMapping, dotted: str, values: Any, *, new_table: Callable[[], Any] = dict
) -> None:
    """Sweep a key over values: where [sweep] already has it, else as `"section.key"`."""
    if "sweep" not in raw:
        raw["sweep"] = new_table()
    sweep = raw["sweep"]
    if not isinstance(sweep, MutableMapping):
        raise ConfigError("cannot set it: sweep is not a table", key="sweep")
    if dotted not in sweep and get_key(sweep, dotted) is not MISSING:
        set_key(sweep, dotted, values)
    else:
        sweep[dotted] = values


def parse_override(item: str, file: str = "") -> tuple[str, Any]:
    """`optim.lr=0.01` -> ("optim.lr", 0.01); values are TOML, bare words are strings."""
    if "=" not in item:
        raise ConfigError(f"expected KEY=VALUE, got {_show(item)}", file=_set_label(file, item))
    key, _, value = item.partition("=")
    key, value = key.strip(), value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
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
    parser.raise_errors()
    if any(cfg.teacher.train and cfg.method.needs_teacher for _, cfg in configs):
        plans.append(RunPlan(teacher_experiment(exp), exp.seeds[0], {}, role="teacher"))
    for point, cfg in configs:
        for seed in exp.seeds:
            one = _copy_point(cfg)
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
