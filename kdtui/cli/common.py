"""What every command shares: consoles, the --home/--set options, error exits, config loading."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from engine.core import reading, schema
from engine.core.store import Store
from engine.daemon import client as engine
from kdtui.inert import InertConsole, text

# every string printed is text: style with kdtui.inert.text(...), never with [markup]
console = InertConsole()
err = InertConsole(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="KDTUI_HOME",
        help="Store directory (default: ./.kdtui).",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: --set optim.epochs=2 (repeatable)."),
]
ExperimentOpt = Annotated[
    str | None, typer.Option("--experiment", "-e", help="Only this experiment.")
]

JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print a versioned JSON document instead (fields: README, Machine-readable)."
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear error line; the caller raises the returned Exit."""
    err.print(text(("error:", "bold red"), " ", message), soft_wrap=True)  # one line, for grep
    return typer.Exit(code)


def config_errors(e: schema.ConfigError) -> None:
    """Every error of a bad file, one line each (file:line: key: message)."""
    for one in e.errors:
        err.print(text(("error:", "bold red"), " ", str(one)), soft_wrap=True)
    if e.truncated:
        err.print(f"(stopped after {len(e.errors)} errors)")


def load_config(file: Path, overrides: list[str] | None) -> schema.Experiment:
    try:
        return reading.load(file, overrides or [])
    except schema.ConfigError as e:
        config_errors(e)
        raise typer.Exit(2) from None


def confirm_size(exp: schema.Experiment, yes: bool) -> None:
    """More than RUNS_CONFIRM runs are queued only with --yes (a typo in a sweep can ask
    for thousands)."""
    n = schema.run_count(exp)
    if n > schema.RUNS_CONFIRM and not yes:
        raise fail(
            f"{exp.name} expands to {n:,} runs (more than {schema.RUNS_CONFIRM:,}); "
            "check the sweep, then add --yes to queue them all"
        )


YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help=f"Queue more than {schema.RUNS_CONFIRM:,} runs without refusing."
    ),
]

NoStartOpt = Annotated[
    bool,
    typer.Option("--no-start", help="Only queue; do not start the engine if none runs."),
]


def start_engine(store: Store, out: Console) -> bool:
    """Make sure an engine trains what was just queued; False (with the reason) if it can't."""
    try:
        was = engine.status(store.home)
        pid = engine.ensure_running(store.home)
    except (engine.EngineError, ValueError, OSError) as e:
        err.print(text(("the engine did not start:", "bold red"), " ", str(e)))
        err.print("the runs stay queued; `kdtui engine start` to try again")
        return False
    out.print(f"engine {'running' if was else 'started'}: pid {pid} (`kdtui engine status`)")
    return True
