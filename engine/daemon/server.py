"""The engine process: the loop that places queued runs on free slots, and its process.

`Engine.step` is one pass: ingest the run folders of queued and running runs
(workers write only their folders), reap finished workers, find dead ones, escalate
ignored cancels, then start ready runs (engine.daemon.scheduling decides where).
`serve` runs it in this process until SIGTERM; `__main__` detaches it first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.core import layout, runfolder, runlog, safefs
from engine.core.layout import home_path
from engine.core.liveness import is_worker_process, process_gone, row_time, run_process_alive
from engine.core.store import Run, Store, StoreError
from engine.daemon import backends
from engine.daemon.backends import Backend, Handle, Launch
from engine.daemon.lock import EXIT_RUNNING, EngineRunning, acquire_lock
from engine.daemon.options import Options
from engine.daemon.processes import WorkerProcess
from engine.daemon.scheduling import Slot, dependency, group_gpus, place

log = logging.getLogger("kdtui.engine")


@dataclass
class Engine:
    """The loop; where runs train is its backend's (engine.daemon.backends: local, slurm)."""

    store: Store
    options: Options
    backend: Backend
    started: float = field(default_factory=time.time)
    workers: dict[Any, Handle] = field(default_factory=dict)  # by handle key: pid, job id
    stopping: bool = False
    _last_state: str = ""
    _state_failing: bool = False
    _waiting: dict[int, str] = field(default_factory=dict)
    # run id -> its [run] device, nproc_per_node and nnodes: a run's config never changes, so
    # the engine parses it once
    _requests: dict[int, tuple[str, int, int]] = field(default_factory=dict)

    @property
    def slots(self) -> list[Slot]:
        return self.backend.slots

    # ------------------------------------------------------------ lifecycle
    def serve(self) -> None:
        while not self.stopping:
            try:
                self.step()
            except Exception:  # a bad row or a busy database never kills the queue
                log.exception("engine step failed; continuing")
            self.write_state()
            deadline = time.monotonic() + self.options.poll
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.1, self.options.poll))
        busy = [w.key for w in self.workers.values()]
        log.info(
            "engine stopping; %s",
            f"workers {busy} keep training and the next engine adopts them"
            if busy
            else "no workers running",
        )
        self.write_state()

    def recover(self) -> None:
        """Adopt live workers of an earlier engine; re-queue runs whose worker is gone."""
        self.store.ingest(everything=True)  # what changed in any folder while none watched
        groups: dict[int, list[Run]] = {}
        running = self.store.runs(status="running")
        adopted = set()
        for handle in self.backend.adopt(running):
            self.workers[handle.key] = handle
            adopted.update(handle.run_ids)
            log.info("adopted %s (runs %s)", handle.key, handle.run_ids)
        for run in running:
            if run.id in adopted:
                continue
            if run.pid and run_process_alive(run.pid, row_time(run)):
                if is_worker_process(run.pid):
                    groups.setdefault(run.pid, []).append(run)
                continue  # a foreground `kdtui run`: watched, not ours
            if run.cancel_requested:  # cancelled while nobody watched: what was asked, not a retry
                how = f"worker {run.pid} gone" if run.pid else "no worker"
                if self.store.settle_gone(run, "cancelled", f"cancelled ({how})"):
                    runlog.note(run.path, f"engine: cancelled ({how})")
                    log.info("run %d: cancel requested and its worker is gone: cancelled", run.id)
                continue
            if self.options.recover:
                self.store.requeue(run.id, resume=True)
                runlog.note(run.path, "engine: worker gone after a restart; re-queued")
                log.info("run %d: worker gone after a restart; re-queued to resume", run.id)
            else:
                self._fail(run, "worker gone while the engine was down")
        for pid, runs in groups.items():
            slots = self._free_slots_for(runs[0].gpu, self._slots_of(runs[0]))
            self.workers[pid] = WorkerProcess(pid, [r.id for r in runs], slots, time.time())
            log.info(
                "adopted worker %d (runs %s) on %s",
                pid,
                [r.id for r in runs],
                ", ".join(s.name for s in slots) or "no slot",
            )

    def _busy(self) -> set[Slot]:
        return {s for w in self.workers.values() for s in w.slots}

    def _free_slots_for(self, gpu: str | None, nproc: int) -> tuple[Slot, ...]:
        """The slots an adopted worker holds: one per GPU it was shown ("0,1"), or `nproc`
        CPU slots (as many as are free)."""
        busy = self._busy()
        free = [s for s in self.slots if s not in busy]
        if not gpu:
            return tuple(s for s in free if s.gpu is None)[:nproc]
        held = []
        for g in gpu.split(","):
            s = next((s for s in free if s.gpu == g and s not in held), None)
            if s is not None:
                held.append(s)
        return tuple(held)

    # ------------------------------------------------------------ one pass
    def step(self) -> None:
        self.store.ingest()  # what the workers appended to their run folders since
        self.reap()
        running = self.store.runs(status="running")
        self.find_dead(running)
        self.escalate_cancels(running)
        ready = self.ready_runs()
        nprocs = {r.id: self._slots_of(r) for r in ready}
        free = self.backend.free_slots(self._busy(), sum(nprocs.values()))
        if not ready or not free:
            return
        devices = {r.id: self._device_of(r) for r in ready}
        for run in list(ready):
            _, nproc, nnodes = self._request_of(run)
            reason = self.backend.unplaceable(devices[run.id], nproc, nnodes)
            if reason:
                self._fail(run, reason)
                ready.remove(run)
        gpu_slots = any(s.gpu is not None for s in self.slots)
        self.launch(place(ready, free, devices, gpu_slots_exist=gpu_slots, nprocs=nprocs))

    def _request_of(self, run: Run) -> tuple[str, int, int]:
        if run.id not in self._requests:
            self._requests[run.id] = _requested(run)
        return self._requests[run.id]

    def _device_of(self, run: Run) -> str:
        return self._request_of(run)[0]

    def _slots_of(self, run: Run) -> int:
        """Slots a run takes: one per process on this box (local), one per job (Slurm)."""
        return self._request_of(run)[1] if self.backend.process_slots else 1

    def reap(self) -> None:
        for run_id, values in self.backend.poll(list(self.workers.values())).items():
            self.store.update(run_id, **values)
        for key, w in list(self.workers.items()):
            code = w.exit_code()
            if code is None:
                continue
            del self.workers[key]
            how = w.exit_text(code)
            left = [
                run
                for run in self.store.runs(ids=w.run_ids)
                if run.status == "running" and (w.pid is None or run.pid in (w.pid, None))
            ]
            if w.pid is not None and w.adopted and not left:
                how = "exited"  # adopted: no exit status to read, but every run ended itself
            for run in left:
                self._worker_gone(run, how, output=w.output, crashed=code > 0)
            log.info("worker %s (runs %s) %s", key, w.run_ids, how)

    def find_dead(self, running: list[Run]) -> None:
        """Running rows whose process is gone and is not a worker we are watching."""
        ours = {rid for w in self.workers.values() for rid in w.run_ids}
        for run in running:
            if run.id in ours or not process_gone(run):
                continue
            self._worker_gone(run, "died" if run.pid else "never started")

    def _worker_gone(
        self, run: Run, how: str, *, output: Path | None = None, crashed: bool = False
    ) -> None:
        run = self.store.run(run.id)
        if run.status != "running":
            return  # it finished itself in the meantime
        if run.cancel_requested:
            self.store.finish(run.id, "cancelled", f"cancelled (worker {how})")
            runlog.note(run.path, f"engine: cancelled (worker {how})")
            return
        line = runlog.last_line(run.dir, output_first=crashed, output=output)
        if crashed and safefs.low_on_space(run.dir) and "no space left" not in line:
            line = f"{line}; " if line else ""
            line += str(safefs.DiskFull(run.dir))  # the worker could not even say so itself
        self._fail(
            run,
            f"worker {how}" + (f"; last log line: {line}" if line else ""),
        )

    def _fail(self, run: Run, reason: str) -> None:
        self.store.finish(run.id, "failed", reason)
        hint = "" if "kdtui resume" in reason else f"; `kdtui resume {run.id}` continues it"
        runlog.note(run.path, f"engine: failed: {reason}{hint}")
        log.info("run %d failed: %s", run.id, reason)

    def escalate_cancels(self, running: list[Run]) -> None:
        """A group whose runs are all cancelled (or all ended, its process still hanging on) is
        stopped by its backend: a local worker gets SIGTERM after the grace period, then
        SIGKILL; a Slurm job is scancelled."""
        by_id = {r.id: r for r in running}
        now = time.monotonic()
        for w in self.workers.values():
            live = [by_id[i] for i in w.run_ids if i in by_id]
            # a fused worker still training some of its runs keeps going
            if not all(r.cancel_requested for r in live):
                w.cancel_seen = None
                continue
            self.backend.cancel(w, now, self.options.cancel_grace, ended=not live)

    def ready_runs(self) -> list[Run]:
        ready = []
        teachers: dict[int, Run | None] = {}
        for run in self.store.runs(status="queued"):
            if run.pid:
                if run_process_alive(run.pid, row_time(run)):
                    continue  # a foreground `kdtui run` will train it
                self.store.update(run.id, pid=None)
                self.store.event(run.id, "adopted", f"holder {run.pid} is gone")
                log.info("run %d: its foreground holder %d is gone; queued here", run.id, run.pid)
            if run.depends_on is not None and run.depends_on not in teachers:
                try:
                    teachers[run.depends_on] = self.store.run(run.depends_on)
                except StoreError:
                    teachers[run.depends_on] = None
            state, reason = dependency(run, teachers.get(run.depends_on))
            if state == "ready":
                ready.append(run)
                self._waiting.pop(run.id, None)
            elif state == "fail":
                self._fail(run, reason)
            elif self._waiting.get(run.id) != reason:
                self._waiting[run.id] = reason
                log.info("run %d: %s", run.id, reason)
        return ready

    def launch(self, placements: list[tuple[tuple[Slot, ...], list[int]]]) -> None:
        """Claim each placed group and ask the backend to start them all (one Slurm pass:
        one job array). A group has one slot, or one per process of a run of several (its
        GPUs, all of them shown to the worker, which launches the ranks)."""
        launches = []
        for slots, run_ids in placements:
            reset = {"pid": None, "job_id": None, "job_node": None, "job_state": None}
            gpu = group_gpus(slots)
            claimed = [i for i in run_ids if self.store.claim(i, gpu=gpu, **reset)]
            if not claimed:
                continue
            runs = self.store.runs(ids=claimed)
            argv = runfolder.worker_args(self.store.home, [r.path for r in runs])
            _, nproc, nnodes = self._request_of(runs[0])
            launch = Launch(slots, runs, argv, nproc, nnodes)
            fused = f" fused with runs {claimed}" if len(claimed) > 1 else ""
            where = ", ".join(s.name for s in slots)
            if len(slots) > 1:
                where += f" ({len(slots)} processes)"
            for r in runs:
                runlog.note(r.path, f"engine: placed on {where}{fused}")
                if r.path != launch.output.parent:
                    runlog.note(
                        r.path,
                        name=layout.WORKER_OUTPUT,
                        message=f"engine: output of this fused worker: {launch.output}",
                    )
            launches.append(launch)
        for launch, handle in zip(launches, self.backend.start(launches)):
            if isinstance(handle, Exception):
                e = handle
                if isinstance(e, OSError) and safefs.is_disk_full(e):
                    why = str(safefs.DiskFull(launch.output))
                else:
                    why = str(e)
                for r in launch.runs:
                    self._fail(r, f"could not start a worker: {why}")
                continue
            values = self.backend.row_values(handle)
            for i in handle.run_ids:
                self.store.update(i, **values)
            self.workers[handle.key] = handle
            where = ", ".join(s.name for s in handle.slots)
            log.info("worker %s: runs %s on %s", handle.key, handle.run_ids, where)

    # ------------------------------------------------------------ state for clients
    def state(self) -> dict[str, Any]:
        by_slot = {s.name: w for w in self.workers.values() for s in w.slots}
        # a Slurm engine's slots are made per job: one each
        slots = list(self.slots) if self.backend.fixed_slots else []
        names = {s.name for s in slots}
        slots += [s for w in self.workers.values() for s in w.slots if s.name not in names]
        return {
            "pid": os.getpid(),
            "started": self.started,
            "home": str(self.store.home),
            "cwd": os.getcwd(),
            "options": asdict(self.options),
            "stopping": self.stopping,
            "slots": [
                {
                    "name": s.name,
                    "gpu": s.gpu,
                    "worker": by_slot[s.name].pid if s.name in by_slot else None,
                    "job": by_slot[s.name].describe().get("job") if s.name in by_slot else None,
                    "runs": by_slot[s.name].run_ids if s.name in by_slot else [],
                }
                for s in slots
            ],
            "workers": [
                {
                    "pid": w.pid,
                    "runs": w.run_ids,
                    "slot": ", ".join(s.name for s in w.slots) or None,
                    "started": w.started,
                    **w.describe(),
                }
                for w in self.workers.values()
            ],
        }

    def write_state(self) -> None:
        text = json.dumps(self.state(), indent=1)
        if text != self._last_state:
            try:
                safefs.write_private(self.store.home / layout.ENGINE_STATE, text)
            except OSError as e:  # a full disk: clients read a stale snapshot until space is back
                if not self._state_failing:
                    log.warning("could not write %s: %s", layout.ENGINE_STATE, e)
                self._state_failing = True
                return
            if self._state_failing:
                log.info("%s written again", layout.ENGINE_STATE)
            self._state_failing = False
            self._last_state = text


def _requested(run: Run) -> tuple[str, int, int]:
    """The run's `[run] device`, `nproc_per_node` and `nnodes` (what its worker takes), from
    one parse of its stored config ("auto", 1, 1 if it cannot be read)."""
    try:
        cfg = run.load_config().run
    except Exception:  # a row the worker will reject with the reason; do not stall the queue
        return "auto", 1, 1
    return cfg.device, cfg.nproc_per_node, cfg.nnodes


def setup_logging(stream) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s engine[%(process)d] %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def detach(home: Path) -> int | None:
    """Fork a session-less grandchild that owns nothing of the caller; the parent reports.

    Returns None in the engine process; in the parent, the exit code once
    the engine has taken (or failed to take) the store's lock.
    """
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        with os.fdopen(r) as f:
            word = f.read().strip()
        print(word, flush=True)
        if word.startswith("started"):
            return 0
        return EXIT_RUNNING if word.startswith("running") else 1
    os.close(r)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    logfd = safefs.open_fd(home / layout.ENGINE_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(null)
    os.close(logfd)
    os.environ["KDTUI_ENGINE_READY_FD"] = str(w)
    return None


def _report(word: str) -> None:
    fd = os.environ.pop("KDTUI_ENGINE_READY_FD", None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), f"{word}\n".encode())
        os.close(int(fd))


def serve(home: Path, options: Options) -> int:
    """Run the engine in this process until SIGTERM/SIGINT; the exit code."""
    try:
        backend = backends.create(options, home)
    except ValueError as e:
        log.error("%s", e)
        _report("error")
        return 2
    slots = backend.slots
    store = Store(home)
    try:
        acquire_lock(home)
    except EngineRunning as e:
        log.error("%s", e)
        _report(f"running {e.pid or 0}")
        return EXIT_RUNNING
    engine = Engine(store, options, backend)

    def on_signal(signum, frame):
        engine.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info(
        "engine pid %d on %s: %d slot(s) %s",
        os.getpid(),
        home,
        len(slots),
        ", ".join(s.name for s in slots),
    )
    engine.recover()
    engine.write_state()
    _report(f"started {os.getpid()}")  # after recovery: a client sees adopted workers at once
    engine.serve()
    return 0


def serve_in_terminal(home: str | Path | None, options: Options) -> int:
    """`kdtui engine start --foreground`: the engine in this process, logging here and to engine.log."""
    home = home_path(home)
    Store(home).close()
    setup_logging(sys.stderr)
    log_path = home / layout.ENGINE_LOG
    logfile = logging.StreamHandler(
        os.fdopen(safefs.open_fd(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")
    )
    logfile.setFormatter(log.handlers[0].formatter)
    log.addHandler(logfile)
    return serve(home, options)
