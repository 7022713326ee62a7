"""`kdtui export --format tensorboard -o DIR`: the front end of engine.core.tbexport."""

from __future__ import annotations

from pathlib import Path

from engine.core.store import Store
from kdtui.cli.common import err, fail


def export_tensorboard(
    store: Store,
    output: Path | None,
    experiment: str | None,
    *,
    baseline: str | None = None,
    runs: bool = False,
) -> None:
    """Every run (of `experiment`) that logged a metric, one folder each under `output`."""
    if output is None:
        raise fail("--format tensorboard writes a folder of event files: give it with -o DIR")
    if baseline or runs:
        option = "--baseline" if baseline else "--runs"
        raise fail(f"{option} shapes the leaderboard; --format tensorboard exports runs, not rows")
    if output.exists() and not output.is_dir():
        raise fail(f"-o {output}: a file is there; give a folder for the event files")
    from engine.core import tbexport  # imports tensorboard: only for this command

    chosen = store.runs(experiment=experiment)
    if not chosen:
        which = f" of experiment {experiment!r}" if experiment else ""
        raise fail(f"no runs{which} in {store.home}; `kdtui ls` lists them")
    try:
        done = tbexport.export(store, chosen, output)
    except OSError as e:
        raise fail(f"cannot write {e.filename or output}: {e.strerror or e}") from None
    scalars = sum(d.scalars for d in done)
    skipped = len(chosen) - len(done)
    note = f"; {skipped} run{'s' * (skipped != 1)} with no metrics yet left out" if skipped else ""
    err.print(
        f"wrote {len(done)} run{'s' * (len(done) != 1)} ({scalars:,} scalars, configs as "
        f"hparams) to {output}{note}",
        highlight=False,
        soft_wrap=True,
    )
    if done:
        err.print(f"view: tensorboard --logdir {output}", highlight=False, soft_wrap=True)
