"""`kdtui leaderboard` and `kdtui export`: ranked results, in the terminal or as a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from engine.core import export as exportmod
from engine.core import leaderboard as lb
from engine.core.store import Store, StoreError
from kdtui.cli.common import ExperimentOpt, HomeOpt, JsonOpt, console, err, fail
from kdtui.cli.render import leaderboard_table, members_table


def pinned_baseline(store: Store, ref: str) -> lb.Baseline:
    """`--baseline RUN|EXPERIMENT`: the leaderboard row holding that run, or the experiment's
    one vanilla row (else its one row); its done seeds' mean is the baseline."""
    try:
        named = store.find(ref)
    except StoreError as e:
        raise fail(f"--baseline {ref}: {e}") from None
    rows = lb.build_rows(store.runs())
    ids = {r.id for r in named}
    mine = [row for row in rows if set(row.run_ids) & ids]
    if len(mine) > 1:
        vanilla = [row for row in mine if row.method == "vanilla" and row.role == "student"]
        mine = vanilla if len(vanilla) == 1 else mine
    if len(mine) != 1:
        listed = "; ".join(f"{row.name} (runs {row.run_ids[0]}…)" for row in mine)
        raise fail(
            f"--baseline {ref}: experiment {ref!r} has {len(mine)} leaderboard rows ({listed}); "
            "give a run id of the one to use"
        )
    pin = lb.pin_of(mine[0])
    if pin is None:
        raise fail(f"--baseline {ref}: {mine[0].name} has no done run yet")
    return pin


def leaderboard_rows(
    store: Store, experiment: str | None, status: str | None, baseline: str | None = None
):
    runs = store.runs(experiment=experiment)
    pin = pinned_baseline(store, baseline) if baseline else None
    # baselines and teachers may come from other experiments: rows are built from every run
    rows = lb.build_rows(store.runs(), pin=pin)
    if pin is not None and not any(row.baseline_label.startswith("pinned") for row in rows):
        err.print(
            f"note: --baseline {baseline} ({pin.label}) trained {pin.student} on {pin.dataset}; "
            "no distilled row has that student and data set, so it is the baseline of none",
            highlight=False,
        )
    keep = {r.id for r in runs} if experiment else None
    if keep is not None:
        rows = [row for row in rows if set(row.run_ids) & keep]
    if status:
        rows = [row for row in rows if status in row.statuses]
    return rows


BaselineOpt = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        metavar="RUN|EXPERIMENT",
        help="Measure gap closed against this run's row (or the experiment's vanilla row) "
        "for rows of its student and data set, instead of the matching vanilla runs.",
    ),
]

RunsOpt = Annotated[
    bool, typer.Option("--runs", help="Also list every row's member runs (seed, status, note).")
]


def leaderboard(
    experiment: ExperimentOpt = None,
    status: Annotated[str | None, typer.Option(help="Only rows with a run in this status.")] = None,
    baseline: BaselineOpt = None,
    runs: RunsOpt = False,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Rank experiments by best top-1: runs with equal config fingerprints form a row, one run
    per seed as mean ± std (done runs only); gap closed against a matching vanilla baseline."""
    store = Store(home)
    rows = leaderboard_rows(store, experiment, status, baseline)
    if as_json:  # every row with its member runs, so --runs adds nothing here
        from engine.core import records

        sys.stdout.write(records.dumps(records.leaderboard_document(rows, str(store.home))))
        return
    if not rows:
        console.print("no runs yet")
        return
    console.print(leaderboard_table(rows))
    if runs:
        console.print(members_table(rows))


def export(
    format: Annotated[
        str, typer.Option("--format", "-f", help="md, csv, latex or tensorboard (-o DIR).")
    ] = "md",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    experiment: ExperimentOpt = None,
    baseline: BaselineOpt = None,
    runs: Annotated[
        bool,
        typer.Option(
            "--runs",
            help="List member runs too (Markdown, LaTeX: a second table; CSV: one line per run).",
        ),
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Export the leaderboard as Markdown, CSV or LaTeX; or every run's curves and config as
    TensorBoard event files (`-o DIR`, one folder per run)."""
    if format == "tensorboard":
        from kdtui.cli.tensorboard import export_tensorboard

        export_tensorboard(Store(home), output, experiment, baseline=baseline, runs=runs)
        return
    if format not in exportmod.FORMATS:
        known = ", ".join([*exportmod.FORMATS, "tensorboard"])
        raise fail(f"unknown format {format!r}; use one of {known}")
    rows = leaderboard_rows(Store(home), experiment, None, baseline)
    text = exportmod.export(rows, format, runs=runs)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        err.print(f"wrote {len(rows)} rows to {output}")
    else:
        sys.stdout.write(text)
