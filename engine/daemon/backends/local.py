"""The local backend: each run or fused group is a `python -m engine.worker` process here.

Workers run in their own sessions and outlive the engine; the engine's recovery adopts them
by the pid stored on their runs (engine.daemon.server.Engine.recover).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from engine.core import safefs
from engine.core.store import Run
from engine.daemon.backends.base import Launch
from engine.daemon.options import Options
from engine.daemon.processes import WorkerProcess, child_env, signal_group, worker_process
from engine.daemon.scheduling import Slot, slots_for, unplaceable, worker_env

log = logging.getLogger("kdtui.engine")


class Backend:
    name = "local"

    def __init__(self, options: Options, home: Path):
        self.options = options
        self.slots = slots_for(options)  # ValueError: a bad --gpus
        self.fixed_slots = True
        self.process_slots = True

    def preflight(self) -> None:
        pass  # slots_for already checked --gpus

    def unplaceable(self, device: str, nproc: int, nnodes: int = 1) -> str | None:
        if nnodes > 1:
            return (
                f"[run] nnodes = {nnodes}: a run across several nodes needs the Slurm backend; "
                "this engine trains on this box (`--backend local`): set nnodes = 1, or "
                "`kdtui engine stop`, then `kdtui engine start --backend slurm ...` on the "
                "cluster's login node"
            )
        return unplaceable(device, self.slots, nproc)

    def free_slots(self, busy: set[Slot], wanted: int) -> list[Slot]:
        return [s for s in self.slots if s not in busy]

    def start(self, launches: list[Launch]) -> list[WorkerProcess | Exception]:
        return [self._spawn(launch) for launch in launches]

    def _spawn(self, launch: Launch) -> WorkerProcess | Exception:
        slots = launch.slots
        extra = worker_env(slots, len(self.slots), dict(os.environ), os.cpu_count() or 1)
        cmd = worker_process(launch.argv)
        out_path = launch.output
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
                    env=child_env(extra),
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as e:
            return e
        ids = [r.id for r in launch.runs]
        return WorkerProcess(proc.pid, ids, slots, time.time(), proc, out_path)

    def row_values(self, handle: WorkerProcess) -> dict[str, Any]:
        return {"pid": handle.pid}

    def poll(self, handles: list[WorkerProcess]) -> dict[int, dict[str, Any]]:
        return {}  # exit_code() asks the process itself

    def cancel(self, w: WorkerProcess, now: float, grace: float, *, ended: bool) -> None:
        """The worker stops itself at its next log step; one that ignores the cancel (or hangs
        on after its runs ended) gets SIGTERM after the grace period, then SIGKILL."""
        if w.cancel_seen is None:
            w.cancel_seen = now
        elif w.term_sent is None and now - w.cancel_seen > grace:
            log.info(
                "worker %d still running %.0f s after its runs were cancelled or ended: SIGTERM",
                w.pid,
                grace,
            )
            signal_group(w.pid, signal.SIGTERM)
            signal_group(w.pid, signal.SIGCONT)  # a stopped process must run to die
            w.term_sent = now
        elif w.term_sent is not None and w.kill_sent is None and now - w.term_sent > grace:
            log.info("worker %d survived SIGTERM: SIGKILL", w.pid)
            signal_group(w.pid, signal.SIGKILL)
            w.kill_sent = now

    def adopt(self, runs: list[Run]) -> list[WorkerProcess]:
        return []  # by pid, in Engine.recover (workers of any earlier local engine)
