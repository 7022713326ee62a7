"""What every command shares: consoles, the --home/--set options, error exits, config loading."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from engine import config as cfgmod

console = Console()
err = Console(stderr=True)

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


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear error line; the caller raises the returned Exit."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def load_config(file: Path, overrides: list[str] | None) -> cfgmod.Experiment:
    try:
        return cfgmod.load(file, overrides or [])
    except cfgmod.ConfigError as e:
        raise fail(str(e)) from None
