"""The store's engine lock: one engine per store, and how a client finds it.

An `fcntl.flock` on `<home>/engine.lock`, held for the engine's whole life and
released by the kernel when it dies; the file holds the holder's pid.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from engine.core import layout, safefs
from engine.core.liveness import pid_alive

EXIT_RUNNING = 3  # `python -m engine.daemon` when another engine holds the lock


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


def lock_path(home: Path) -> Path:
    return home / layout.ENGINE_LOCK


def lock_holder(home: Path) -> int | None:
    """The pid of the engine holding the store's lock, or None when no engine runs."""
    path = lock_path(home)
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
        fd = safefs.open_fd(lock_path(home), os.O_RDWR | os.O_CREAT)
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
