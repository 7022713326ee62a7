"""The engine: a detached process that trains the store's queue on every GPU slot.

Torch-free at import: the app and the CLI import this module to start, query
and stop the engine; only the worker processes it spawns import torch.

One engine per store, enforced by an `fcntl.flock` on `<home>/engine.lock`
held for the engine's whole life (the kernel drops it when the process
dies, so a crashed engine never blocks the next one). The engine opens no
network port: the store, the lock file and `engine.json` (a snapshot of
slots and workers) are its only interface.

Workers run in their own sessions, so they outlive the engine: a restarted
engine adopts live workers and re-queues (resume) runs whose worker is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.core import layout, runlog, safefs
from engine.core.devices import ENGINE_GPU_ENV, HOST_DEVICES, cuda_index
from engine.core.layout import default_home
from engine.core.liveness import (  # noqa: F401  (re-exported: the engine's API before liveness.py)
    PID_SLACK_S,
    is_worker_process,
    pid_alive,
    process_gone,
    row_time,
    run_process_alive,
)
from engine.core.store import Run, Store, StoreError

LOG_ROTATE_BYTES = 10 * 2**20
EXIT_RUNNING = 3  # `python -m engine.daemon` when another engine holds the lock

log = logging.getLogger("kdtui.engine")


class EngineError(RuntimeError):
    """The engine could not be started or reached; the message says why."""


class EngineRunning(EngineError):
    """Another engine already holds this store's lock."""

    def __init__(self, pid: int | None, home: Path):
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(
            f"an engine is already running for {home} ({who}); "
            "stop it first with `kdtui engine stop`"
        )


# ---------------------------------------------------------------- options


@dataclass
class Options:
    """How the engine slices the machine; saved by `kdtui engine start` for later auto-starts."""

    gpus: str | None = None  # None: every visible GPU; "0,2"; "none": CPU only
    slots_per_gpu: int = 1
    cpu_slots: int = 1
    recover: bool = True
    cancel_grace: float = 20.0  # seconds a cancelled worker gets before SIGTERM, then SIGKILL
    poll: float = 0.5

    def argv(self) -> list[str]:
        out = [
            f"--slots-per-gpu={self.slots_per_gpu}",
            f"--cpu-slots={self.cpu_slots}",
            f"--cancel-grace={self.cancel_grace}",
            f"--poll={self.poll}",
        ]
        if self.gpus is not None:
            out.append(f"--gpus={self.gpus}")
        if not self.recover:
            out.append("--no-recover")
        return out


def make_options(home: Path, options: dict[str, Any]) -> Options:
    """Explicit options win; otherwise the ones saved by the last `kdtui engine start`."""
    saved: dict[str, Any] = {}
    path = home / layout.ENGINE_OPTIONS
    if path.exists():
        try:
            saved = json.loads(safefs.read_text(path))
        except (OSError, ValueError):
            saved = {}
    known = set(Options.__dataclass_fields__)
    bad = set(options) - known
    if bad:
        raise TypeError(f"unknown engine options {sorted(bad)}")
    merged = {k: v for k, v in saved.items() if k in known}
    merged.update({k: v for k, v in options.items() if v is not None})
    return Options(**merged)


def save_options(home: Path, options: Options) -> None:
    _write_private(home / layout.ENGINE_OPTIONS, json.dumps(asdict(options), indent=1))


# ---------------------------------------------------------------- slots and placement


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: str | None  # the CUDA_VISIBLE_DEVICES value of its workers; None: CPU
    name: str


class Placeable(Protocol):
    id: int
    priority: int
    fuse_key: str | None
    resume: int


def discover_gpus(env: dict[str, str] | None = None) -> list[str]:
    """GPU ids this process may use, torch-free: CUDA_VISIBLE_DEVICES if set, else NVML."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for item in visible.split(","):
            item = item.strip()
            if not item or item.startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on
            ids.append(item)
        return ids
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, no GPU: a CPU box
        return []


def parse_gpus(spec: str | None, visible: Sequence[str]) -> list[str]:
    """`--gpus`: None means all visible; "none"/"cpu"/"" means CPU only."""
    if spec is None:
        return list(visible)
    spec = spec.strip()
    if spec.lower() in ("", "none", "cpu"):
        return []
    ids = [s.strip() for s in spec.split(",") if s.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {spec}: a GPU is listed twice")
    if visible:
        unknown = [i for i in ids if i not in visible]
        if unknown:
            raise ValueError(
                f"--gpus {spec}: GPU {', '.join(unknown)} is not visible here "
                f"(visible: {', '.join(visible)})"
            )
    return ids


def build_slots(gpus: Sequence[str], slots_per_gpu: int = 1, cpu_slots: int = 1) -> list[Slot]:
    """GPU slots interleaved across GPUs (gpu0, gpu1, gpu0.1, ...) so work spreads before it
    packs, then `cpu_slots` CPU slots: every run's home on a CPU box, and on a GPU box the
    home of runs with `device = "cpu"` (which never take a GPU slot)."""
    if slots_per_gpu < 1 or cpu_slots < 1:
        raise ValueError("slots per GPU and CPU slots must be at least 1")
    slots: list[Slot] = []
    for k in range(slots_per_gpu if gpus else 0):
        for g in gpus:
            name = f"gpu{g}" if slots_per_gpu == 1 else f"gpu{g}.{k}"
            slots.append(Slot(len(slots), g, name))
    for k in range(cpu_slots):
        slots.append(Slot(len(slots), None, f"cpu{k}"))
    return slots


# ---------------------------------------------------------------- devices
def slot_fits(device: str, slot: Slot, gpu_slots_exist: bool) -> bool:
    """Whether a run with `[run] device = device` may train on `slot`.

    cpu, mps, xpu: CPU slots only (the engine's GPU slots are NVIDIA GPUs, shown to a
    worker through CUDA_VISIBLE_DEVICES; an Apple or Intel GPU belongs to the host). cuda: any
    GPU slot. cuda:N: the slots of GPU N, numbered as the
    engine numbers them (`--gpus`, i.e. CUDA_VISIBLE_DEVICES of the engine). auto: GPU
    slots when the engine has any (a GPU run never lands on a CPU slot), else CPU slots.
    """
    device = (device or "auto").strip()
    if device in HOST_DEVICES:
        return slot.gpu is None
    if device == "auto":
        return (slot.gpu is not None) == gpu_slots_exist
    index = cuda_index(device)
    if index is not None:
        return slot.gpu == index
    return slot.gpu is not None  # "cuda"


def unplaceable(device: str, slots: Sequence[Slot]) -> str | None:
    """Why no slot of this engine can ever take a run with this device (None: one can)."""
    gpus = sorted({s.gpu for s in slots if s.gpu is not None})
    if any(slot_fits(device, s, bool(gpus)) for s in slots):
        return None
    if not gpus:
        return (
            f"run.device = {device!r} but this engine has no GPU (slots: "
            f'{", ".join(s.name for s in slots)}); set [run] device = "auto" or "cpu", or '
            "start the engine on a GPU box (`kdtui engine start --gpus 0`)"
        )
    return (
        f"run.device = {device!r} but this engine uses GPU {', '.join(gpus)} (cuda:N names "
        f'GPU N as `kdtui engine start --gpus` does); set [run] device = "cuda" for any GPU '
        "or restart the engine with that GPU in --gpus"
    )


def place(
    ready: Iterable[Placeable],
    free_slots: Sequence[Slot],
    devices: dict[int, str] | None = None,
    *,
    gpu_slots_exist: bool | None = None,
) -> list[tuple[Slot, list[int]]]:
    """Assign ready runs to free slots: higher priority first, then FIFO.

    Runs sharing a fuse key go to one worker together (one teacher pass for
    the group). Resumed runs go alone: a fused group must start from one epoch.
    `devices` (run id -> `[run] device`, "auto" when absent) keeps CPU runs on CPU slots
    and cuda:N runs on GPU N (`slot_fits`); a run that fits no free slot waits without
    holding up the runs behind it. `gpu_slots_exist`: whether the engine has GPU slots
    at all (default: whether a free one is GPU), which decides where "auto" runs go.
    """
    devices = devices or {}
    if gpu_slots_exist is None:
        gpu_slots_exist = any(s.gpu is not None for s in free_slots)
    order = sorted(ready, key=lambda r: (-r.priority, r.id))
    slots = list(free_slots)
    placed: list[tuple[Slot, list[int]]] = []
    taken: set[int] = set()
    for run in order:
        if not slots:
            break
        if run.id in taken:
            continue
        device = devices.get(run.id, "auto")
        slot = next((s for s in slots if slot_fits(device, s, gpu_slots_exist)), None)
        if slot is None:
            continue
        group = [run]
        if run.fuse_key and not run.resume:
            group = [
                r
                for r in order
                if r.id not in taken and r.fuse_key == run.fuse_key and not r.resume
            ]
        taken.update(r.id for r in group)
        slots.remove(slot)
        placed.append((slot, [r.id for r in group]))
    return placed


def dependency(run: Run, teacher: Run | None) -> tuple[str, str]:
    """("ready" | "wait" | "fail", reason) for a queued run whose teacher is another run."""
    if run.depends_on is None:
        return "ready", ""
    if teacher is None:
        return "fail", f"teacher run {run.depends_on} no longer exists"
    if teacher.status == "done":
        return "ready", ""
    if teacher.status in ("queued", "running"):
        return "wait", f"waiting for teacher run {teacher.id}"
    why = f": {teacher.error}" if teacher.error else ""
    return "fail", (
        f"teacher run {teacher.id} ({teacher.experiment}) {teacher.status}{why}; "
        f"`kdtui resume {teacher.id}`, then `kdtui resume {run.id}`"
    )


# ---------------------------------------------------------------- processes


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # workers lead their own session: pgid == pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _write_private(path: Path, text: str) -> None:
    safefs.write_private(path, text)


def _source_root() -> str:
    """Where the `engine` package lives, so `python -m engine.worker` works uninstalled."""
    return str(Path(__file__).resolve().parent.parent)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    root = _source_root()
    path = env.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# ---------------------------------------------------------------- the lock


def _lock_path(home: Path) -> Path:
    return home / layout.ENGINE_LOCK


def lock_holder(home: Path) -> int | None:
    """The pid of the engine holding the store's lock, or None when no engine runs."""
    path = _lock_path(home)
    for _ in range(20):
        try:
            fd = safefs.open_fd(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except safefs.UnsafePath as e:
            raise EngineError(str(e)) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 64, 0).decode(errors="replace").split()
                pid = int(text[0]) if text and text[0].isdigit() else None
                if pid is not None and pid_alive(pid):
                    return pid
                time.sleep(0.05)  # a new engine has the lock but has not written its pid yet
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
    return -1  # locked by something whose pid we cannot read


def acquire_lock(home: Path) -> int:
    """Hold the store's engine lock for this process's life; EngineRunning if taken."""
    try:
        fd = safefs.open_fd(_lock_path(home), os.O_RDWR | os.O_CREAT)
    except safefs.UnsafePath as e:
        raise EngineError(str(e)) from None
    deadline = time.monotonic() + 2.0  # clients take it shared for an instant to probe
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                text = os.pread(fd, 64, 0).decode(errors="replace").split()
                os.close(fd)
                raise EngineRunning(
                    int(text[0]) if text and text[0].isdigit() else None, home
                ) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd  # never closed: the kernel releases the lock when the process ends


# ---------------------------------------------------------------- the engine


@dataclass
class Worker:
    pid: int
    run_ids: list[int]
    slot: Slot | None
    started: float
    proc: subprocess.Popen | None = None  # None: adopted from an earlier engine
    output: Path | None = None  # its stdout/stderr (worker.log of its first run)
    cancel_seen: float | None = None
    term_sent: float | None = None
    kill_sent: float | None = None

    def exit_code(self) -> int | None:
        """None while alive; the exit status (negative: signal) once gone (-999: unknown)."""
        if self.proc is not None:
            return self.proc.poll()
        return None if pid_alive(self.pid) and is_worker_process(self.pid) else -999


@dataclass
class Engine:
    store: Store
    options: Options
    slots: list[Slot]
    started: float = field(default_factory=time.time)
    workers: dict[int, Worker] = field(default_factory=dict)
    stopping: bool = False
    _last_state: str = ""
    _state_failing: bool = False
    _waiting: dict[int, str] = field(default_factory=dict)
    _devices: dict[int, str] = field(default_factory=dict)  # run id -> [run] device

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
        busy = [w.pid for w in self.workers.values()]
        log.info(
            "engine stopping; %s",
            f"workers {busy} keep training and the next engine adopts them"
            if busy
            else "no workers running",
        )
        self.write_state()

    def recover(self) -> None:
        """Adopt live workers of an earlier engine; re-queue runs whose worker is gone."""
        groups: dict[int, list[Run]] = {}
        for run in self.store.runs(status="running"):
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
            slot = self._free_slot_for(runs[0].gpu)
            self.workers[pid] = Worker(pid, [r.id for r in runs], slot, time.time())
            log.info(
                "adopted worker %d (runs %s) on %s",
                pid,
                [r.id for r in runs],
                slot.name if slot else "no slot",
            )

    def _free_slot_for(self, gpu: str | None) -> Slot | None:
        busy = {w.slot for w in self.workers.values()}
        for s in self.slots:
            if s not in busy and s.gpu == gpu:
                return s
        return None

    # ------------------------------------------------------------ one pass
    def step(self) -> None:
        self.reap()
        running = self.store.runs(status="running")
        self.find_dead(running)
        self.escalate_cancels(running)
        ready = self.ready_runs()
        busy = {w.slot for w in self.workers.values()}
        free = [s for s in self.slots if s not in busy]
        if not ready or not free:
            return
        devices = {r.id: self._device_of(r) for r in ready}
        for run in list(ready):
            reason = unplaceable(devices[run.id], self.slots)
            if reason:
                self._fail(run, reason)
                ready.remove(run)
        gpu_slots = any(s.gpu is not None for s in self.slots)
        for slot, ids in place(ready, free, devices, gpu_slots_exist=gpu_slots):
            self.launch(slot, ids)

    def _device_of(self, run: Run) -> str:
        if run.id not in self._devices:  # a run's config never changes: parse it once
            self._devices[run.id] = _requested_device(run)
        return self._devices[run.id]

    def reap(self) -> None:
        for pid, w in list(self.workers.items()):
            code = w.exit_code()
            if code is None:
                continue
            del self.workers[pid]
            how = _exit_text(code)
            left = [
                run
                for run in self.store.runs(ids=w.run_ids)
                if run.status == "running" and run.pid in (pid, None)
            ]
            if w.proc is None and not left:
                how = "exited"  # adopted: no exit status to read, but every run ended itself
            for run in left:
                self._worker_gone(run, how, output=w.output, crashed=code > 0)
            log.info("worker %d (runs %s) %s", pid, w.run_ids, how)

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
        """A worker that ignores a cancel gets SIGTERM after the grace period, then SIGKILL."""
        by_id = {r.id: r for r in running}
        now = time.monotonic()
        grace = self.options.cancel_grace
        for w in self.workers.values():
            live = [by_id[i] for i in w.run_ids if i in by_id]
            # every run cancelled, or every run ended and the process still hangs on; a fused
            # worker still training some of its runs keeps going
            if not all(r.cancel_requested for r in live):
                w.cancel_seen = None
                continue
            if w.cancel_seen is None:
                w.cancel_seen = now
            elif w.term_sent is None and now - w.cancel_seen > grace:
                log.info(
                    "worker %d still running %.0f s after its runs were cancelled or ended: SIGTERM",
                    w.pid,
                    grace,
                )
                _signal_group(w.pid, signal.SIGTERM)
                _signal_group(w.pid, signal.SIGCONT)  # a stopped process must run to die
                w.term_sent = now
            elif w.term_sent is not None and w.kill_sent is None and now - w.term_sent > grace:
                log.info("worker %d survived SIGTERM: SIGKILL", w.pid)
                _signal_group(w.pid, signal.SIGKILL)
                w.kill_sent = now

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

    def launch(self, slot: Slot, run_ids: list[int]) -> None:
        claimed = [i for i in run_ids if self.store.claim(i, gpu=slot.gpu, pid=None)]
        if not claimed:
            return
        runs = self.store.runs(ids=claimed)
        first = runs[0].path
        out_path = first / layout.WORKER_OUTPUT
        extra = {"CUDA_VISIBLE_DEVICES": slot.gpu or "", ENGINE_GPU_ENV: slot.gpu or ""}
        if slot.gpu is None and "OMP_NUM_THREADS" not in os.environ:
            cpus = os.cpu_count() or 1
            extra["OMP_NUM_THREADS"] = str(max(1, cpus // len(self.slots)))
        if slot.gpu is not None:
            extra["CUDA_DEVICE_ORDER"] = os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        fused = f" fused with runs {claimed}" if len(claimed) > 1 else ""
        for r in runs:
            runlog.note(r.path, f"engine: placed on {slot.name}{fused}")
            if r.path != first:
                runlog.note(
                    r.path,
                    name=layout.WORKER_OUTPUT,
                    message=f"engine: output of this fused worker: {out_path}",
                )
        cmd = [
            sys.executable,
            "-m",
            "engine.worker",
            *map(str, claimed),
            "--home",
            str(self.store.home),
        ]
        try:
            out_fd = safefs.open_fd(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            with os.fdopen(out_fd, "a") as out:
                out.write(
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')} engine: {' '.join(cmd)} "
                    f"(CUDA_VISIBLE_DEVICES={extra['CUDA_VISIBLE_DEVICES']!r})\n"
                )
                out.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_child_env(extra),
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as e:
            why = str(safefs.DiskFull(out_path)) if safefs.is_disk_full(e) else str(e)
            for r in runs:
                self._fail(r, f"could not start a worker: {why}")
            return
        for i in claimed:
            self.store.update(i, pid=proc.pid)
        self.workers[proc.pid] = Worker(proc.pid, claimed, slot, time.time(), proc, out_path)
        log.info("worker %d: runs %s on %s", proc.pid, claimed, slot.name)

    # ------------------------------------------------------------ state for clients
    def state(self) -> dict[str, Any]:
        by_slot = {w.slot.name: w for w in self.workers.values() if w.slot is not None}
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
                    "runs": by_slot[s.name].run_ids if s.name in by_slot else [],
                }
                for s in self.slots
            ],
            "workers": [
                {
                    "pid": w.pid,
                    "runs": w.run_ids,
                    "slot": w.slot.name if w.slot else None,
                    "started": w.started,
                    "adopted": w.proc is None,
                }
                for w in self.workers.values()
            ],
        }

    def write_state(self) -> None:
        text = json.dumps(self.state(), indent=1)
        if text != self._last_state:
            try:
                _write_private(self.store.home / layout.ENGINE_STATE, text)
            except OSError as e:  # a full disk: clients read a stale snapshot until space is back
                if not self._state_failing:
                    log.warning("could not write %s: %s", layout.ENGINE_STATE, e)
                self._state_failing = True
                return
            if self._state_failing:
                log.info("%s written again", layout.ENGINE_STATE)
            self._state_failing = False
            self._last_state = text


def _requested_device(run: Run) -> str:
    """The run's `[run] device` from its stored config ("auto" if it cannot be read)."""
    try:
        return run.config.run.device
    except Exception:  # a row the worker will reject with the reason; do not stall the queue
        return "auto"


def _exit_text(code: int) -> str:
    if code == -999:
        return "died"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


# ---------------------------------------------------------------- client API


def _home(home: str | Path | None) -> Path:
    return (Path(home).expanduser() if home else default_home()).absolute()


def read_state(home: str | Path | None = None) -> dict[str, Any] | None:
    try:
        return json.loads(safefs.read_text(_home(home) / layout.ENGINE_STATE))
    except (OSError, ValueError):
        return None


def status(home: str | Path | None = None) -> dict[str, Any] | None:
    """The running engine of this store (pid, started, uptime, slots, workers), or None."""
    home = _home(home)
    pid = lock_holder(home)
    if pid is None:
        return None
    state = read_state(home) or {}
    if state.get("pid") != pid:
        state = {"pid": pid, "started": None, "slots": [], "workers": [], "home": str(home)}
    started = state.get("started")
    state["uptime"] = time.time() - started if started else None
    return state


def start(
    home: str | Path | None = None,
    options: Options | None = None,
    timeout: float = 30.0,
    **kwargs: Any,
) -> int:
    """Start a detached engine for this store and return its pid; EngineRunning if one runs.

    Without `options`, keyword options override the ones saved by `kdtui engine start`.
    """
    home = _home(home)
    Store(home).close()  # creates the private store directory before anything lands in it
    opts = options if options is not None else make_options(home, kwargs)
    build_slots(parse_gpus(opts.gpus, discover_gpus()), opts.slots_per_gpu, opts.cpu_slots)
    log_path = home / layout.ENGINE_LOG
    with contextlib.suppress(OSError):
        if log_path.lstat().st_size > LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_suffix(".log.1"))
    cmd = [sys.executable, "-m", "engine.daemon", "--home", str(home), "--detach", *opts.argv()]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env({}),
        start_new_session=True,
        close_fds=True,
    )
    try:
        out, errs = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise EngineError(
            f"the engine did not start within {timeout:.0f} s; see {log_path}"
        ) from None
    words = out.decode(errors="replace").split()
    if proc.returncode == 0 and len(words) == 2 and words[0] == "started":
        return int(words[1])
    if proc.returncode == EXIT_RUNNING:
        raise EngineRunning(int(words[1]) if len(words) == 2 and words[1].isdigit() else None, home)
    message = errs.decode(errors="replace").strip() or out.decode(errors="replace").strip()
    raise EngineError(f"the engine failed to start: {message or 'no output'} (see {log_path})")


def ensure_running(home: str | Path | None = None, **options: Any) -> int:
    """The pid of this store's engine, starting one (detached) when none runs."""
    st = status(home)
    if st is not None:
        return int(st["pid"])
    try:
        return start(home, **options)
    except EngineRunning as e:  # someone else started one a moment ago
        if e.pid:
            return e.pid
        st = status(home)
        if st is None:
            raise
        return int(st["pid"])


def stop(
    home: str | Path | None = None, timeout: float = 10.0, *, stop_runs: bool = False
) -> dict[str, Any] | None:
    """Stop this store's engine (SIGTERM, then SIGKILL after `timeout`); its last state or None.

    Workers keep training unless `stop_runs`: then they are stopped too and
    their runs go back to the queue to resume from their last checkpoint
    (listed under "requeued").
    """
    home = _home(home)
    st = status(home)
    if st is not None:
        pid = int(st["pid"])
        _signal(pid, signal.SIGTERM)
        if not _wait(lambda: lock_holder(home) is None, timeout):
            _signal(pid, signal.SIGKILL)
            _wait(lambda: lock_holder(home) is None, 5.0)
        st = read_state(home) or st
    if stop_runs:
        workers = (st or read_state(home) or {}).get("workers", [])
        requeued = stop_workers(home, timeout, workers)
        st = dict(st or {}, requeued=requeued) if st or requeued else None
    return st


def stop_workers(home: Path, timeout: float, workers: list[dict]) -> list[int]:
    """Stop engine workers and re-queue their runs (resume); returns the re-queued run ids."""
    store = Store(home)
    try:
        pids = {int(w["pid"]) for w in workers}
        for run in store.runs(status="running"):  # workers started after the snapshot
            if run.pid and is_worker_process(run.pid):
                pids.add(run.pid)
        live = [p for p in pids if pid_alive(p) and is_worker_process(p)]
        for p in live:
            _signal_group(p, signal.SIGTERM)
            _signal_group(p, signal.SIGCONT)
        if not _wait(lambda: not any(pid_alive(p) for p in live), timeout):
            for p in live:
                _signal_group(p, signal.SIGKILL)
            _wait(lambda: not any(pid_alive(p) for p in live), 5.0)
        requeued = []
        for run in store.runs(status="running"):
            if run.pid in pids:
                store.requeue(run.id, resume=True)
                runlog.note(run.path, "engine stopped with its runs; re-queued")
                requeued.append(run.id)
        return requeued
    finally:
        store.close()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------- the process


def _setup_logging(stream) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s engine[%(process)d] %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _detach(home: Path) -> int | None:
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
        slots = build_slots(
            parse_gpus(options.gpus, discover_gpus()), options.slots_per_gpu, options.cpu_slots
        )
    except ValueError as e:
        log.error("%s", e)
        _report("error")
        return 2
    store = Store(home)
    try:
        acquire_lock(home)
    except EngineRunning as e:
        log.error("%s", e)
        _report(f"running {e.pid or 0}")
        return EXIT_RUNNING
    engine = Engine(store, options, slots)

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


def run_foreground(home: str | Path | None, options: Options) -> int:
    """`kdtui engine start --foreground`: the engine in this process, logging here and to engine.log."""
    home = _home(home)
    Store(home).close()
    _setup_logging(sys.stderr)
    log_path = home / layout.ENGINE_LOG
    logfile = logging.StreamHandler(
        os.fdopen(safefs.open_fd(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")
    )
    logfile.setFormatter(log.handlers[0].formatter)
    log.addHandler(logfile)
    return serve(home, options)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.daemon",
        description="The kdtui engine: trains queued runs of a store on GPU/CPU slots.",
    )
    p.add_argument("--home", default=None, help="store directory (default $KDTUI_HOME)")
    p.add_argument("--gpus", default=None, help="GPU ids to use, e.g. 0,2; 'none' for CPU only")
    p.add_argument("--slots-per-gpu", type=int, default=1)
    p.add_argument(
        "--cpu-slots", type=int, default=1, help='CPU slots (runs with device = "cpu" on a GPU box)'
    )
    p.add_argument("--no-recover", dest="recover", action="store_false")
    p.add_argument("--cancel-grace", type=float, default=20.0)
    p.add_argument("--poll", type=float, default=0.5)
    p.add_argument("--detach", action="store_true", help="fork into the background")
    args = p.parse_args(argv)
    options = Options(
        gpus=args.gpus,
        slots_per_gpu=args.slots_per_gpu,
        cpu_slots=args.cpu_slots,
        recover=args.recover,
        cancel_grace=args.cancel_grace,
        poll=args.poll,
    )
    if not args.detach:
        return run_foreground(args.home, options)
    home = _home(args.home)
    Store(home).close()
    code = _detach(home)
    if code is not None:
        return code
    _setup_logging(sys.stderr)
    return serve(home, options)


if __name__ == "__main__":
    sys.exit(main())
