"""Engine commands: submit, engine start|stop|status, cancel, resume, logs, rm.

Torch-free: these talk to the store and start the engine as a process.
Nothing here imports kdtui.cli at module level (cli imports this module
while it is still being built).
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from engine.core import checkpoint as ckptmod
from engine.core import layout, liveness, runlog, schema
from engine.core.inert import printable
from engine.core.store import Run, Store, StoreError
from engine.daemon import client as engine
from engine.daemon import options as engine_options
from engine.daemon.scheduling import slots_for
from kdtui.inert import text
from kdtui.options import HomeOpt, SetOpt, YesOpt, confirm_size, console, err, fail, load_config

RefsArg = Annotated[
    list[str], typer.Argument(help="Run ids or experiment names.", show_default=False)
]
NoStartOpt = Annotated[
    bool,
    typer.Option("--no-start", help="Only queue; do not start the engine if none runs."),
]

engine_app = typer.Typer(
    help="The background engine that trains queued runs on every GPU (or CPU slot).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _find(store: Store, refs: list[str]) -> list[Run]:
    runs: dict[int, Run] = {}
    for ref in refs:
        try:
            for r in store.find(ref):
                runs[r.id] = r
        except StoreError as e:
            raise fail(str(e)) from None
    return [runs[i] for i in sorted(runs)]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _describe(r: Run) -> str:
    who = "teacher" if r.role == "teacher" else r.method
    label = f" {r.label}" if r.label and r.role != "teacher" else ""
    return f"#{r.id} {r.experiment}: {who} {r.pair}{label}"


def _start_engine(store: Store, out: Console) -> bool:
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
        console.print(text(f"  {_describe(r)}", wait))
    if len(runs) > 20:
        console.print(f"  … and {len(runs) - 20} more")
    if start and not _start_engine(store, console):
        raise typer.Exit(1)
    console.print(f"follow one with `kdtui logs {runs[-1].id} -f`; all with `kdtui ls`")
    return runs


# ---------------------------------------------------------------- engine start|stop|status


def with_engine_options(command):
    """`command(foreground, home, options)` as a Typer command with one option per engine
    option, made from their one declaration (engine.daemon.options)."""
    params = []
    for spec in engine_options.specs():
        extra = {"min": spec.min} if spec.min is not None else {}
        option = typer.Option(
            spec.flag,
            help=spec.help,
            hidden=spec.hidden,
            show_default=spec.default is not None and not spec.negated,
            **extra,
        )
        if spec.negated:  # --no-recover: a flag that turns the option off
            name, kind, default = f"no_{spec.name}", bool, False
        else:
            name, kind, default = spec.name, spec.type, spec.default
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[kind, option],
            )
        )
    foreground = Annotated[
        bool, typer.Option("--foreground", help="Run in this terminal (Ctrl-C stops it) instead.")
    ]
    params.append(
        inspect.Parameter(
            "foreground", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=foreground
        )
    )
    params.append(
        inspect.Parameter("home", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=HomeOpt)
    )

    @functools.wraps(command)
    def run(*, foreground: bool = False, home: Path | None = None, **values) -> None:
        options = engine_options.Options(
            **{
                spec.name: not values[f"no_{spec.name}"] if spec.negated else values[spec.name]
                for spec in engine_options.specs()
            }
        )
        command(foreground, home, options)

    del run.__wrapped__  # Typer reads the signature below, not the wrapped function's
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return run


@engine_app.command("start")
@with_engine_options
def engine_start(foreground: bool, home: Path | None, options: engine_options.Options) -> None:
    """Start the engine for this store in the background (one per store).

    The options are remembered: later automatic starts (by submit, resume or
    the app) use them.
    """
    store = Store(home)
    running = engine.status(store.home)
    if running:
        raise fail(
            f"an engine is already running for {store.home} (pid {running['pid']}, "
            f"up {_duration(running.get('uptime'))}); `kdtui engine stop` first",
            1,
        )
    try:
        slots = slots_for(options)
    except ValueError as e:
        raise fail(str(e)) from None
    engine_options.save(store.home, options)
    if foreground:
        raise typer.Exit(engine.serve_in_terminal(store.home, options))
    try:
        pid = engine.start(store.home, options=options)
    except engine.EngineError as e:  # EngineRunning too
        raise fail(str(e), 1) from None
    console.print(
        f"engine started: pid {pid}, {len(slots)} slot{'s' * (len(slots) != 1)} "
        f"({', '.join(s.name for s in slots)}); log: {store.home / layout.ENGINE_LOG}"
    )


@engine_app.command("stop")
def engine_stop(
    runs: Annotated[
        bool,
        typer.Option(
            "--runs",
            help="Also stop running workers; their runs are re-queued and resume from "
            "their last checkpoint on the next start.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.0, help="Seconds before SIGKILL.")
    ] = 10.0,
    home: HomeOpt = None,
) -> None:
    """Stop the engine. Running workers keep training unless --runs; the next start adopts them."""
    store = Store(home)
    state = engine.stop(store.home, timeout, stop_runs=runs)
    if state is None:
        console.print(f"no engine running for {store.home}")
    else:
        console.print(f"engine pid {state['pid']} stopped")
    if runs:
        requeued = (state or {}).get("requeued", [])
        if requeued:
            console.print(f"runs {', '.join(map(str, requeued))} stopped and re-queued (resume)")
    else:
        workers = (state or {}).get("workers", [])
        if workers:
            ids = sorted(i for w in workers for i in w["runs"])
            console.print(
                f"runs {', '.join(map(str, ids))} keep training; the next engine adopts them "
                "(`kdtui engine stop --runs` stops them too)"
            )


@engine_app.command("status")
def engine_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw state as JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """Show the engine's pid, uptime, slots and what runs where."""
    import json

    store = Store(home)
    st = engine.status(store.home)
    if as_json:
        sys.stdout.write(json.dumps(st, indent=1) + "\n")
        return
    queued = store.runs(status="queued")
    if st is None:
        console.print(f"no engine running for {store.home}")
        if queued:
            console.print(f"{len(queued)} queued run(s) wait; `kdtui engine start`")
        return
    console.print(
        f"engine pid {st['pid']}, up {_duration(st.get('uptime'))}, store {store.home}, "
        f"log {store.home / layout.ENGINE_LOG}"
    )
    t = Table(title_justify="left")
    for col in ("slot", "worker", "runs", "progress", "eta"):
        t.add_column(col)
    for slot in st.get("slots", []):
        ids = slot.get("runs") or []
        rows = store.runs(ids=ids) if ids else []
        if not rows:
            t.add_row(slot["name"], "–", text("idle", style="dim"), "", "")
            continue
        for i, r in enumerate(rows):
            t.add_row(
                slot["name"] if i == 0 else "",
                str(slot["worker"]) if i == 0 else "",
                _describe(r),
                f"{r.epoch}/{r.epochs} {100 * r.progress:.0f}%",
                _duration(r.eta_s) if r.status == "running" else r.status,
            )
    console.print(t)
    waiting = sum(1 for r in queued if r.depends_on)
    if queued:
        extra = f" ({waiting} after a teacher run)" if waiting else ""
        console.print(f"{len(queued)} queued{extra}")


# ---------------------------------------------------------------- submit, cancel, resume


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
        elif outcome == "cancelling":
            console.print(f"run {r.id} cancelling: its worker stops at the next log step")
        else:
            console.print(f"run {r.id} is already {outcome}")
    if not acted and not (len(refs) == 1 and refs[0].isdigit()):
        console.print("nothing to cancel: every run named is finished")


def resume_check(r: Run, restart: bool = False) -> tuple[str | None, str | None]:
    """(why it cannot resume, what to tell the user first) for one run; torch-free.

    Failed, cancelled and dead (running, process gone) runs resume. Without
    --restart a run that finished epochs needs a valid checkpoint (last.pth,
    else prev.pth or best.pth, whichever is newest): the worker never starts
    over silently.
    """
    if r.status not in ("failed", "cancelled") and not liveness.process_gone(r):
        return f"run {r.id} is {r.status}; only failed, cancelled or dead runs resume", None
    if restart:
        return None, None
    infos = ckptmod.survey(r.path)
    usable = ckptmod.ranked(infos)
    if not usable:
        if r.epoch == 0 and not any(i.exists for i in infos):
            return None, None  # it never finished an epoch: nothing to lose
        return ckptmod.refusal(r.id, r.path, [i.describe() for i in infos]), None
    last, use = infos[0], usable[0]
    if last.ok:
        return None, None
    at = f" at epoch {use.epoch}" if use.epoch is not None else ""
    why = "is missing" if not last.exists else last.problem
    return None, f"run {r.id}: last.pth {why}; it resumes from {use.path}{at}"


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
    checked = [(r, *resume_check(r, restart)) for r in runs]
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
    if not no_start and not _start_engine(store, console):
        raise typer.Exit(1)


# ---------------------------------------------------------------- logs, rm


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
    busy = [r for r in runs if not r.finished and not liveness.process_gone(r)]
    if busy:
        raise fail(
            f"run {', '.join(str(r.id) for r in busy)} is still {busy[0].status}; "
            "`kdtui cancel` it first"
        )
    for r in runs:
        console.print(f"  {_describe(r)} ({r.status})  {r.dir}")
    if not yes and not typer.confirm(
        f"Remove {len(runs)} run{'s' * (len(runs) != 1)} and their files?", default=False
    ):
        raise typer.Exit(1)
    removed = 0
    for r in runs:
        if not r.finished:  # dead: its process is gone
            store.settle_gone(r, "failed", f"process {r.pid} gone; removed")
        try:
            store.delete(r.id)
        except StoreError as e:
            err.print(text((f"kept run {r.id}:", "red"), " ", str(e)))
            continue
        kept = store.remove_run_dir(r)  # only a real folder inside the real runs/
        if kept:
            err.print(text((f"kept the folder of run {r.id}:", "red"), " ", kept))
        removed += 1
    console.print(f"removed {removed} run{'s' * (removed != 1)}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(engine_app, name="engine")
    app.command()(submit)
    app.command()(cancel)
    app.command()(resume)
    app.command()(logs)
    app.command()(rm)
