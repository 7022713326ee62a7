"""`kdtui engine start | stop | status`: the background engine of a store.

`engine start`'s options are made from their one declaration (engine.daemon.options).
"""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from engine.core import display, layout
from engine.core.store import Store
from engine.daemon import backends
from engine.daemon import client as engine
from engine.daemon import options as engine_options
from kdtui.cli.common import HomeOpt, console, fail
from kdtui.inert import text

engine_app = typer.Typer(
    help="The background engine that trains queued runs on every GPU (or CPU slot).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def with_engine_options(command):
    """`command(foreground, home, options)` as a Typer command with one option per engine
    option, made from their one declaration (engine.daemon.options)."""
    params = []
    for spec in engine_options.specs():
        extra: dict = {"min": spec.min} if spec.min is not None else {}
        if spec.multiple:
            extra["metavar"] = "KEY=VALUE"
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
            f"up {display.duration(running.get('uptime'))}); `kdtui engine stop` first",
            1,
        )
    try:
        backend = backends.create(options, store.home)
        backend.preflight()
    except ValueError as e:
        raise fail(str(e)) from None
    slots = backend.slots
    engine_options.save(store.home, options)
    if foreground:
        raise typer.Exit(engine.serve_in_terminal(store.home, options))
    try:
        pid = engine.start(store.home, options=options)
    except engine.EngineError as e:  # EngineRunning too
        raise fail(str(e), 1) from None
    if options.backend == "slurm":
        where = "runs go to Slurm, one job per run or fused group"
    else:
        where = f"{len(slots)} slot{'s' * (len(slots) != 1)} ({', '.join(s.name for s in slots)})"
    console.print(f"engine started: pid {pid}, {where}; log: {store.home / layout.ENGINE_LOG}")


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
        f"engine pid {st['pid']}, up {display.duration(st.get('uptime'))}, store {store.home}, "
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
                str(slot.get("job") or slot["worker"]) if i == 0 else "",
                display.title(r),
                display.progress(r),
                display.duration(r.eta_s) if r.status == "running" else r.status,
            )
    console.print(t)
    waiting = sum(1 for r in queued if r.depends_on)
    if queued:
        extra = f" ({waiting} after a teacher run)" if waiting else ""
        console.print(f"{len(queued)} queued{extra}")
