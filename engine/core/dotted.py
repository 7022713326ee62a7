"""Dotted keys on raw TOML tables: read, set, sweep, and `--set KEY=VALUE` overrides.

A raw table is what a TOML reader gives: a dict, or a tomlkit document that keeps a
file's comments. `--set` and the composer edit experiments only through these, so a
dotted key and a sweep over it mean the same in both. Torch-free.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import MISSING
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from engine.core.inert import brief, shorten
from engine.core.schema import ConfigError


def grid(sweep: dict) -> list[dict]:
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def set_label(path: str | Path, item: str) -> str:
    return f"{path} (--set {shorten(item, 60)})".lstrip()


def with_overrides(raw: dict, overrides: list[str], file: str = "") -> dict:
    for item in overrides:
        key, value = parse_override(item, file)
        try:
            if key.startswith("sweep."):
                set_sweep(raw, key.removeprefix("sweep."), value)
            else:
                set_key(raw, key, value)
                drop_sweep(raw, key)  # an override of a swept key replaces the sweep
        except ConfigError as e:
            raise ConfigError(e.reason, file=set_label(file, item), key=key) from None
    return raw


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
        raise ConfigError(f"expected KEY=VALUE, got {brief(item)}", file=set_label(file, item))
    key, _, value = item.partition("=")
    key, value = key.strip(), value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        parsed = value
    return key, parsed
