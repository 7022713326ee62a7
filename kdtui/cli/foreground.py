"""`kdtui run`: train in the foreground, in this process, with a Rich progress bar.

The runs are written to the same store as the engine's, held by this
process's pid so the engine leaves them alone; if this process dies, the
engine adopts what is still queued. Torch is imported only when training
starts. SIGTERM and SIGHUP (a dropped SSH session) stop it as ctrl+c does:
its runs end cancelled and resumable, and it says which to resume.

A group whose runs train on several processes (`[run] nproc_per_node > 1`) is
trained by a worker process started here (`python -m engine.worker`, which
launches the ranks under torchrun); the progress bars follow the store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from engine.core import checkpoint as ckptmod
from engine.core import display, safefs, schema
from engine.core import leaderboard as lb
from engine.core import metrics as M
from engine.core.inert import printable
from engine.core.layout import WORKER_OUTPUT
from engine.core.store import Run, Store, StoreError
from engine.daemon.processes import child_env, worker_command
from kdtui.cli.render import leaderboard_table
from kdtui.inert import text


def groups_in_order(runs: Iterable[Run]) -> list[list[Run]]:
    """Teacher runs first, then fused groups (same fuse key) in submission order."""
    runs = list(runs)
    order = [r for r in runs if r.role == "teacher"] + [r for r in runs if r.role != "teacher"]
    groups: list[list[Run]] = []
    by_key: dict[str, list[Run]] = {}
    for r in order:
        if r.fuse_key and r.role != "teacher":
            if r.fuse_key in by_key:
                by_key[r.fuse_key].append(r)
                continue
            by_key[r.fuse_key] = [r]
            groups.append(by_key[r.fuse_key])
        else:
            groups.append([r])
    return groups


MARKS = {"done": "[green]done[/]", "failed": "[red]failed[/]", "cancelled": "[magenta]cancelled[/]"}


class ProgressCallbacks:
    """Feeds the training loop's events into a Rich progress display."""

    def __init__(self, progress: Progress, labels: dict[str, str]):
        self.progress = progress
        self.labels = labels
        self.tasks: dict[str, int] = {}
        self.steps: dict[str, int] = {}
        self.stats: dict[str, dict] = {}

    def on_start(self, m, info):
        spe = info["steps_per_epoch"]
        self.steps[m.name] = spe
        self.stats[m.name] = {"loss": float("nan"), "acc": "–", "ips": 0.0}
        self.tasks[m.name] = self.progress.add_task(
            self.labels.get(m.name, m.name),
            total=info["epochs"] * spe,
            completed=m.epoch * spe,
            epoch=f"{m.epoch}/{info['epochs']}",
            stats="",
            short="",
        )

    def _render(self, m):
        s = self.stats[m.name]
        return f"loss {s['loss']:.3f}  top1 {s['acc']}  {s['ips']:.0f} img/s"

    def _short(self, m):
        """The figures of `_render` for a narrow terminal."""
        s = self.stats[m.name]
        return f"{s['loss']:.3f} {s['acc']}"

    def on_step(self, m, epoch, step, losses, lr):
        task = self.tasks[m.name]
        self.stats[m.name]["loss"] = losses.get(M.TOTAL, float("nan"))
        self.progress.update(
            task,
            completed=epoch * self.steps[m.name] + step,
            epoch=f"{epoch + 1}/{m.cfg.optim.epochs}",
            stats=self._render(m),
            short=self._short(m),
        )

    def on_epoch(self, m, epoch, metrics):
        s = self.stats[m.name]
        s["ips"] = metrics[M.IMAGES_PER_S]
        if M.TEST_TOP1 in metrics:
            s["acc"] = f"{metrics[M.TEST_TOP1]:.2f}"
        self.progress.update(
            self.tasks[m.name],
            completed=(epoch + 1) * self.steps[m.name],
            epoch=f"{epoch + 1}/{m.cfg.optim.epochs}",
            stats=self._render(m),
            short=self._short(m),
        )

    def on_end(self, m):
        mark = MARKS.get(m.status, m.status)
        self.progress.update(
            self.tasks[m.name],
            stats=self._render(m) + f"  {mark}",
            short=self._short(m) + f" {mark}",
        )

    def should_stop(self, m):
        return False

    def log(self, m, message):
        pass

    def on_setup_error(self, e):
        self.progress.console.print(text(str(e), style="red"))


WIDE = 120  # columns from which the progress line has room for every figure


def make_progress(console: Console) -> Progress:
    """One line per run that fits the terminal: the label shortens and the bar shrinks
    before a figure goes; under 120 columns the step counter and elapsed time give way,
    so from 80 columns up the bar, epoch, loss, top-1 and ETA stay (Rich drops a bar
    that has no room, as it did at 100 columns)."""
    wide = console.width >= WIDE
    label = Column(ratio=2, min_width=12, no_wrap=True, overflow="ellipsis")
    columns: list = [
        # the description is a run's label: text, never markup
        TextColumn("{task.description}", markup=False, style="bold", table_column=label),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=8)),
        TextColumn("epoch {task.fields[epoch]}" if wide else "{task.fields[epoch]}"),
    ]
    if wide:
        columns.append(MofNCompleteColumn())
    columns.append(TextColumn("{task.fields[stats]}" if wide else "{task.fields[short]}"))
    if wide:
        columns.append(TimeElapsedColumn())
    columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=False, expand=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like ctrl+c; `reason` goes into the runs' error."""

    REASONS = {
        signal.SIGTERM: "stopped by SIGTERM",
        signal.SIGHUP: "its terminal closed (SIGHUP)",
    }

    def __init__(self, signum: int):
        self.signum = signum
        self.reason = self.REASONS.get(signum, f"stopped by signal {signum}")
        self.exit_code = 128 + signum
        super().__init__(self.reason)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Interrupted in the main thread, once (later ones are ignored
    while the runs are being closed)."""
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and receives the signals)
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _say(console: Console, message: str | Text) -> None:
    """Print, unless the terminal is gone (after SIGHUP a write fails with EIO)."""
    with contextlib.suppress(OSError, ValueError):
        console.print(message, highlight=False)


POLL_S = 0.5  # how often the progress of a run on several processes is read from the store
STOP_WAIT_S = 90.0  # torchrun stops its ranks with SIGTERM, then SIGKILL after 30 s


def world_of(run: Run) -> int:
    try:
        return schema.world_size(run.load_config())
    except Exception:  # a config that does not parse: the worker records why
        return 1


def train_processes(store: Store, ids: list[int], progress: Progress, labels: dict) -> list[Run]:
    """Train a group on several processes: a worker started here launches them (torchrun);
    the bars follow the store. Ctrl+c, SIGTERM or SIGHUP stop it (SIGTERM to the launcher,
    which stops its ranks), and its runs end cancelled, resumable from their checkpoint."""
    runs = store.runs(ids=ids)
    out_path = Path(runs[0].dir) / WORKER_OUTPUT
    cmd = worker_command(store.home, [r.path for r in runs])
    out_fd = safefs.open_fd(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(out_fd, "a") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env({}),
            start_new_session=True,  # ctrl+c reaches this process, which stops the group
        )
    for r in runs:
        store.update(r.id, pid=proc.pid)
    view = StoreProgress(progress, labels)
    try:
        while proc.poll() is None:
            view.show(store.runs(ids=ids))
            time.sleep(POLL_S)
    except KeyboardInterrupt as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_WAIT_S)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        why = getattr(e, "reason", "interrupted (Ctrl-C)")
        for r in store.runs(ids=ids):
            if r.status == "running":
                store.finish(r.id, "cancelled", f"{why}; `kdtui resume {r.id}` continues it")
        raise
    for r in store.runs(ids=ids):
        if r.status == "running":  # the launcher itself died: nothing recorded why
            store.finish(
                r.id,
                "failed",
                f"its launcher exited with code {proc.returncode} ({out_path}); "
                f"`kdtui resume {r.id}` continues it",
            )
    final = store.runs(ids=ids)
    view.show(final)
    return final


class StoreProgress:
    """The progress bars of runs trained by other processes, read from their store rows."""

    def __init__(self, progress: Progress, labels: dict[str, str]):
        self.progress = progress
        self.labels = labels
        self.tasks: dict[int, int] = {}

    def show(self, runs: list[Run]) -> None:
        for r in runs:
            if r.id not in self.tasks:
                if not r.steps_per_epoch and not r.finished:
                    continue  # not started yet
                self.tasks[r.id] = self.progress.add_task(
                    self.labels.get(str(r.id), str(r.id)), total=1, epoch="", stats="", short=""
                )
            spe = max(r.steps_per_epoch, 1)
            top1 = f"{r.last_top1:.2f}" if r.last_top1 is not None else "–"
            stats = f"top1 {top1}  {r.images_per_s or 0:.0f} img/s"
            short = top1
            if r.finished:
                stats += f"  {MARKS.get(r.status, r.status)}"
                short += f" {MARKS.get(r.status, r.status)}"
            self.progress.update(
                self.tasks[r.id],
                total=max(r.epochs, 1) * spe,
                completed=r.epoch * spe + min(r.step, spe),
                epoch=f"{r.epoch}/{r.epochs}",
                stats=stats,
                short=short,
            )


def train_groups(store: Store, groups: list[list[Run]], console: Console) -> list[Run]:
    from engine.worker import execute  # torch: only now

    finished: list[Run] = []
    with signals_as_interrupt():
        try:
            with make_progress(console) as progress:
                for group in groups:
                    ids = [r.id for r in group]
                    for r in group:
                        if not store.claim(r.id, pid=os.getpid()):
                            console.print(f"run {r.id} was taken by another process; skipping it")
                            ids.remove(r.id)
                    if not ids:
                        continue
                    labels = {
                        str(r.id): printable(display.title(r, experiment=False)) for r in group
                    }
                    if world_of(group[0]) > 1:
                        finished += train_processes(store, ids, progress, labels)
                        continue
                    finished += execute(store, ids, callbacks=ProgressCallbacks(progress, labels))
        except BaseException as e:
            stop = e if isinstance(e, KeyboardInterrupt) else e.__context__
            if not isinstance(stop, KeyboardInterrupt):
                raise  # a real error (a closing progress bar's EIO after SIGHUP is not one)
            _close_interrupted(store, groups, stop, console)
            raise stop from None
    return finished


def _close_interrupted(
    store: Store, groups: list[list[Run]], stop: KeyboardInterrupt, console: Console
) -> None:
    """Every run of ours that did not finish ends cancelled (resumable); say which to resume."""
    why = getattr(stop, "reason", "interrupted (Ctrl-C)")
    again: list[int] = []
    for group in groups:
        for r in group:
            r = store.run(r.id)
            if r.status == "queued":
                store.finish(r.id, "cancelled", f"{why} before it started")
            elif r.status == "running" and r.pid == os.getpid():  # stopped before its first step
                store.finish(r.id, "cancelled", f"{why}; `kdtui resume {r.id}` continues it")
            if store.run(r.id).status in ("cancelled", "failed"):
                again.append(r.id)
    ids = " ".join(map(str, again))
    _say(
        console,
        text(
            (why, "magenta"),
            ": finished epochs are kept" + (f"; `kdtui resume {ids}` continues" if again else ""),
        ),
    )


def summary(store: Store, runs: list[Run], console: Console, title: str) -> bool:
    ok = True
    for r in runs:
        r = store.run(r.id)
        if r.status != "done":
            ok = False
            console.print(text((f"run {r.id} {r.status}", "red"), f": {r.error or ''}"))
    ids = {r.id for r in runs}
    rows = [row for row in lb.build_rows(store.runs()) if set(row.run_ids) & ids]
    if rows:
        table = leaderboard_table(rows)
        table.title = f"{title} (accuracy of the head used at test time)"
        console.print(table)
    console.print(f"store: {store.home}")
    return ok


def train_experiment(store: Store, exp: schema.Experiment, source: str, console: Console) -> bool:
    t0 = time.time()
    runs = store.submit(exp, source=source, holder=os.getpid())
    console.print(
        text(
            (exp.name, "bold"),
            f": {len(runs)} run{'s' * (len(runs) != 1)} "
            f"(ids {runs[0].id}–{runs[-1].id}) in {store.home}",
        )
    )
    finished = train_groups(store, groups_in_order(runs), console)
    ok = summary(store, finished or runs, console, exp.name)
    console.print(f"finished in {time.time() - t0:.0f} s")
    return ok


def train_resumed(store: Store, run_id: int, console: Console) -> bool:
    why, note = ckptmod.resume_check(store.run(run_id))
    if why:
        raise StoreError(why)
    if note:
        console.print(note, highlight=False)
    run = store.requeue(run_id, resume=True, holder=os.getpid())
    finished = train_groups(store, [[store.run(run.id)]], console)
    return summary(store, finished, console, f"run {run_id}")
