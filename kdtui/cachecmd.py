"""`kdtui cache ls | clear`: the on-disk teacher-logit caches of a store.

Torch-free: it reads each cache's meta.json and row counter directly. A disk
cache is fixed in size when created (`[run] teacher_cache_mb`) and lives
until cleared. Clearing one that a worker still has open is safe: the worker
keeps its memory map, and the next run starts a fresh cache.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from engine.core.store import Store
from kdtui.inert import text
from kdtui.options import HomeOpt, console, fail

cache_app = typer.Typer(
    help='The on-disk teacher-logit caches (`[run] teacher_cache = "disk"`).',
    no_args_is_help=True,
)
VIEWS = 162  # crop offsets x flips of the CIFAR recipe (engine.data.NUM_VIEWS, without torch)
DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # as in [run]


def caches(home: Path) -> list[dict]:
    """Every cache folder under the store, with what its files say."""
    out = []
    for folder in sorted((home / "cache").glob("teacher-*")):
        info: dict = {"name": folder.name.removeprefix("teacher-"), "path": folder}
        try:
            info.update(json.loads((folder / "meta.json").read_text()))
        except (OSError, ValueError):
            info["broken"] = True
        try:
            info["rows"] = struct.unpack("<q", (folder / "count.i64").read_bytes()[:8])[0]
        except (OSError, struct.error):
            info["rows"] = 0
        info["bytes"] = sum(f.stat().st_blocks * 512 for f in folder.iterdir() if f.is_file())
        out.append(info)
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@cache_app.command("ls")
def ls(home: HomeOpt = None) -> None:
    """List the caches: teacher key, data set size, precision, fill and disk use."""
    store = Store(home)
    found = caches(store.home)
    if not found:
        console.print(f"no teacher caches in {store.home / 'cache'}")
        return
    t = Table(title=f"teacher caches in {store.home / 'cache'}", title_justify="left")
    for col in ("cache", "samples", "classes", "dtype", "rows", "fill", "on disk"):
        t.add_column(col, justify="left" if col in ("cache", "dtype") else "right")
    for c in found:
        if c.get("broken"):
            t.add_row(text(c["name"]), "–", "–", "–", "–", "–", _mib(c["bytes"]))
            continue
        views = c["num_samples"] * VIEWS
        t.add_row(
            text(c["name"]),
            f"{c['num_samples']:,}",
            str(c["num_classes"]),
            DTYPE_NAMES.get(c["dtype"], c["dtype"]),
            f"{c['rows']:,} / {c['capacity']:,}",
            f"{100 * c['rows'] / views:.1f}%",
            _mib(c["bytes"]),
        )
    console.print(t)


@cache_app.command("clear")
def clear(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Caches to remove (a prefix of the name is enough); none: all."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    home: HomeOpt = None,
) -> None:
    """Remove teacher caches and their files. Asks first."""
    store = Store(home)
    found = caches(store.home)
    if names:
        unknown = [n for n in names if not any(c["name"].startswith(n) for c in found)]
        if unknown:
            known = ", ".join(c["name"] for c in found) or "none"
            raise fail(f"no teacher cache named {', '.join(unknown)}; there are: {known}")
        found = [c for c in found if any(c["name"].startswith(n) for n in names)]
    if not found:
        console.print(f"no teacher caches in {store.home / 'cache'}")
        return
    total = sum(c["bytes"] for c in found)
    for c in found:
        console.print(text(f"  {c['name']}  {_mib(c['bytes'])}  {c['path']}"))
    if not yes and not typer.confirm(
        f"Remove {len(found)} cache{'s' * (len(found) != 1)} ({_mib(total)})?", default=False
    ):
        raise typer.Exit(1)
    for c in found:
        shutil.rmtree(c["path"], ignore_errors=True)
    console.print(f"removed {len(found)} cache{'s' * (len(found) != 1)}, freed {_mib(total)}")
