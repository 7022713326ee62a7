"""Experiment TOML in: a file's text to a validated Experiment, with every error at once.

Torch-free: the app validates as the user types. Every error names the
file, the key and (where it can be found) the line, and suggests the
nearest valid key or lists the valid choices.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import stat
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from engine.core.dotted import grid, parse_override, set_label, with_overrides
from engine.core.inert import brief, printable
from engine.core.registry import ARCHS, METHODS
from engine.core.schema import (
    DEPTH_MAX,
    DEVICE_RE,
    ERRORS_MAX,
    FILE_MAX_BYTES,
    INT_MAX,
    NAME_MAX,
    NAME_RE,
    RUNS_MAX,
    SECTIONS,
    TEXT_MAX,
    TOP_LEVEL,
    ConfigError,
    DistillConfig,
    Experiment,
    OptimConfig,
    TeacherConfig,
    field_meta,
    run_count,
    teacher_experiment,
    type_hints,
    with_defaults,
    world_size,
)

_CUDA_N = re.compile(r"cuda:[0-9]{1,3}")


def _suggest(word: Any, candidates) -> str:
    if not isinstance(word, str) or len(word) > 100:  # difflib is quadratic in the length
        return ""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _choices_text(choices) -> str:
    return ", ".join(repr(c) if not isinstance(c, str) else c for c in choices)


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
            return f"{brief(v)} is too large (at most {INT_MAX:,} in absolute value)"
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
        return f"{brief(value)} is not one of: {_choices_text(choices)}{_suggest(value, map(str, choices))}"
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
        return f"{brief(value)} is not a device: use auto, cpu, cuda, cuda:N or mps"
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
            self.fail(prefix, f"must be a table [{prefix}], got {brief(raw)}")
            return cls()
        hints = type_hints(cls)
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
        fmeta = field_meta(cls)[key]
        try:
            value = _coerce(value, tp)
        except TypeError:
            raise self.error(dotted, f"must be {_type_name(tp)}, got {brief(value)}") from None
        except OverflowError:
            raise self.error(dotted, f"{brief(value)} is too large for a number") from None
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
        hints = type_hints(OptimConfig)
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
                raise self.error(dotted, f"must be {_type_name(tp)}, got {brief(value)}") from None
            except OverflowError:
                raise self.error(dotted, f"{brief(value)} is too large for a number") from None
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
            hints = type_hints(cls)
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
            self.fail("distill", f"must be a table [distill], got {brief(raw)}")
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
                        dotted, f"unknown method {brief(m)}; valid: {', '.join(METHODS)}"
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
    """Refuse what `kdtui run` (training on this box, in the foreground) cannot place: several
    nodes. The engine's local backend refuses them too, with its own fix."""
    nodes = max([exp.run.nnodes, *exp.sweep.get("run.nnodes", [])])
    if nodes > 1:
        raise ConfigError(
            f"{nodes} nodes: a run across several nodes needs the Slurm backend; `kdtui run` "
            "trains on this box: queue it with `kdtui submit` to an engine started on the "
            "cluster's login node with `kdtui engine start --backend slurm`, or set nnodes = 1 "
            "(and nproc_per_node = the GPUs of this box)",
            file=file,
            key="run.nnodes",
        )


def copy_point(exp: Experiment) -> Experiment:
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
    out = copy_point(exp)
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
                tp = type_hints(type(obj))[name]
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


def points(exp: Experiment) -> list[tuple[dict, Experiment]]:
    """Every sweep point of `exp` with its one-point experiment; all problems raised at once."""
    parser = _Parser(None, None)
    out = [(point, apply_point(exp, point, parser)) for point in grid(exp.sweep)]
    parser.raise_errors()
    return out


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
    raw = with_overrides(raw, overrides, str(path))
    try:
        return parse(raw, file=str(path), text=text, check_files=True)
    except ConfigError as e:
        given = {parse_override(o)[0]: o for o in overrides}
        errors = []
        for one in e.errors:
            item = given.get(one.key or "") or given.get(f"sweep.{one.key}")
            if item is not None:
                one = ConfigError(one.reason, file=set_label(path, item), key=one.key)
            errors.append(one)
        raise ConfigError.several(errors, e.truncated) from None
