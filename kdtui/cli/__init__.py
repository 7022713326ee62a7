"""`kdtui`: the command line. Torch-free at import: training imports torch lazily.

Every command, in the order `kdtui --help` lists them, is registered below; each
module of this package holds the commands of one job:

    experiments  validate, run, submit: an experiment file in
    foreground   `kdtui run`'s training in this process, with a Rich progress bar
    runs         ls, cancel, resume, logs, rm: runs in the store
    notes        note, tag: a researcher's note and tags on runs
    engine       engine start | stop | status
    results      leaderboard, export (tensorboard: the export's event files)
    plot         a paper figure of runs' curves (kdtui.figure draws it)
    catalog      models, methods: what the registries hold
    bench        the speed of the engine and of the app
    cache        the disk teacher-logit caches
    store        store rebuild (the database from the run folders), import (run folders in)
    render       the Rich tables they print; common: consoles, shared options, errors
"""

from __future__ import annotations

import os
import sqlite3

import typer

from engine.core import safefs
from engine.core.layout import default_home
from engine.core.store import StoreError
from kdtui.cli import (
    bench,
    cache,
    catalog,
    engine,
    experiments,
    notes,
    plot,
    results,
    runs,
    store,
)
from kdtui.cli.common import HomeOpt, fail


def _hide_flag_types() -> None:
    """A flag takes no value: its help row shows no type (typer prints `<bool>` for it).

    typer has no setting for this: its option class's rich type column is replaced, every
    flag and --help in one place. A typer without that method keeps its own display (the
    help test says so) and the CLI works the same."""
    try:
        from typer.core import TyperOption
    except ImportError:
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def flag_type(self, ctx) -> str | None:
        return "" if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = flag_type


_hide_flag_types()

app = typer.Typer(
    name="kdtui",
    help="A terminal experiment manager for knowledge distillation. "
    "Run without a command to open the app.",
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def main_callback(ctx: typer.Context, home: HomeOpt = None) -> None:
    """Open the app when no command is given."""
    if ctx.invoked_subcommand is None:
        from kdtui.app import run_app  # Textual only; still torch-free

        run_app(home)


app.command()(experiments.validate)
app.command()(experiments.run)
app.command("ls")(runs.list_runs)
app.command()(results.leaderboard)
app.command()(results.export)
app.command()(catalog.models)
app.command()(catalog.methods)
app.add_typer(engine.engine_app, name="engine")
app.command()(experiments.submit)
app.command()(runs.cancel)
app.command()(runs.resume)
app.command()(runs.logs)
app.command()(runs.rm)
app.command()(notes.note)
app.command()(notes.tag)
app.command()(plot.plot)
app.command()(bench.bench)
app.add_typer(cache.cache_app, name="cache")
app.add_typer(store.store_app, name="store")
app.command("import")(store.import_runs)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except StoreError as e:  # an untrusted store, refused before anything is read or written
        raise SystemExit(fail(str(e)).exit_code) from None
    except (OSError, sqlite3.OperationalError) as e:  # a full disk, wherever it surfaced
        home = default_home()
        frozen = isinstance(e, sqlite3.OperationalError) and safefs.low_on_space(home)
        if not (safefs.is_disk_full(e) or frozen):
            raise
        why = str(e) if isinstance(e, safefs.DiskFull) else f"no space left on device: {home}"
        if frozen:
            why += " (the store can be read but not changed)"
        raise SystemExit(fail(f"{why}; free some space and try again").exit_code) from None
