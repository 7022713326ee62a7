"""`kdtui` command line. Torch-free at import: training imports torch lazily."""

from __future__ import annotations

import difflib
import os
import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from engine import config as cfgmod
from engine import export as exportmod
from engine import liveness, safefs
from engine.store import STATUSES, Store, StoreError, default_home
from kdtui.inert import text
from kdtui.options import (
    ExperimentOpt,
    HomeOpt,
    SetOpt,
    YesOpt,
    config_errors,
    confirm_size,
    console,
    err,
    fail,
    load_config,
)

app = typer.Typer(
    name="kdtui",
    help="A terminal experiment manager for knowledge distillation. "
    "Run without a command to open the app.",
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def open_store(home: Path | None) -> Store:
    return Store(home)


@app.callback(invoke_without_command=True)
def main_callback(ctx: typer.Context, home: HomeOpt = None) -> None:
    """Open the app when no command is given."""
    if ctx.invoked_subcommand is None:
        from kdtui.app import run_app  # Textual only; still torch-free

        run_app(home)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Experiment TOML files.")], set_: SetOpt = None
) -> None:
    """Check experiment files; print every error with file, line and key."""
    bad = 0
    for f in files:
        try:
            exp = cfgmod.load(f, set_ or [])
            n = len(cfgmod.expand(exp))
        except cfgmod.ConfigError as e:
            config_errors(e)
            bad += 1
            continue
        many = (
            f" (over {cfgmod.RUNS_CONFIRM:,}: run and submit need --yes)"
            if cfgmod.run_count(exp) > cfgmod.RUNS_CONFIRM
            else ""
        )
        console.print(text(("ok", "green"), f" {f}: {exp.name}, {n:,} run{'s' * (n != 1)}{many}"))
    if bad:
        raise typer.Exit(2)


def add_text_row(t: Table, *cells: str | Text) -> None:
    """Cells as plain text: a sweep label like "[lr=0.1]" is data, not Rich markup."""
    t.add_row(*(text(c) if isinstance(c, str) else c for c in cells))


def plan_table(exp: cfgmod.Experiment) -> Table:
    t = Table(title=text(f"{exp.name}: runs"), title_justify="left")
    for col in ("#", "role", "method", "teacher→student", "data", "lr", "epochs", "point"):
        t.add_column(col)
    for i, p in enumerate(cfgmod.expand(exp), 1):
        c = p.config
        teacher = c.teacher.arch if c.method.needs_teacher else ""
        pair = f"{teacher}→{c.student.arch}" if teacher else c.student.arch
        add_text_row(
            t,
            str(i),
            p.role,
            c.distill.method,
            pair,
            c.data.dataset,
            f"{c.optim.lr:g}",
            str(c.optim.epochs),
            p.label,
        )
    return t


@app.command()
def run(
    file: Annotated[Path | None, typer.Argument(help="Experiment TOML file.")] = None,
    set_: SetOpt = None,
    resume: Annotated[
        int | None,
        typer.Option(
            "--resume", help="Continue a failed or cancelled run from its last checkpoint."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the runs; train nothing.")
    ] = False,
    detach: Annotated[
        bool,
        typer.Option("--detach", help="Queue on the background engine instead (= kdtui submit)."),
    ] = False,
    yes: YesOpt = False,
    home: HomeOpt = None,
) -> None:
    """Train an experiment in the foreground with a progress bar; results go to the store."""
    from kdtui.headless import resume_foreground, run_foreground

    if resume is not None:
        store = open_store(home)
        try:
            ok = resume_foreground(store, resume, console)
        except StoreError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt as e:  # ctrl+c, SIGTERM, SIGHUP: the runs are closed already
            raise typer.Exit(getattr(e, "exit_code", 130)) from None
        raise typer.Exit(0 if ok else 1)
    if file is None:
        raise fail("give an experiment file (or --resume RUN_ID)")
    exp = load_config(file, set_)  # a bad file stores nothing: the store is opened after
    if dry_run:
        console.print(plan_table(exp))
        return
    confirm_size(exp, yes)
    store = open_store(home)
    if detach:
        from kdtui.commands import submit_experiment

        submit_experiment(store, exp, str(file), console)
        return
    try:
        ok = run_foreground(store, exp, str(file), console)
    except StoreError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt as e:  # ctrl+c, SIGTERM, SIGHUP: the runs are closed already
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    raise typer.Exit(0 if ok else 1)


STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "done": "green",
    "failed": "red",
    "cancelled": "magenta",
    "dead": "bold red",
}


JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print a versioned JSON document instead (fields: README, Machine-readable)."
    ),
]


@app.command("ls")
def list_runs(
    status: Annotated[
        str | None, typer.Option(help=f"Only runs in this status ({', '.join(STATUSES)}).")
    ] = None,
    experiment: ExperimentOpt = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """List runs with status and progress."""
    store = open_store(home)
    runs = store.runs(status=status, experiment=experiment)
    if as_json:
        from engine import records

        sys.stdout.write(records.dumps(records.runs_document(runs, str(store.home))))
        return
    t = Table()
    for col in (
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
        "device",
        "fingerprint",
    ):
        t.add_column(col, no_wrap=col in ("id", "status", "fingerprint"))
    dead = []
    for r in runs:
        best = f"{r.best_top1:.2f}" if r.best_top1 is not None else "–"
        speed = f"{r.images_per_s:.0f}" if r.images_per_s else "–"
        shown = liveness.shown_status(r)
        if shown == liveness.DEAD:
            dead.append(r.id)
        add_text_row(
            t,
            str(r.id),
            text(shown, style=STATUS_STYLE.get(shown, "")),
            r.experiment,
            r.label,
            r.method,
            r.pair,
            progress_text(r),
            best,
            r.head,
            speed,
            r.device or "–",
            (r.fingerprint or "–")[: exportmod.FP_SHOWN],
        )
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


def progress_text(r) -> str:
    """Epochs and percent; the ETA while running; what a queued run waits for."""
    text = f"{r.epoch}/{r.epochs} {100 * r.progress:.0f}%"
    if r.status == "running" and r.eta_s:
        m, s = divmod(int(r.eta_s), 60)
        text += f" eta {m // 60}h{m % 60:02d}m" if m >= 60 else f" eta {m}m{s:02d}s"
    elif r.status == "queued" and r.depends_on:
        text += f" after #{r.depends_on}"
    return text


def pinned_baseline(store: Store, ref: str) -> exportmod.Baseline:
    """`--baseline RUN|EXPERIMENT`: the leaderboard row holding that run, or the experiment's
    one vanilla row (else its one row); its done seeds' mean is the baseline."""
    try:
        named = store.find(ref)
    except StoreError as e:
        raise fail(f"--baseline {ref}: {e}") from None
    rows = exportmod.build_rows(store.runs())
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
    pin = exportmod.pin_of(mine[0])
    if pin is None:
        raise fail(f"--baseline {ref}: {mine[0].name} has no done run yet")
    return pin


def leaderboard_rows(
    store: Store, experiment: str | None, status: str | None, baseline: str | None = None
):
    runs = store.runs(experiment=experiment)
    pin = pinned_baseline(store, baseline) if baseline else None
    # baselines and teachers may come from other experiments: rows are built from every run
    rows = exportmod.build_rows(store.runs(), pin=pin)
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


# Dropped first when the terminal is too narrow: the rank, names, head and best top-1 stay.
DROP_ORDER = (
    "fingerprint",
    "baseline",
    "trained params",
    "epochs",
    "last top-1",
    "status",
    "n",
    "gap closed",
    "#",
)


def fit_columns(head, body, width: int) -> list[int]:
    """Indices of the columns that fit in `width`, so an 80-column SSH terminal
    shows whole names and figures instead of every cell cut to "qui…"."""

    def need(i: int) -> int:  # longest header word or cell, plus padding and border
        words = max(len(w) for w in head[i].split())
        return max([words] + [len(c[i]) for c in body]) + 3

    keep = list(range(len(head)))
    for name in DROP_ORDER:
        if sum(need(i) for i in keep) + 1 <= width:
            break
        keep.remove(head.index(name))
    return keep


def leaderboard_table(rows) -> Table:
    head, body = exportmod.table(rows)
    keep = fit_columns(head, body, console.width)
    hidden = [head[i] for i in range(len(head)) if i not in keep]
    notes = []
    if any(row.best_mean is None and row.provisional for row in rows):
        notes.append("best top-1 in parentheses: runs still running, not in any mean")
    if hidden:
        notes.append(f"too narrow to show: {', '.join(hidden)} (widen it or use kdtui export)")
    t = Table(
        title="leaderboard (accuracy of the head used at test time)",
        title_justify="left",
        caption="\n".join(notes) or None,
        caption_justify="left",
    )
    for i in keep:
        # fold, not "…": what does not fit goes on the next line, nothing is cut
        t.add_column(
            head[i], justify="right" if head[i] in exportmod.NUMERIC else "left", overflow="fold"
        )
    for cells in body:
        add_text_row(t, *(cells[i] for i in keep))
    return t


def members_table(rows) -> Table:
    """`--runs`: every run behind each row, and whether it is in the row's mean."""
    head, body = exportmod.member_table(rows)
    t = Table(title="runs of each row (# = the row's rank)", title_justify="left")
    numeric = {"#", "run", "seed", "best top-1", "last top-1", "teacher top-1"}
    for h in head:
        t.add_column(h, justify="right" if h in numeric else "left", overflow="fold")
    for cells in body:
        add_text_row(t, *cells)
    return t


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


@app.command()
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
    store = open_store(home)
    rows = leaderboard_rows(store, experiment, status, baseline)
    if as_json:  # every row with its member runs, so --runs adds nothing here
        from engine import records

        sys.stdout.write(records.dumps(records.leaderboard_document(rows, str(store.home))))
        return
    if not rows:
        console.print("no runs yet")
        return
    console.print(leaderboard_table(rows))
    if runs:
        console.print(members_table(rows))


@app.command()
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
        from kdtui.tbcmd import export_tensorboard

        export_tensorboard(open_store(home), output, experiment, baseline=baseline, runs=runs)
        return
    if format not in exportmod.FORMATS:
        known = ", ".join([*exportmod.FORMATS, "tensorboard"])
        raise fail(f"unknown format {format!r}; use one of {known}")
    rows = leaderboard_rows(open_store(home), experiment, None, baseline)
    text = exportmod.export(rows, format, runs=runs)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        err.print(f"wrote {len(rows)} rows to {output}")
    else:
        sys.stdout.write(text)


@app.command()
def models(
    num_classes: Annotated[int, typer.Option(help="Classes of the head.")] = 100,
    input_size: Annotated[
        int, typer.Option(help="Input side for feature shapes (CIFAR: 32).")
    ] = 32,
) -> None:
    """Every architecture with its parameter count, its stages and the map its head pools.

    Stages are what feature methods pair and what stage indices count (0 = first stage after
    the stem): the reference code's feature maps without the stem and the pooled vector.
    """
    from engine.models import describe  # torch

    t = Table(
        title=f"architectures ({num_classes} classes, {input_size}×{input_size} input)",
        title_justify="left",
        caption="stages: what AT, FitNet (hint_stage) and SimKD (projectors) index, "
        "0 = first after the stem; pooled: the map the classifier pools",
        caption_justify="left",
    )
    for col in ("arch", "params", "stages (C×H×W)", "pooled", "head"):
        t.add_column(col)
    from engine.registry import ARCHS

    def shape(s) -> str:
        return "×".join(map(str, s))

    for name in ARCHS:
        size = max(input_size, 64) if name.startswith("tv_") else input_size
        d = describe(name, num_classes=num_classes, input_size=size)
        stages = "  ".join(shape(s) for s in d["stages"])
        if d["final_is_last_stage"]:
            pooled = "last stage"
        elif d["final"] == d["stages"][-1]:
            pooled = "last stage, activated"  # WRN: its final BN-ReLU
        else:
            pooled = shape(d["final"])
        t.add_row(name, f"{d['params'] / 1e6:.2f}M", stages, pooled, d.get("head", ""))
    console.print(t)


@app.command()
def methods(
    name: Annotated[
        str | None, typer.Argument(help="Show only this method (default: every method).")
    ] = None,
) -> None:
    """Every distillation method: its reference, test-time head and options with defaults."""
    from engine.registry import METHODS

    if name is not None and name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise fail(f"unknown method {name!r}{hint} (methods: {', '.join(METHODS)})")
    for spec in [METHODS[name]] if name else METHODS.values():
        head = "reused teacher classifier" if spec.head == "teacher" else "student's classifier"
        lines = [
            Text.assemble((spec.name, "bold"), f"  {spec.summary}"),
            Text(f"  reference: {spec.reference or '–'}"),
            Text(
                f"  test-time head: {head}; reads the teacher's {spec.teacher_outputs}"
                + (
                    "; trains on a weak and a strong view ([data] strong_view)"
                    if spec.strong_view
                    else ""
                )
                if spec.needs_teacher
                else f"  test-time head: {head}; no teacher"
            ),
        ]
        for line in lines:
            console.print(line, highlight=False)
        if spec.options:
            t = Table(show_header=True, box=None, padding=(0, 1, 0, 2))
            for col in ("option", "default", "help"):
                t.add_column(col, overflow="fold")
            for key, opt in spec.options.items():
                add_text_row(t, key, _toml_value(opt.default), opt.help)
            console.print(t)
        console.print()


def _toml_value(value) -> str:
    """A default as it is written in [distill]: true, 0.5, "l2", [4.0, 3.0]."""
    import tomli_w

    return cfgmod._compact(tomli_w.dumps({"v": value})).partition("=")[2].strip()


def _register_commands() -> None:
    from bench.cli import register as register_bench
    from kdtui.cachecmd import cache_app
    from kdtui.commands import register as register_engine
    from kdtui.plotcmd import register as register_plot

    register_engine(app)
    register_plot(app)
    register_bench(app)
    app.add_typer(cache_app, name="cache")


_register_commands()


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except StoreError as e:  # an untrusted store, refused before anything is read or written
        raise SystemExit(fail(str(e)).exit_code) from None
    except (OSError, sqlite3.OperationalError) as e:  # a full disk, wherever it surfaced
        home = default_home()
        frozen = isinstance(e, sqlite3.OperationalError) and safefs.low_on_space(home)
        if not (safefs.is_disk_full(e) or frozen):
            raise
        why = str(e) if isinstance(e, safefs.DiskFull) else f"no space left on device: {home}"
        if frozen:
            why += " (the store can be read but not changed)"
        raise SystemExit(fail(f"{why}; free some space and try again").exit_code) from None


if __name__ == "__main__":
    main()
