"""`kdtui validate`, `run` and `submit`: an experiment file checked, trained here, or queued."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from engine.core import display, planning, reading, schema
from engine.core.store import Run, Store, StoreError
from kdtui.cli.common import (
    HomeOpt,
    NoStartOpt,
    SetOpt,
    YesOpt,
    config_errors,
    confirm_size,
    console,
    fail,
    load_config,
    start_engine,
)
from kdtui.cli.render import plan_table
from kdtui.inert import text


def validate(
    files: Annotated[list[Path], typer.Argument(help="Experiment TOML files.")], set_: SetOpt = None
) -> None:
    """Check experiment files; print every error with file, line and key."""
    bad = 0
    for f in files:
        try:
            exp = reading.load(f, set_ or [])
            n = len(planning.expand(exp))
        except schema.ConfigError as e:
            config_errors(e)
            bad += 1
            continue
        many = (
            f" (over {schema.RUNS_CONFIRM:,}: run and submit need --yes)"
            if schema.run_count(exp) > schema.RUNS_CONFIRM
            else ""
        )
        console.print(text(("ok", "green"), f" {f}: {exp.name}, {n:,} run{'s' * (n != 1)}{many}"))
    if bad:
        raise typer.Exit(2)


def run(
    file: Annotated[Path | None, typer.Argument(help="Experiment TOML file.")] = None,
    set_: SetOpt = None,
    resume: Annotated[
        int | None,
        typer.Option(
            "--resume", help="Continue a failed or cancelled run from its last checkpoint."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the runs; train nothing.")
    ] = False,
    detach: Annotated[
        bool,
        typer.Option("--detach", help="Queue on the background engine instead (= kdtui submit)."),
    ] = False,
    yes: YesOpt = False,
    home: HomeOpt = None,
) -> None:
    """Train an experiment in the foreground with a progress bar; results go to the store."""
    from kdtui.cli.foreground import train_experiment, train_resumed

    if resume is not None:
        store = Store(home)
        try:
            ok = train_resumed(store, resume, console)
        except StoreError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt as e:  # ctrl+c, SIGTERM, SIGHUP: the runs are closed already
            raise typer.Exit(getattr(e, "exit_code", 130)) from None
        raise typer.Exit(0 if ok else 1)
    if file is None:
        raise fail("give an experiment file (or --resume RUN_ID)")
    exp = load_config(file, set_)  # a bad file stores nothing: the store is opened after
    if dry_run:
        console.print(plan_table(exp))
        return
    confirm_size(exp, yes)
    store = Store(home)
    if detach:
        submit_experiment(store, exp, str(file), console)
        return
    try:
        ok = train_experiment(store, exp, str(file), console)
    except StoreError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt as e:  # ctrl+c, SIGTERM, SIGHUP: the runs are closed already
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    raise typer.Exit(0 if ok else 1)


def submit_experiment(
    store: Store, exp: schema.Experiment, source: str, console: Console, *, start: bool = True
) -> list[Run]:
    """Queue an experiment's runs and make sure the engine picks them up; returns at once.

    Queueing is the last step that can fail: after it, only inert text is printed."""
    try:
        runs = store.submit(exp, source=source)
    except StoreError as e:
        raise fail(str(e)) from None
    ids = ", ".join(str(r.id) for r in runs[:50]) + (", …" if len(runs) > 50 else "")
    n = len(runs)
    console.print(text((exp.name, "bold"), f": queued {n} run{'s' * (n != 1)} ({ids})"))
    for r in runs[:20]:
        wait = (f"  (after run {r.depends_on})", "dim") if r.depends_on else ""
        console.print(text(f"  {display.title(r)}", wait))
    if len(runs) > 20:
        console.print(f"  … and {len(runs) - 20} more")
    if start and not start_engine(store, console):
        raise typer.Exit(1)
    console.print(f"follow one with `kdtui logs {runs[-1].id} -f`; all with `kdtui ls`")
    return runs


def submit(
    file: Annotated[Path, typer.Argument(help="Experiment TOML file.", show_default=False)],
    set_: SetOpt = None,
    priority: Annotated[
        int | None,
        typer.Option("--priority", help="Queue priority (higher first); default [run] priority."),
    ] = None,
    no_start: NoStartOpt = False,
    yes: YesOpt = False,
    home: HomeOpt = None,
) -> None:
    """Validate an experiment, queue its runs for the engine and return at once."""
    exp = load_config(file, set_)
    if priority is not None:
        if not -1_000_000 <= priority <= 1_000_000:
            raise fail(f"--priority {priority} is outside -1,000,000..1,000,000")
        exp.run.priority = priority
    confirm_size(exp, yes)
    submit_experiment(Store(home), exp, str(file), console, start=not no_start)
