"""The `kdtui bench` command: filled in by the speed work."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `bench` to the main app."""
