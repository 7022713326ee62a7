"""The engine's processes: a child's environment, signals, and a spawned worker's exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.core import runfolder
from engine.core.liveness import is_worker_process, pid_alive
from engine.daemon.scheduling import Slot


def signal_group(pid: int, sig: int) -> None:
    """Signal a worker's process group (it leads its own session: pgid == pid), then it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def send(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll until predicate() holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def source_root() -> str:
    """Where the `engine` package lives, so `python -m engine.worker` works uninstalled."""
    return str(Path(__file__).resolve().parent.parent.parent)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    root = source_root()
    path = env.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def worker_process(argv: list[str]) -> list[str]:
    """`python -m engine.worker ARGV`: a worker as a process of its own (the local backend;
    the Slurm backend calls the worker's main with the same ARGV in submitit's process)."""
    return [sys.executable, "-m", runfolder.WORKER_MODULE, *argv]


def worker_command(
    home: str | os.PathLike | None, run_dirs: list[Path], *, resume: bool = False
) -> list[str]:
    """The worker's command line (the local engine and `kdtui run` spawn it; the Slurm backend
    runs the same arguments in its job; engine.launch wraps them in torchrun for the ranks of
    a run on several processes): engine.core.runfolder.worker_args. The worker never opens
    the store's database."""
    return worker_process(runfolder.worker_args(home, run_dirs, resume=resume))


def exit_text(code: int) -> str:
    if code == -999:
        return "died"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class WorkerProcess:
    """A `python -m engine.worker` process the engine started (or adopted) on its slots: one,
    or N for a run of `nproc_per_node = N` processes (the worker launches them)."""

    pid: int
    run_ids: list[int]
    slots: tuple[Slot, ...]  # empty: adopted, and no free slot matched
    started: float
    proc: subprocess.Popen | None = None  # None: adopted from an earlier engine
    output: Path | None = None  # its stdout/stderr (worker.log of its first run)
    cancel_seen: float | None = None
    term_sent: float | None = None
    kill_sent: float | None = None

    @property
    def key(self) -> int:
        return self.pid

    def exit_text(self, code: int) -> str:
        return exit_text(code)

    @property
    def adopted(self) -> bool:
        return self.proc is None

    def describe(self) -> dict:
        return {"adopted": self.adopted}

    def exit_code(self) -> int | None:
        """None while alive; the exit status (negative: signal) once gone (-999: unknown)."""
        if self.proc is not None:
            return self.proc.poll()
        return None if pid_alive(self.pid) and is_worker_process(self.pid) else -999
