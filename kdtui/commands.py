"""Engine commands (submit, engine, cancel, resume, logs, rm): filled in by the engine work."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
