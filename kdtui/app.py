"""The Textual app: screens, key bindings, command palette, and the store reader.

Torch-free by contract (tests import it in a clean interpreter and check
`sys.modules`). All store and file reads happen in thread workers; the event
loop only applies what they found, so the UI never waits on SQLite or on a
slow disk.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerState

from engine.core import display, layout, runlog
from engine.core import metrics as M
from engine.core.inert import printable
from engine.core.store import Run, Store
from engine.daemon import client as engine
from kdtui.messages import DataChanged, Polled, Snapshot
from kdtui.screens.runs import RunsScreen
from kdtui.widgets.cells import short_path

POLL_S = 0.5  # metrics show up within a second of being written
ENGINE_EVERY = 4  # read the engine's status every 4th poll
ANNOUNCE_LINES = 4  # runs named in a toast for many that ended at once
ANNOUNCE_WAIT_S = 1.0  # runs ending less than a second (two polls) apart share one toast
ANNOUNCE_MAX_S = 5.0  # ... said at the latest this long after the first ended


class Watch:
    """The selected run's metrics and log, grown by metric id and file offset."""

    def __init__(self, run_id: int, attempts: int = 0) -> None:
        self.run_id = run_id
        self.attempts = attempts
        self.last_id = 0
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.log_offset: int | None = None
        self.version = 0

    def add(self, metrics: Iterable) -> None:
        for m in metrics:
            xs, ys = self.series.setdefault(m.name, ([], []))
            # per-step curves run on the global step, per-epoch ones on the epoch counted
            # from 1, as `kdtui plot` draws them (the store keeps it from 0)
            xs.append(m.step if M.per_step(m.name) else m.epoch + 1)
            ys.append(m.value)
            self.last_id = max(self.last_id, m.id)
        self.version += 1


def engine_status(home: Path) -> Any:
    """The engine's status dict, or None when it is not running (or cannot be read)."""
    try:
        return engine.status(home)
    except Exception:
        return None


def engine_text(status: Any) -> str:
    """One line for the header: is the engine up, and how busy (engine.daemon.client.status shape)."""
    if not status:
        return "engine stopped"
    if not isinstance(status, dict):
        return "engine running"
    text = f"engine pid {status['pid']}" if status.get("pid") else "engine running"
    slots = status.get("slots")
    if isinstance(slots, list) and slots:
        busy = sum(1 for s in slots if isinstance(s, dict) and (s.get("runs") or s.get("worker")))
        text += f" · {busy}/{len(slots)} slots busy"
    return text


def _leaderboard() -> Screen:
    """The leaderboard module loads on first use, keeping start-up short."""
    from kdtui.screens.leaderboard import LeaderboardScreen

    return LeaderboardScreen()


class KdApp(App):
    """kdtui: compose, dispatch, watch, rank and export distillation runs."""

    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "kdtui"
    ENABLE_COMMAND_PALETTE = True
    MODES = {"runs": RunsScreen, "board": _leaderboard}
    DEFAULT_MODE = "runs"

    # keys that mean the same on every screen (the README's key map); `q` quits only from the
    # runs view (home), elsewhere it goes back, as escape does
    BINDINGS = [
        Binding(
            "ctrl+q",
            "quit",
            "Quit",
            show=False,
            priority=True,
            tooltip="Quit the app (training goes on)",
        ),
        Binding(
            "question_mark,f1",
            "help",
            "Help",
            tooltip="Keys: what each key of this screen does",
        ),
        Binding("ctrl+c", "help_quit", show=False, system=True),
        Binding("b", "toggle_bell", "Bell", show=False, tooltip="Toggle the terminal bell"),
        # the header says so when runs wait for a stopped engine (queue and resume start it)
        Binding("E", "start_engine", "Engine", show=False, tooltip="Start the background engine"),
    ]

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        root: str | Path | None = None,
        gpu: bool = True,
        start_engine: bool = True,
        poll_s: float = POLL_S,
    ) -> None:
        super().__init__()
        if "TEXTUAL_ANIMATIONS" not in os.environ:
            # over SSH a smooth scroll is a dozen redraws for nothing; jump instead
            self.animation_level = "basic"
        self.store = Store(home)
        self.home = self.store.home
        self.root = Path(root) if root else Path.cwd()
        self.gpu_enabled = gpu
        self.start_engine = start_engine
        self.poll_s = poll_s
        self.runs: list[Run] = []
        self.runs_by_id: dict[int, Run] = {}
        # the selected run's metrics and log (not `watch`: that is Textual's DOMNode.watch)
        self.followed: Watch | None = None
        self.engine: Any = None
        self.polls = 0
        self.loaded = False
        self._polling = False
        self._poll_again = False
        self._tick_count = 0
        self._last_runs: list[Run] | None = None
        self._ended: list[Run] = []  # ended since the last toast (see _announce_ended)
        self._ended_since = 0.0
        self._ended_timer: Timer | None = None
        self._log_text = ""
        self._log_reset = False
        self.settings = self._load_settings()
        self.sub_title = f"{printable(short_path(self.home))} · engine …"

    def notify(self, message: str, *, markup: bool = False, **kwargs: Any) -> None:
        """Toasts carry run names and error text, never markup: `[lr=0.1]` must print as is,
        an ESC or bidi override in a name shows as an escape."""
        if kwargs.get("title"):
            kwargs["title"] = printable(kwargs["title"])
        super().notify(printable(message, keep="\n"), markup=False, **kwargs)

    # ------------------------------------------------------------ settings
    @property
    def settings_path(self) -> Path:
        return self.home / layout.APP_SETTINGS

    def _load_settings(self) -> dict:
        try:
            return json.loads(self.settings_path.read_text())
        except (OSError, ValueError):
            return {}

    def save_settings(self) -> None:
        try:
            self.settings_path.write_text(json.dumps(self.settings, indent=2, sort_keys=True))
        except OSError as e:
            self.notify(f"cannot save settings: {e.strerror}", severity="warning")

    @property
    def bell_on(self) -> bool:
        return bool(self.settings.get("bell", False))

    def action_toggle_bell(self) -> None:
        self.settings["bell"] = not self.bell_on
        self.save_settings()
        self.notify(f"terminal bell {'on' if self.bell_on else 'off'} for finished runs")

    # ------------------------------------------------------------ screens
    def on_mount(self) -> None:
        self.set_interval(self.poll_s, self.poll)
        self.poll()

    def show_runs(self, select: int | None = None) -> None:
        self.switch_mode("runs")
        if select is not None:
            screen = self.screen
            if isinstance(screen, RunsScreen):
                screen.select_run(select)

    def show_board(self) -> None:
        self.switch_mode("board")

    def open_composer(self, path: Path | None = None, *, base: dict | None = None) -> None:
        from kdtui.screens.compose import ComposerScreen

        self.push_screen(ComposerScreen(path=path, base=base))

    def pick_experiment(self) -> None:
        from kdtui.screens.dialogs import ExperimentPicker

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.open_composer(path)

        self.push_screen(ExperimentPicker(self.root / "experiments"), chosen)

    def compare(self, groups: list[tuple[str, list[int]]]) -> None:
        from kdtui.screens.compare import CompareScreen

        if len(groups) < 2:
            self.notify("mark two or more runs (space) to compare", severity="warning")
            return
        self.push_screen(CompareScreen(groups))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # a letter typed in a form field is text, not a command
        form = getattr(self.screen, "is_form", False)
        return not (form and action in ("toggle_bell", "start_engine"))

    def action_help(self) -> None:
        """The keys of the screen on top (a help screen open already: close it)."""
        from kdtui.screens.help import HelpScreen

        screen = self.screen
        if isinstance(screen, HelpScreen):
            screen.dismiss(None)
            return
        self.push_screen(HelpScreen(screen, getattr(screen, "HELP_NOTES", ())))

    def action_help_quit(self) -> None:
        """ctrl+c does not quit (it copies in a text field): say what does, as plain text."""
        home = " (q on the runs view)" if isinstance(self.screen, RunsScreen) else ""
        self.notify(f"Press ctrl+q to quit the app{home}; training goes on", title="Quit?")

    # ------------------------------------------------------------ palette
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every key binding of the screen is also a palette entry, so neither needs the other."""
        seen: set[str] = set()
        for active in screen.active_bindings.values():
            binding = active.binding
            if not isinstance(active.node, (Screen, App)):
                continue  # a widget's cursor keys are not commands
            if not binding.description or not binding.tooltip or binding.system:
                continue  # ours all carry a tooltip: it is the command's title
            if binding.action == "command_palette":
                continue
            title = binding.tooltip or binding.description
            if title in seen:
                continue
            seen.add(title)
            key = self.get_key_display(binding)
            yield SystemCommand(
                title, f"key: {key}", partial(active.node.run_action, binding.action)
            )
        extra = getattr(screen, "palette_commands", None)
        if extra is not None:
            for title, help_text, callback in extra():
                if title not in seen:
                    seen.add(title)
                    yield SystemCommand(title, help_text, callback)
        for command in super().get_system_commands(screen):
            # ours says that training goes on; ours lists the keys in a modal esc closes
            if command.title not in ("Quit", "Keys"):
                yield command

    # ------------------------------------------------------------ engine
    def action_start_engine(self) -> None:
        self.ensure_engine(quiet=False)

    @work(thread=True, group="engine", exit_on_error=False)
    def ensure_engine(self, quiet: bool = True) -> None:
        message, severity = self.engine_up()
        if not quiet or severity != "information":
            self.call_from_thread(self.notify, message, severity=severity)
        self.poll_soon()

    def engine_up(self) -> tuple[str, str]:
        """Start the engine (thread side); returns a message for the user."""
        if not self.start_engine:
            return "engine start disabled (runs stay queued)", "warning"
        try:
            pid = engine.ensure_running(self.home)
        except Exception as e:  # a user-facing failure, not a crash of the app
            return f"could not start the engine: {e}", "error"
        return f"engine running (pid {pid})", "information"

    # ------------------------------------------------------------ polling
    def watch_run(self, run_id: int | None) -> None:
        """Follow this run's metrics and log (None: nothing selected)."""
        if run_id is None:
            self.followed = None
        elif self.followed is None or self.followed.run_id != run_id:
            run = self.runs_by_id.get(run_id)
            self.followed = Watch(run_id, run.attempts if run else 0)
            self._log_text, self._log_reset = "", True
        else:
            return
        self.poll_soon()

    def poll_soon(self) -> None:
        if self.is_running:
            self.call_later(self.poll)

    def poll(self) -> None:
        if self._polling:
            self._poll_again = True
            return
        self._polling = True
        self._tick_count += 1
        watch = self.followed
        log_path = None
        if watch is not None:
            run = self.runs_by_id.get(watch.run_id)
            if run is not None and run.dir:
                log_path = Path(run.dir) / layout.LOG
        self.run_worker(
            partial(
                self._read,
                watch.run_id if watch else None,
                watch.last_id if watch else 0,
                log_path,
                watch.log_offset if watch else None,
                self._tick_count % ENGINE_EVERY == 1,
            ),
            thread=True,
            group="poll",
            exit_on_error=False,
        )

    def _read(
        self,
        watch_id: int | None,
        since_id: int,
        log_path: Path | None,
        log_offset: int | None,
        read_engine: bool,
    ) -> None:
        """Thread side: read what changed and post it to the app."""
        snap = Snapshot(watch_id=watch_id, since_id=since_id, log_offset=log_offset)
        try:
            runs = self.store.runs_without_config()
            if runs != self._last_runs:
                snap.runs = self._last_runs = runs
            if watch_id is not None:
                snap.metrics = self.store.metrics(watch_id, since_id=since_id)
                if log_path is not None:
                    snap.log_text, snap.log_offset, snap.log_reset = runlog.read_new(
                        log_path, log_offset
                    )
            if read_engine:
                snap.engine, snap.engine_read = engine_status(self.home), True
        except Exception as e:  # a locked or half-migrated database must not kill the UI
            snap.error = f"{type(e).__name__}: {e}"
        self.post_message(Polled(snap))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "poll" and event.state in (
            WorkerState.ERROR,
            WorkerState.CANCELLED,
        ):
            self._polling = False

    def on_polled(self, message: Polled) -> None:
        snap = message.snapshot
        self._polling = False
        runs_changed = watch_changed = False
        if snap.error:
            self.log.warning(f"store read failed: {snap.error}")
        if snap.runs is not None:
            self._apply_runs(snap.runs)
            runs_changed = True
        if snap.engine_read:
            self.engine = snap.engine
        if snap.engine_read or runs_changed:
            self.sub_title = self.header_text()
        watch = self.followed
        if watch is not None and watch.run_id == snap.watch_id:
            run = self.runs_by_id.get(watch.run_id)
            if run is not None and run.attempts != watch.attempts:
                # resumed: metrics past the checkpoint were rewritten, start over
                self.followed = Watch(watch.run_id, run.attempts)
                self._log_text, self._log_reset = "", True
                watch_changed = True
            elif snap.since_id == watch.last_id:
                if snap.metrics:
                    watch.add(snap.metrics)
                    watch_changed = True
                if snap.log_text or snap.log_reset or watch.log_offset is None:
                    watch.log_offset = snap.log_offset
                    watch_changed = True
                    self._queue_log(snap.log_text, snap.log_reset)
        first = not self.loaded
        self.loaded = True
        self.polls += 1
        if runs_changed or watch_changed or first:
            for screen in self.screen_stack:
                screen.post_message(DataChanged(runs_changed or first, watch_changed))
        if self._poll_again:
            self._poll_again = False
            self.poll()

    def _queue_log(self, text: str, reset: bool) -> None:
        if reset:
            self._log_text, self._log_reset = text, True
        else:
            self._log_text += text
        if len(self._log_text) > runlog.CHUNK_BYTES:  # nobody looked for a while: keep the tail
            self._log_text = self._log_text[-runlog.TAIL_BYTES :].partition("\n")[2]
            self._log_reset = True

    def header_text(self) -> str:
        text = f"{printable(short_path(self.home))} · {engine_text(self.engine)}"
        queued = sum(1 for r in self.runs if r.status == "queued")
        if queued and not self.engine:
            text += f" · {queued} queued: E starts it"
        return text

    def take_log(self) -> tuple[str, bool] | None:
        """Log text read since the log tail last asked (and whether to clear it first)."""
        if not self._log_text and not self._log_reset:
            return None
        feed = (self._log_text, self._log_reset)
        self._log_text, self._log_reset = "", False
        return feed

    def _apply_runs(self, runs: list[Run]) -> None:
        before = self.runs_by_id
        self.runs = runs
        self.runs_by_id = {r.id: r for r in runs}
        if not self.loaded:
            return  # runs that finished while the app was closed are no news
        finished = [
            r
            for r in runs
            if (old := before.get(r.id)) is not None
            and old.status != r.status
            and r.status in ("done", "failed", "cancelled")
        ]
        if not finished:
            return
        # a fused group's runs end a few commits apart: gather them for one toast, said
        # once no run has ended for ANNOUNCE_WAIT_S (at the latest ANNOUNCE_MAX_S after
        # the first)
        now = time.monotonic()
        if not self._ended:
            self._ended_since = now
        self._ended += finished
        if self._ended_timer is not None:
            self._ended_timer.stop()
        wait = min(ANNOUNCE_WAIT_S, max(0.0, self._ended_since + ANNOUNCE_MAX_S - now))
        self._ended_timer = self.set_timer(wait, self._announce_ended)

    def _announce_ended(self) -> None:
        finished, self._ended, self._ended_timer = self._ended, [], None
        latest = {r.id: self.runs_by_id.get(r.id, r) for r in finished}
        finished = list(latest.values())
        if len(finished) == 1:
            self._announce(finished[0])
        elif finished:
            self._announce_many(finished)
        if self.bell_on and any(r.status in ("done", "failed") for r in finished):
            self.bell()

    def _announce(self, run: Run) -> None:
        what = display.name(run)
        if run.status == "done":
            best = f" · best top-1 {run.best_top1:.2f}" if run.best_top1 is not None else ""
            self.notify(f"{what}{best}", title="run finished", timeout=10, markup=False)
        elif run.status == "failed":
            error = (run.error or "").strip().splitlines()
            detail = f"\n{error[-1][:200]}" if error else ""
            self.notify(
                f"{what}{detail}", title="run failed", severity="error", timeout=15, markup=False
            )
        else:
            self.notify(what, title="run cancelled", severity="warning", timeout=6, markup=False)

    def _announce_many(self, runs: list[Run]) -> None:
        """Fused runs end together: one toast for all of them, not a stack over the screen."""
        counts: dict[str, int] = {}
        for r in runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        title = f"{len(runs)} runs ended: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        lines = []
        for r in runs[:ANNOUNCE_LINES]:
            best = f" · {r.best_top1:.2f}" if r.best_top1 is not None else ""
            lines.append(f"{display.name(r)} · {r.status}{best}")
        if len(runs) > ANNOUNCE_LINES:
            lines.append(f"… and {len(runs) - ANNOUNCE_LINES} more in the runs view")
        severity = "error" if "failed" in counts else "information"
        self.notify("\n".join(lines), title=title, severity=severity, timeout=15, markup=False)


def run_app(home: str | Path | None = None) -> None:
    """Entry point of `kdtui` without a command."""
    KdApp(home).run()
