"""`kdtui plot RUN|EXPERIMENT… --metric NAME -o fig.pdf`: a paper figure of runs' curves.

The command only parses and reports; kdtui.figure draws (and imports matplotlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.core import metrics as M
from engine.core.store import Store, StoreError
from kdtui.cli.common import HomeOpt, err, fail


def plot(
    refs: Annotated[
        list[str],
        typer.Argument(
            help="Run ids or experiment names; seeds of one config become one curve.",
            metavar="RUN|EXPERIMENT",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="fig.pdf, fig.png or fig.svg (the suffix picks the format).",
        ),
    ],
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            metavar="NAME",
            help=f"A metric to plot, one panel each (repeatable; default {M.TEST_TOP1} and "
            f"{M.LOSS}). `kdtui plot RUN -m x -o f.pdf` lists what a run logged.",
        ),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Draw runs' curves for a paper: one panel per metric, seeds of a config as mean ± std,
    labelled as the leaderboard names its rows; epochs from 1, per-step metrics by step."""
    from kdtui import figure

    try:
        done = figure.write(Store(home), refs, metric or [], output)
    except (figure.FigureError, StoreError) as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"cannot write {output}: {e.strerror or e}") from None
    err.print(f"wrote {output}: {done.summary()}", highlight=False, soft_wrap=True)
