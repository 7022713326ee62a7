"""`kdtui store rebuild` and `kdtui import`: the database from run folders.

Run folders are the source of truth (engine.core.runfolder); the database is an
index of them, so it can be recreated from them (rebuild) and runs trained
elsewhere can join it (import: copied into runs/ under new ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.core import layout
from engine.core import store as storemod
from engine.core.store import Store
from engine.daemon.lock import EngineError, lock_holder
from kdtui.cli.common import HomeOpt, console, err, fail
from kdtui.inert import text

store_app = typer.Typer(
    help="The store's database: recreate it from the run folders.", no_args_is_help=True
)


@store_app.command("rebuild")
def rebuild(home: HomeOpt = None) -> None:
    """Recreate the database from the run folders (every run, status, metric and event).

    An existing database is kept beside it as kdtui.db.before-rebuild-STAMP. Refused
    while an engine runs on the store (`kdtui engine stop` first)."""
    where = layout.home_path(home)
    try:
        pid = lock_holder(where)
    except EngineError as e:
        raise fail(str(e)) from None
    if pid is not None:
        raise fail(f"an engine (pid {pid}) runs on {where}; `kdtui engine stop` first")
    out = storemod.rebuild(where)
    if out.old_db is not None:
        console.print(text("the old database is kept as ", (str(out.old_db), "bold")))
    for name, why in out.skipped:
        err.print(text(("skipped", "yellow"), f" {name}: {why}"), soft_wrap=True)
    console.print(
        text(
            ("rebuilt", "green"),
            f" {where / layout.DB}: {out.runs} run{'s' * (out.runs != 1)}, "
            f"{out.metrics:,} metrics from {where / layout.RUNS}",
        )
    )


def import_runs(
    folders: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders, or folders holding them (another store's runs/ or the store).",
            show_default=False,
        ),
    ],
    home: HomeOpt = None,
) -> None:
    """Add run folders copied from another machine (new ids; a run already here is refused).

    All folders are checked before anything is copied; one bad folder imports none."""
    store = Store(home)
    try:
        done = store.import_folders(folders)
    except storemod.ImportRefused as e:
        raise fail(f"{e}") from None
    for source, run in done:
        console.print(
            text(
                (f"run {run.id}", "bold"),
                f" {run.status} {run.experiment} {run.pair} ← {source}",
            ),
            soft_wrap=True,
        )
    console.print(f"imported {len(done)} run{'s' * (len(done) != 1)} into {store.home}")
