"""What front ends call: start, stop, status and ensure_running of a store's engine.

Torch-free and quick: the app polls `status` from a thread; `start` spawns
`python -m engine.daemon --detach` and returns once it holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.core import layout, runlog, safefs
from engine.core.layout import home_path
from engine.core.liveness import is_worker_process, pid_alive
from engine.core.store import Store
from engine.daemon import backends
from engine.daemon import options as optmod
from engine.daemon.lock import EXIT_RUNNING, EngineError, EngineRunning, lock_holder
from engine.daemon.processes import child_env, send, signal_group, wait_for

LOG_ROTATE_BYTES = 10 * 2**20


def read_state(home: str | Path | None = None) -> dict[str, Any] | None:
    try:
        return json.loads(safefs.read_text(home_path(home) / layout.ENGINE_STATE))
    except (OSError, ValueError):
        return None


def status(home: str | Path | None = None) -> dict[str, Any] | None:
    """The running engine of this store (pid, started, uptime, slots, workers), or None."""
    home = home_path(home)
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
    options: optmod.Options | None = None,
    timeout: float = 30.0,
    **kwargs: Any,
) -> int:
    """Start a detached engine for this store and return its pid; EngineRunning if one runs.

    Without `options`, keyword options override the ones saved by `kdtui engine start`.
    """
    home = home_path(home)
    Store(home).close()  # creates the private store directory before anything lands in it
    opts = options if options is not None else optmod.load(home, kwargs)
    backends.create(opts, home)  # ValueError: options it cannot work with
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
        env=child_env({}),
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
    home = home_path(home)
    st = status(home)
    if st is not None:
        pid = int(st["pid"])
        send(pid, signal.SIGTERM)
        if not wait_for(lambda: lock_holder(home) is None, timeout):
            send(pid, signal.SIGKILL)
            wait_for(lambda: lock_holder(home) is None, 5.0)
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
        jobs = {str(w["job"]) for w in workers if w.get("job")}
        if jobs:  # the Slurm backend's: cancelled, their runs re-queued like a worker's
            from engine.daemon.backends.slurm import scancel_and_wait

            scancel_and_wait(sorted(jobs), timeout)
        pids = {int(w["pid"]) for w in workers if w.get("pid")}
        for run in store.runs(status="running"):  # workers started after the snapshot
            if run.pid and is_worker_process(run.pid):
                pids.add(run.pid)
        live = [p for p in pids if pid_alive(p) and is_worker_process(p)]
        for p in live:
            signal_group(p, signal.SIGTERM)
            signal_group(p, signal.SIGCONT)
        if not wait_for(lambda: not any(pid_alive(p) for p in live), timeout):
            for p in live:
                signal_group(p, signal.SIGKILL)
            wait_for(lambda: not any(pid_alive(p) for p in live), 5.0)
        requeued = []
        for run in store.runs(status="running"):
            if run.pid in pids or (run.job_id and run.job_id in jobs):
                store.requeue(run.id, resume=True)
                runlog.note(run.path, "engine stopped with its runs; re-queued")
                requeued.append(run.id)
        return requeued
    finally:
        store.close()


def serve_in_terminal(home: str | Path | None, options: optmod.Options) -> int:
    """`kdtui engine start --foreground`: the engine in this process (Ctrl-C stops it)."""
    from engine.daemon import server

    return server.serve_in_terminal(home, options)
