"""Is the process recorded for a run still running it? One answer for every reader. Torch-free.

A `running` row outlives its process when a worker is SIGKILLed, a
foreground `kdtui run` loses its terminal, or the machine reboots while no
engine watches. The engine, `kdtui ls|cancel|resume|rm` and the app all ask
`process_gone` (a live pid is trusted only if it is old enough to be the
one recorded and is a kdtui process), so each sees such a run as `dead`,
and cancel, resume and rm act on it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

PID_SLACK_S = 120.0  # a live pid whose process started later than this after its row is a reuse
UNCLAIMED_GRACE_S = 30.0  # a claimed row gets its worker's pid within this (a fork away)
DEAD = "dead"  # the status readers show for a running row whose process is gone


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state letter, start time as epoch seconds) from /proc, or None off Linux."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields_ = text[text.rindex(")") + 2 :].split()
        ticks = int(fields_[19])
        btime = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return fields_[0], btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid: int | None, not_after: float | None = None) -> bool:
    """A live, non-zombie process; with `not_after`, one that existed by then (no pid reuse)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _proc_stat(pid)
    if stat is not None:
        state, started = stat
        if state in ("Z", "X"):
            return False
        if not_after is not None and started > not_after + PID_SLACK_S:
            return False
    return True


def cmdline(pid: int) -> bytes | None:
    """The process's command line, or None where it cannot be read (no /proc)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def is_worker_process(pid: int) -> bool:
    cmd = cmdline(pid)
    return cmd is not None and b"engine.worker" in cmd


def run_process_alive(pid: int | None, since: float) -> bool:
    """The process recorded for a run still runs it: alive, old enough, and a kdtui process.

    A bare pid check would trust whatever reused the number after a reboot.
    """
    if not pid_alive(pid, since):
        return False
    cmd = cmdline(pid)
    return cmd is None or b"engine.worker" in cmd or b"kdtui" in cmd


def row_time(run) -> float:
    """The latest time the row's pid was known to be set: its process started before this."""
    return max(t for t in (run.created, run.started, run.heartbeat) if t is not None)


def process_gone(run, now: float | None = None) -> bool:
    """A `running` row whose process no longer runs it (on this host; others are trusted)."""
    if run.status != "running":
        return False
    if getattr(run, "job_id", None):
        return False  # a batch job (Slurm): the engine asks the scheduler, a pid cannot tell
    if run.host and run.host != socket.gethostname():
        return False  # another machine's process: nothing here can tell
    if not run.pid:
        # claimed, its worker not started yet: the engine sets the pid a fork later
        now = time.time() if now is None else now
        return now - row_time(run) > UNCLAIMED_GRACE_S
    return not run_process_alive(run.pid, row_time(run))


def shown_status(run) -> str:
    """The status to show: `dead` for a running row whose process is gone, `queued` for one
    whose batch job still waits in the scheduler's queue (its reason: `job_text`)."""
    if run.status == "running" and (getattr(run, "job_state", None) or "").startswith("PENDING"):
        return "queued"
    return DEAD if process_gone(run) else run.status


def job_text(run) -> str:
    """A batch job as `kdtui ls` and the app show it: "123_0 node1 RUNNING",
    "123_1 PENDING (Priority)"; empty for a run with no job."""
    job_id = getattr(run, "job_id", None)
    if not job_id:
        return ""
    parts = [job_id, getattr(run, "job_node", None) or "", getattr(run, "job_state", None) or ""]
    return " ".join(p for p in parts if p)
