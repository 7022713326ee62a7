"""`kdtui cache ls | clear`: the on-disk teacher-logit caches of a store.

Torch-free: it reads each cache's files through engine.core.cachefiles. A disk
cache is fixed in size when created (`[run] teacher_cache_mb`) and lives
until cleared. Clearing one that a worker still has open is safe: the worker
keeps its memory map, and the next run starts a fresh cache.
"""

from __future__ import annotations

import shutil
from typing import Annotated

import typer
from rich.table import Table

from engine.core import cachefiles
from engine.core.store import Store
from kdtui.cli.common import HomeOpt, console, fail
from kdtui.inert import text

cache_app = typer.Typer(
    help='The on-disk teacher-logit caches (`[run] teacher_cache = "disk"`).',
    no_args_is_help=True,
)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@cache_app.command("ls")
def ls(home: HomeOpt = None) -> None:
    """List the caches: teacher key, data set size, precision, fill and disk use."""
    store = Store(home)
    found = cachefiles.caches(store.home)
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
        t.add_row(
            text(c["name"]),
            f"{c['num_samples']:,}",
            str(c["num_classes"]),
            cachefiles.DTYPE_NAMES.get(c["dtype"], c["dtype"]),
            f"{c['rows']:,} / {c['capacity']:,}",
            f"{100 * c['rows'] / c['views']:.1f}%",
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
    found = cachefiles.caches(store.home)
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
