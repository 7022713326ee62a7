"""`kdtui ls`, `cancel`, `resume`, `logs`, `rm`: the runs of a store."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer
from rich.table import Table

from engine.core import annotations, display, layout, liveness, removal, runlog
from engine.core import checkpoint as ckptmod
from engine.core import leaderboard as lb
from engine.core.inert import printable
from engine.core.points import short_point
from engine.core.store import STATUSES, Run, Store, StoreError
from kdtui.cli.common import (
    ExperimentOpt,
    HomeOpt,
    JsonOpt,
    NoStartOpt,
    console,
    err,
    fail,
    start_engine,
)
from kdtui.cli.render import LS_DROP_ORDER, add_text_row, fit_columns, progress_text
from kdtui.inert import text

RefsArg = Annotated[
    list[str], typer.Argument(help="Run ids or experiment names.", show_default=False)
]


def _find(store: Store, refs: list[str]) -> list[Run]:
    runs: dict[int, Run] = {}
    for ref in refs:
        try:
            for r in store.find(ref):
                runs[r.id] = r
        except StoreError as e:
            raise fail(str(e)) from None
    return [runs[i] for i in sorted(runs)]


def list_runs(
    status: Annotated[
        str | None, typer.Option(help=f"Only runs in this status ({', '.join(STATUSES)}).")
    ] = None,
    experiment: ExperimentOpt = None,
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="Only runs with this tag (`kdtui tag`).")
    ] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """List runs with status and progress."""
    store = Store(home)
    runs = store.runs(status=status, experiment=experiment)
    if tag is not None:
        wanted = tag.strip().lower()
        runs = [r for r in runs if wanted in r.tag_list]
    if as_json:
        from engine.core import records

        sys.stdout.write(records.dumps(records.runs_document(runs, str(store.home))))
        return
    jobs = any(r.job_id for r in runs)  # a Slurm engine's runs: their job, node and state
    head = [
        "id",
        "status",
        "experiment",
        "point",
        "method",
        "teacher→student",
        "progress",
        "best top-1",
        "head",
        "img/s",
        "eff. batch",
        "device",
        "fingerprint",
        "tags · note",
        *(["slurm job"] if jobs else []),
    ]
    body, statuses, dead = [], [], []
    for r in runs:
        shown = liveness.shown_status(r)
        if shown == liveness.DEAD:
            dead.append(r.id)
        statuses.append(shown)
        body.append(
            [
                str(r.id),
                shown,
                printable(r.experiment),
                printable(short_point(r.label)),
                printable(r.method),
                printable(r.pair),
                progress_text(r),
                f"{r.best_top1:.2f}" if r.best_top1 is not None else "–",
                r.head,
                f"{r.images_per_s:.0f}" if r.images_per_s else "–",
                lb.fmt_batch(r.effective_batch, r.world_size),
                r.device or "–",
                (r.fingerprint or "–")[: lb.FP_SHOWN],
                printable(annotations.summary(r.note, r.tag_list, limit=60)),
                *([liveness.job_text(r) or "–"] if jobs else []),
            ]
        )
    # as `kdtui leaderboard` does: columns that do not fit go (named below), cells fold
    keep = fit_columns(head, body, console.width, drop=LS_DROP_ORDER)
    hidden = [head[i] for i in range(len(head)) if i not in keep]
    t = Table(
        caption=f"too narrow to show: {', '.join(hidden)} (widen it or use --json)"
        if hidden
        else None,
        caption_justify="left",
    )
    for i in keep:
        t.add_column(head[i], no_wrap=head[i] in ("id", "status"), overflow="fold")
    for cells, shown in zip(body, statuses):
        row = [text(c) for c in cells]
        row[1] = text(shown, style=display.STATUS_STYLE.get(shown, ""))
        add_text_row(t, *(row[i] for i in keep))
    if not runs:
        console.print(f"no runs in {store.home}")
        return
    console.print(t)
    if dead:
        ids = " ".join(map(str, dead))
        console.print(
            f"dead: run {ids} is marked running but its process is gone; "
            f"`kdtui resume {ids}` continues, `kdtui cancel {ids}` ends it",
            highlight=False,
        )


def cancel(refs: RefsArg, home: HomeOpt = None) -> None:
    """Cancel runs: queued ones at once, running ones at their next log step."""
    store = Store(home)
    acted = 0
    for r in _find(store, refs):
        if r.finished:
            if len(refs) == 1 and refs[0].isdigit():
                console.print(f"run {r.id} is already {r.status}")
            continue
        outcome = store.request_cancel(r.id)
        acted += 1
        if outcome == "cancelled" and r.status == "running":
            console.print(f"run {r.id} cancelled (its process was gone)")
        elif outcome == "cancelled":
            console.print(f"run {r.id} cancelled (it was queued)")
        elif outcome == "cancelling" and r.job_id:  # the engine scancels it at its next pass
            console.print(f"run {r.id} cancelling: the engine scancels its Slurm job {r.job_id}")
        elif outcome == "cancelling":
            console.print(f"run {r.id} cancelling: its worker stops at the next log step")
        else:
            console.print(f"run {r.id} is already {outcome}")
    if not acted and not (len(refs) == 1 and refs[0].isdigit()):
        console.print("nothing to cancel: every run named is finished")


def resume(
    refs: RefsArg,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start over from epoch 0 (old checkpoints are kept aside, metrics dropped).",
        ),
    ] = False,
    no_start: NoStartOpt = False,
    home: HomeOpt = None,
) -> None:
    """Re-queue failed, cancelled or dead runs to continue from their last checkpoint."""
    store = Store(home)
    runs = _find(store, refs)
    named = {int(x) for x in refs if x.isdigit()}
    checked = [(r, *ckptmod.resume_check(r, restart)) for r in runs]
    # nothing is queued while one named run cannot resume: each refusal says why and the fix
    refusals = [
        why
        for r, why, _ in checked
        if why and (r.id in named or r.status in ("failed", "cancelled"))
    ]
    if refusals:
        for why in refusals[:-1]:
            fail(why)
        raise fail(refusals[-1])
    done = []
    for r, why, note in checked:
        if why:
            continue
        if note:
            err.print(note, highlight=False)
        store.requeue(r.id, resume=not restart)
        done.append(r.id)
        what = "from scratch" if restart else "from its last checkpoint"
        console.print(f"run {r.id} queued to continue {what}")
    if not done:
        raise fail("no failed or cancelled run among those named", 1)
    if not no_start and not start_engine(store, console):
        raise typer.Exit(1)


def logs(
    run: Annotated[int, typer.Argument(help="Run id.", show_default=False)],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing until the run finishes (exit 1 if not done)."
        ),
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines to show.")] = 20,
    worker: Annotated[
        bool,
        typer.Option("--worker", help="The worker's raw output (warnings, tracebacks) instead."),
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Show the end of a run's log; -f follows it live."""
    store = Store(home)
    try:
        r = store.run(run)
    except StoreError as e:
        raise fail(str(e)) from None
    path = r.path / (layout.WORKER_OUTPUT if worker else layout.LOG)
    shown, pos = runlog.tail(path, lines)
    sys.stdout.writelines(printable(line, keep="\n\t") for line in shown)
    sys.stdout.flush()
    if not follow:
        if not shown:
            err.print(f"run {run} is {r.status}; nothing logged yet ({path})")
        return
    try:
        while True:
            status = store.run(run).status
            chunk = runlog.read_from(path, pos)
            if chunk:
                pos += len(chunk)
                sys.stdout.write(printable(chunk.decode(errors="replace"), keep="\n\t"))
                sys.stdout.flush()
            elif status in ("done", "failed", "cancelled"):
                break  # nothing new after the run had finished: the log is complete
            time.sleep(0.3)
    except KeyboardInterrupt:
        return
    except StoreError as e:
        raise fail(str(e)) from None
    final = store.run(run)
    tail = f": {final.error}" if final.error and final.status != "done" else ""
    err.print(f"run {run} {final.status}{tail}")
    if final.status != "done":
        raise typer.Exit(1)


def rm(
    refs: RefsArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    home: HomeOpt = None,
) -> None:
    """Remove finished runs: their rows, metrics and folders. Asks first."""
    store = Store(home)
    runs = _find(store, refs)
    why = removal.refusal(runs)
    if why:
        raise fail(why)
    for r in runs:
        console.print(f"  {display.title(r)} ({r.status})  {r.dir}")
    if not yes and not typer.confirm(
        f"Remove {len(runs)} run{'s' * (len(runs) != 1)} and their files?", default=False
    ):
        raise typer.Exit(1)
    done = removal.remove(store, runs)
    for run_id, reason in done.kept_runs:
        err.print(text((f"kept run {run_id}:", "red"), " ", reason))
    for run_id, reason in done.kept_folders:
        err.print(text((f"kept the folder of run {run_id}:", "red"), " ", reason))
    removed = len(done.removed)
    console.print(f"removed {removed} run{'s' * (removed != 1)}")
