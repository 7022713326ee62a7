"""The runs view (home): every run, and live curves + log of the selected one."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Static

from engine.core import annotations, display, liveness, removal, writing
from engine.core import checkpoint as ckptmod
from engine.core import leaderboard as lb
from engine.core import metrics as M
from engine.core.inert import printable
from kdtui.messages import DataChanged
from kdtui.widgets.footer import KeyFooter
from kdtui.widgets.gpu import GpuPanel
from kdtui.widgets.logtail import LogTail
from kdtui.widgets.plots import CurvePlot
from kdtui.widgets.runtable import RunTable, matches

EMPTY = (
    "No runs yet.\n\n"
    "[b]a[/b]  compose a new experiment\n"
    "[b]o[/b]  open one from experiments/*.toml\n\n"
    "Headless: kdtui submit experiments/x.toml"
)

FILTER_HINT = "filter: words in experiment, label, point, method, status, #tag, note"
KEYS_HINT = "/ filter · d delete · n note · t tags · a new"
CONFIRM_LISTED = 8  # a delete confirmation names this many runs, then counts the rest


class RunsScreen(Screen):
    CSS_PATH = Path(__file__).with_name("runs.tcss")
    AUTO_FOCUS = "#runs"  # not the filter above it, hidden until `/`

    BINDINGS = [
        Binding("a", "new", "New", tooltip="New experiment in the composer"),
        # not in the footer (at 80 columns it keeps ? and ^p): help and the palette list them
        Binding("o", "open", "Open", show=False, tooltip="Open experiments/*.toml in the composer"),
        Binding("l", "board", "Board", tooltip="Show the leaderboard"),
        Binding("x", "cancel", "Cancel", tooltip="Cancel the selected run"),
        Binding("r", "resume", "Resume", tooltip="Resume the selected run from its checkpoint"),
        Binding(
            "space",
            "mark",
            "Mark",
            key_display="␣",
            tooltip="Mark or unmark the selected run for compare",
        ),
        Binding("m", "compare", "Compare", tooltip="Compare the marked runs"),
        Binding(
            "c", "clone", "Clone", show=False, tooltip="Clone the selected run into the composer"
        ),
        Binding("v", "config", "TOML", show=False, tooltip="Show the selected run's config"),
        Binding(
            "g",
            "figure",
            "Figure",
            show=False,
            tooltip="Write a paper figure of the marked (or selected) runs",
        ),
        # run management: the table's subtitle names these keys (the footer is full at 80)
        Binding(
            "slash",
            "filter",
            "Filter",
            key_display="/",
            show=False,
            tooltip="Filter runs by experiment, point, method, status, #tag or note (esc clears)",
        ),
        Binding(
            "d",
            "delete",
            "Delete",
            show=False,
            tooltip="Delete the marked (or selected) runs and their files",
        ),
        Binding("n", "note", "Note", show=False, tooltip="Write a note on the selected run"),
        Binding("t", "tag", "Tags", show=False, tooltip="Edit the selected run's tags"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding(
            "z",
            "panels",
            "Panels",
            show=False,
            tooltip="Cycle the detail panels: plots (+ log when tall), log, none",
        ),
        Binding("q", "app.quit", "Quit", tooltip="Quit the app (training goes on)"),
    ]
    HELP_NOTES = (
        "↑/↓ pick a run: its curves and log follow · ←/→ scroll to more columns",
        "at 24 lines the log is behind z (plots, log, none)",
    )
    PANELS = ("plots", "log", "none")
    COMPACT_BELOW = 32  # lines: below, the runs table keeps 8 rows and the log waits behind z

    def __init__(self) -> None:
        super().__init__()
        self.marked: set[int] = set()
        self.filter_text = ""
        self._pending_select: int | None = None
        self._drawn_version = (-1, -1)
        self.panels = "plots"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder=FILTER_HINT, compact=True, id="filter")
        yield RunTable(id="runs")
        yield Static(EMPTY, id="empty")
        with Vertical(id="detail"):
            yield Static("", id="annotations")
            with Horizontal(id="plots"):
                yield CurvePlot("loss", xlabel="per step", log_y=True, id="loss")
                yield CurvePlot("acc", xlabel="test, per epoch", id="acc")
                yield CurvePlot("lr", xlabel="per step", id="lr")
            with Horizontal(id="bottom"):
                yield LogTail(id="log")
                yield GpuPanel(id="gpu", enabled=self.app.gpu_enabled)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#runs").border_title = "runs"
        self.query_one("#runs").border_subtitle = KEYS_HINT
        self.query_one("#log").border_title = "log"
        self.refresh_runs()

    def on_resize(self) -> None:
        self.set_class(self.size.height < self.COMPACT_BELOW, "-compact")

    def action_panels(self) -> None:
        self.panels = self.PANELS[(self.PANELS.index(self.panels) + 1) % len(self.PANELS)]
        for panel in self.PANELS:
            self.set_class(panel == self.panels, f"-panels-{panel}")
        self.refresh_runs()

    def on_screen_resume(self) -> None:
        self.refresh_runs()
        self.refresh_watch()

    # ------------------------------------------------------------ data
    @property
    def table(self) -> RunTable:
        return self.query_one(RunTable)

    @property
    def selected(self):
        run_id = self.table.selected_id
        return self.app.runs_by_id.get(run_id) if run_id is not None else None

    def on_data_changed(self, message: DataChanged) -> None:
        if message.runs:
            self.refresh_runs()
        self.refresh_watch()

    def refresh_runs(self) -> None:
        app = self.app
        runs = app.runs
        table = self.table
        self.marked &= set(app.runs_by_id)
        shown = self.shown_runs()
        table.set_runs(shown, self.marked)
        if self._pending_select is not None and table.select_run(self._pending_select):
            self._pending_select = None
        counts: dict[str, int] = {}
        for r in runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        parts = [f"{counts[s]} {s}" for s in ("running", "queued", "failed") if counts.get(s)]
        if self.filter_text.strip():
            parts.insert(0, f"{len(shown)} of {len(runs)} shown")
        table.border_title = f"runs ({len(runs)})" + (" · " + " · ".join(parts) if parts else "")
        empty = not runs and app.loaded
        self.query_one("#empty").display = empty
        self.query_one("#detail").display = not empty and self.panels != "none"
        self.query_one(GpuPanel).set_runs(runs)
        self.follow_selection()
        self.refresh_title()
        self.refresh_bindings()

    def shown_runs(self) -> list:
        """The runs the filter lets through (all of them without one)."""
        return [r for r in self.app.runs if matches(r, self.filter_text)]

    def follow_selection(self) -> None:
        run = self.selected
        self.app.watch_run(run.id if run else None)

    def refresh_title(self) -> None:
        run = self.selected
        detail = self.query_one("#detail")
        notes = self.query_one("#annotations", Static)
        notes.display = run is not None and bool(run.note or run.tags != "[]")
        if run is None:
            detail.border_title = "no run selected"
            detail.border_subtitle = ""
            return
        if notes.display:  # inert: a note's "[b]" or ESC is shown, never obeyed
            tags = " ".join(f"#{t}" for t in run.tag_list)
            notes.update(
                Content.assemble(
                    (printable(tags), "$accent"),
                    " " if tags and run.note else "",
                    printable(run.note),
                )
            )
        detail.border_title = Content(printable(display.name(run)))
        top = f"last {run.last_top1:.2f} · " if run.last_top1 is not None else ""
        job = liveness.job_text(run)
        job = f"slurm job {job} · " if job and not run.finished else ""
        detail.border_subtitle = Content(
            printable(
                f"{liveness.shown_status(run)} · {job}epoch {run.epoch}/{run.epochs} · "
                f"{top}head {run.head}"
            )
        )

    def refresh_watch(self) -> None:
        app = self.app
        watch = app.followed
        run = self.selected
        if watch is None or run is None or watch.run_id != run.id:
            return
        key = (watch.run_id, watch.version)
        if key != self._drawn_version:
            self._drawn_version = key
            series = watch.series
            self.query_one("#loss", CurvePlot).set_series(
                {M.loss_term(n): s for n, s in series.items() if M.is_loss(n)}
            )
            acc = {}
            if M.TEST_TOP1 in series:
                acc["top1"] = series[M.TEST_TOP1]
            if M.TEST_TOP5 in series:
                acc["top5"] = series[M.TEST_TOP5]
            self.query_one("#acc", CurvePlot).set_series(acc)
            lr_plot = self.query_one("#lr", CurvePlot)
            if M.STEP_LR in series:
                lr_plot.xlabel_text = "per step"
                lr_plot.set_series({"lr": series[M.STEP_LR]})
            else:
                lr_plot.xlabel_text = "per epoch"
                lr_plot.set_series({"lr": series[M.EPOCH_LR]} if M.EPOCH_LR in series else {})
        feed = app.take_log()
        log = self.query_one(LogTail)
        if feed is not None:
            text, reset = feed
            if reset:
                log.reset()
            log.feed(text)
        if log.lines_seen == 0 and run.error:  # failed before writing a log
            log.feed(run.error.rstrip("\n") + "\n")
        log.border_title = f"log · #{run.id}"

    @on(DataTable.RowHighlighted, "#runs")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        run = self.selected
        if run is None:
            return
        watch = self.app.followed
        if watch is None or watch.run_id != run.id:
            self._drawn_version = (-1, -1)
            for plot in self.query(CurvePlot):
                plot.set_series({})
            self.query_one(LogTail).reset("no log yet")
            self.app.watch_run(run.id)
        self.refresh_title()
        self.refresh_bindings()

    def select_run(self, run_id: int) -> None:
        if not self.table.select_run(run_id):
            self._pending_select = run_id

    # ------------------------------------------------------------ actions
    def why_not(self, action: str) -> str | None:
        """Why the action does not apply to the selection (None: it does); said in a toast."""
        run = self.selected
        if action in ("cancel", "resume", "clone", "config", "mark", "note", "tag") and run is None:
            return "no run selected: ↑/↓ pick one"
        if action == "cancel" and run.status not in ("queued", "running"):
            return f"run #{run.id} is {run.status}: nothing to cancel"
        if action == "resume" and not (
            run.status in ("failed", "cancelled") or liveness.process_gone(run)
        ):
            hint = "x cancels it" if run.status in ("queued", "running") else "c clones it"
            return f"run #{run.id} is {liveness.shown_status(run)}: nothing to resume ({hint})"
        return None

    def _refused(self, action: str) -> bool:
        why = self.why_not(action)
        if why is not None:
            self.notify(why, severity="warning", timeout=4)
        return why is not None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_filter":  # escape clears a filter; otherwise it is left to the app
            return self.is_mounted and (bool(self.filter_text) or self.query_one("#filter").display)
        return True

    def action_new(self) -> None:
        self.app.open_composer()

    def action_open(self) -> None:
        self.app.pick_experiment()

    def action_board(self) -> None:
        self.app.show_board()

    def action_cancel(self) -> None:
        from kdtui.screens.dialogs import ConfirmScreen

        if self._refused("cancel"):
            return
        run = self.selected
        verb = "Stop" if run.status == "running" else "Cancel"
        prompt = printable(f"{verb} run {display.name(run)}?") + (
            "\nIts last checkpoint stays; r resumes it." if run.status == "running" else ""
        )

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._cancel(run.id)

        self.app.push_screen(ConfirmScreen(Content(prompt), yes=verb), confirmed)

    @work(thread=True, group="action", exit_on_error=False)
    def _cancel(self, run_id: int) -> None:
        try:
            outcome = self.app.store.request_cancel(run_id)
        except Exception as e:
            self.app.call_from_thread(self.notify, str(e), severity="error")
            return
        self.app.call_from_thread(self.notify, f"run #{run_id}: {outcome}")
        self.app.poll_soon()

    def action_resume(self) -> None:
        if not self._refused("resume"):
            self._resume(self.selected.id)

    @work(thread=True, group="action", exit_on_error=False)
    def _resume(self, run_id: int) -> None:
        app = self.app
        try:
            why, _ = ckptmod.resume_check(app.store.run(run_id))  # never restarts silently
            if why:
                raise ValueError(why)
            app.store.requeue(run_id, resume=True)
        except Exception as e:
            app.call_from_thread(self.notify, str(e), severity="error")
            return
        message, severity = app.engine_up()
        app.call_from_thread(
            self.notify, f"run #{run_id} queued to resume · {message}", severity=severity
        )
        app.poll_soon()

    def action_clone(self) -> None:
        if not self._refused("clone"):
            self._clone(self.selected.id)

    @work(thread=True, group="action", exit_on_error=False)
    def _clone(self, run_id: int) -> None:
        app = self.app
        try:  # as the user wrote it: teacher from_run by name, paths as written
            run = app.store.run(run_id)
            raw = writing.to_dict(app.store.written_config(run_id), full=False)
        except Exception as e:
            app.call_from_thread(self.notify, f"cannot clone: {e}", severity="error")
            return
        raw["name"] = f"{run.experiment}-copy"
        app.call_from_thread(app.open_composer, None, base=raw)

    def action_config(self) -> None:
        if not self._refused("config"):
            self._show_config(self.selected.id)

    @work(thread=True, group="action", exit_on_error=False)
    def _show_config(self, run_id: int) -> None:
        from kdtui.screens.dialogs import ConfigScreen

        app = self.app
        try:
            run = app.store.run(run_id)
        except Exception as e:
            app.call_from_thread(self.notify, str(e), severity="error")
            return
        title = f"run {display.name(run)}"
        title += f" · {lb.world_text(run.world_size, run.effective_batch)}"
        title = printable(title + f" · fingerprint {run.fingerprint or 'none'}")
        app.call_from_thread(
            app.push_screen, ConfigScreen(title, run.config_toml, clone=lambda: self._clone(run_id))
        )

    def action_mark(self) -> None:
        if self._refused("mark"):
            return
        run = self.selected
        self.marked ^= {run.id}
        self.table.set_runs(self.shown_runs(), self.marked)
        self.refresh_bindings()
        self.table.action_cursor_down()

    def action_compare(self) -> None:
        groups = []
        for run_id in sorted(self.marked):
            run = self.app.runs_by_id.get(run_id)
            if run is not None:
                label = display.name(run)
                groups.append((label, [run.id]))
        self.app.compare(groups)

    def action_figure(self) -> None:
        """`kdtui plot`'s figure of the marked runs, else the selected one."""
        from kdtui.screens.figure_key import ask_and_write

        run = self.selected
        ask_and_write(self, sorted(self.marked) or ([run.id] if run else []))

    # ------------------------------------------------------------ filter
    def action_filter(self) -> None:
        """Show the filter with its text selected: typing replaces it, enter keeps it."""
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()
        box.select_all()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.refresh_runs()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()
        if not self.filter_text.strip():
            self.query_one("#filter").display = False

    def action_clear_filter(self) -> None:
        """Escape: every run again, the filter hidden, the table focused."""
        box = self.query_one("#filter", Input)
        box.value = ""
        self.filter_text = ""
        box.display = False
        self.table.focus()
        self.refresh_runs()

    # ------------------------------------------------------------ delete
    def targets(self) -> list:
        """The marked runs, else the selected one."""
        if self.marked:
            return [self.app.runs_by_id[i] for i in sorted(self.marked) if i in self.app.runs_by_id]
        run = self.selected
        return [run] if run is not None else []

    def action_delete(self) -> None:
        from kdtui.screens.dialogs import ConfirmScreen

        runs = self.targets()
        if not runs:
            self.notify("no run selected: ↑/↓ pick one", severity="warning")
            return
        why = removal.refusal(runs, fix="cancel it first (x)")
        if why:
            self.notify(f"not deleted: {why}", severity="warning")
            return
        lines = [
            f"#{r.id} {r.experiment} {r.label} ({liveness.shown_status(r)})".rstrip()
            for r in runs[:CONFIRM_LISTED]
        ]
        if len(runs) > CONFIRM_LISTED:
            lines.append(f"… and {len(runs) - CONFIRM_LISTED} more")
        many = f"{len(runs)} runs" if len(runs) > 1 else "run"
        prompt = (
            f"Delete {many} and {'their' if len(runs) > 1 else 'its'} files?\n"
            + "\n".join(lines)
            + "\nRows, metrics and folders are removed; this cannot be undone."
        )

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._delete([r.id for r in runs])

        self.app.push_screen(
            ConfirmScreen(Content(printable(prompt, keep="\n")), yes="Delete"), confirmed
        )

    @work(thread=True, group="action", exit_on_error=False)
    def _delete(self, run_ids: list[int]) -> None:
        """Thread side: `kdtui rm`'s rules (engine.core.removal) on the runs as they are now."""
        app = self.app
        try:
            runs = app.store.runs(ids=run_ids)
            why = removal.refusal(runs, fix="cancel it first (x)")
            if why:  # it changed while the dialog was open
                app.call_from_thread(self.notify, f"not deleted: {why}", severity="warning")
                return
            done = removal.remove(app.store, runs)
        except Exception as e:
            app.call_from_thread(self.notify, f"not deleted: {e}", severity="error")
            return
        n = len(done.removed)
        message = f"deleted {n} run{'s' * (n != 1)}" + (
            f" (#{', #'.join(map(str, done.removed))})" if n else ""
        )
        kept = [f"kept run {i}: {why}" for i, why in done.kept_runs]
        kept += [f"kept the folder of run {i}: {why}" for i, why in done.kept_folders]
        severity = "warning" if kept else "information"
        app.call_from_thread(self.notify, "\n".join([message, *kept]), severity=severity)
        app.call_from_thread(self._forget, done.removed)
        app.poll_soon()

    def _forget(self, run_ids: list[int]) -> None:
        self.marked -= set(run_ids)

    # ------------------------------------------------------------ notes and tags
    def action_note(self) -> None:
        from kdtui.screens.dialogs import TextScreen

        if self._refused("note"):
            return
        run = self.selected

        def done(value: str | None) -> None:
            if value is not None:
                self._annotate(run.id, note=value)

        title = f"note on run #{run.id} {run.experiment} {run.label}".rstrip()
        self.app.push_screen(
            TextScreen(
                title,
                run.note,
                hint="enter saves (empty: no note) · escape leaves it as it was",
                placeholder="what you want to remember about this run",
                max_length=annotations.NOTE_MAX,
                check=lambda value: _problem(annotations.check_note, value),
            ),
            done,
        )

    def action_tag(self) -> None:
        from kdtui.screens.dialogs import TextScreen

        if self._refused("tag"):
            return
        run = self.selected

        def done(value: str | None) -> None:
            if value is not None:
                self._annotate(run.id, tags=value.split())

        title = f"tags of run #{run.id} {run.experiment} {run.label}".rstrip()
        self.app.push_screen(
            TextScreen(
                title,
                " ".join(run.tag_list),
                hint="tag names separated by spaces (letters, digits, - _ . +); "
                "enter saves, escape leaves them as they were; / finds runs by tag",
                placeholder="paper table-2",
                check=lambda value: _problem(annotations.check_tags, value.split()),
            ),
            done,
        )

    @work(thread=True, group="action", exit_on_error=False)
    def _annotate(self, run_id: int, **change) -> None:
        app = self.app
        try:
            run = app.store.annotate(run_id, **change)
        except Exception as e:
            app.call_from_thread(self.notify, f"not saved: {e}", severity="error")
            return
        what = "note saved" if "note" in change else "tags: " + (" ".join(run.tag_list) or "none")
        if "note" in change and not run.note:
            what = "note removed"
        app.call_from_thread(self.notify, f"run #{run_id}: {what}")
        app.poll_soon()


def _problem(check, value) -> str | None:
    """What engine.core.annotations finds wrong with a value (None: nothing)."""
    try:
        check(value)
    except annotations.AnnotationError as e:
        return str(e)
    return None
