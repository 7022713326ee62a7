"""Experiment TOML out: an Experiment as the file a user reads, or as a run stores it.

New files and stored configs are written with tomli-w; editing a user's file in place
(comments kept) is the composer's form model, on tomlkit. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import tomli_w

from engine.core.schema import SECTIONS, Experiment, with_defaults


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


def compact(text: str) -> str:
    """tomli-w writes one array item per line; arrays of scalars read better inline."""
    return _ARRAY_RE.sub(
        lambda m: (
            "[" + ", ".join(item.strip().rstrip(",") for item in m.group(1).splitlines()) + "]"
        ),
        text,
    )


def dumps(exp: Experiment, *, full: bool = False, header: str | None = None) -> str:
    text = compact(tomli_w.dumps(to_dict(exp, full=full)))
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


def resolved_toml(exp: Experiment) -> str:
    """The full, default-filled config of one run, as stored with it."""
    return compact(tomli_w.dumps(to_dict(exp, full=True)))


def toml_value(value) -> str:
    """A default as it is written in [distill]: true, 0.5, "l2", [4.0, 3.0]."""
    return compact(tomli_w.dumps({"v": value})).partition("=")[2].strip()
