"""The `g` key of the runs and compare views: the figure `kdtui plot` draws, for the
selection, written where the user says (proposed: exports/figure-<time>.pdf)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textual.screen import Screen

from engine.core.store import StoreError
from kdtui import figure
from kdtui.widgets.cells import short_path

HINT = "pdf, png or svg (the suffix picks the format) · enter writes · esc cancels"


def ask_and_write(screen: Screen, run_ids: Sequence[int]) -> None:
    """Ask for the path, then draw in a thread (matplotlib loads there) and toast the path."""
    from kdtui.screens.dialogs import PathScreen

    app = screen.app
    ids = sorted(set(run_ids))
    if not ids:
        app.notify("select a run, or mark runs with space, to draw them", severity="warning")
        return

    def chosen(path: Path | None) -> None:
        if path is None:
            return
        try:
            figure.format_of(path)
        except figure.FigureError as e:
            app.notify(str(e), severity="error")
            return
        app.run_worker(  # on the app: leaving the screen does not drop the figure
            lambda: _write(app, ids, path), thread=True, group="figure", exit_on_error=False
        )

    panels = " and ".join(figure.DEFAULT_METRICS)
    title = f"figure of {len(ids)} run{'s' * (len(ids) != 1)} ({panels}): write to"
    app.push_screen(PathScreen(title, figure.default_path(app.root), app.root, hint=HINT), chosen)


def _write(app, ids: list[int], path: Path) -> None:
    try:
        done = figure.write(
            app.store, [str(i) for i in ids], figure.DEFAULT_METRICS, path, skip_missing=True
        )
    except (figure.FigureError, StoreError) as e:
        app.call_from_thread(app.notify, f"no figure: {e}", severity="error")
        return
    except OSError as e:
        app.call_from_thread(
            app.notify, f"cannot write {short_path(path)}: {e.strerror or e}", severity="error"
        )
        return
    app.call_from_thread(
        app.notify, done.summary(), title=f"figure written to {short_path(path)}", timeout=8
    )
