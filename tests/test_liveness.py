"""A `running` run whose process is gone is seen for what it is, by every reader.

`kdtui ls`, cancel, resume and rm (and the app, through the same
engine.core.liveness check) treat it as dead; the engine's recovery honours a
cancel asked while nobody watched; `kdtui run` stopped by SIGTERM or SIGHUP
(a dropped SSH session) ends its runs cancelled and resumable and says how
to resume them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from engine.core import checkpoint as ckptmod
from engine.core import layout, liveness, reading
from engine.core.store import Store
from engine.daemon import client
from tests import test_engine

Box, tiny = test_engine.Box, test_engine.tiny
box = test_engine.box  # the fixture: a fresh store whose engine is stopped afterwards

ROOT = Path(__file__).resolve().parent.parent


def kdtui(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDTUI_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-m", "kdtui.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        **kw,
    )


@pytest.fixture
def holder():
    """A live process that looks like `kdtui run` (the liveness check reads its command line)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kdtui", "run"])
    yield proc
    proc.kill()
    proc.wait()


def test_the_liveness_check_trusts_only_a_live_kdtui_process_of_this_host(store, holder):
    runs = store.submit(reading.loads(tiny("live", seeds=[0, 1, 2, 3]), file="live.toml"))
    store.claim(runs[0].id, pid=holder.pid)
    store.claim(runs[1].id, pid=1)  # init: alive, but no kdtui process
    store.claim(runs[2].id, pid=None)  # claimed; the engine sets the pid a fork later
    store.claim(runs[3].id, pid=1, host="another-box")  # nothing here can tell
    a, b, c, d = (store.run(r.id) for r in runs)
    assert not liveness.process_gone(a) and liveness.shown_status(a) == "running"
    assert liveness.process_gone(b) and liveness.shown_status(b) == "dead"
    assert not liveness.process_gone(c)
    assert liveness.process_gone(c, now=time.time() + liveness.UNCLAIMED_GRACE_S + 1)
    assert not liveness.process_gone(d)
    queued = store.submit(reading.loads(tiny("q"), file="q.toml"))[0]
    assert liveness.shown_status(queued) == "queued"


def test_ls_cancel_resume_and_rm_see_a_dead_run_for_what_it_is(store, home, holder):
    runs = store.submit(reading.loads(tiny("dead", seeds=[0, 1, 2, 3]), file="dead.toml"))
    alive, *dead = (r.id for r in runs)
    store.claim(alive, pid=holder.pid)
    for run_id in dead:
        store.claim(run_id, pid=1)

    ls = kdtui(home, "ls")
    assert ls.returncode == 0
    rows = {line.split()[1]: line.split()[3] for line in ls.stdout.splitlines() if "│" in line}
    assert rows[str(alive)] == "running" and all(rows[str(i)] == "dead" for i in dead)
    ids = " ".join(map(str, dead))
    assert f"`kdtui resume {ids}` continues, `kdtui cancel {ids}` ends it" in ls.stdout

    one, two, three = dead
    out = kdtui(home, "cancel", str(one))
    assert "cancelled (its process was gone)" in out.stdout
    assert store.run(one).status == "cancelled"

    out = kdtui(home, "resume", str(two), "--no-start")
    assert out.returncode == 0 and "queued to continue" in out.stdout
    assert store.run(two).status == "queued"

    out = kdtui(home, "rm", str(three), "--yes")
    assert out.returncode == 0 and "removed 1 run" in out.stdout
    assert not runs[3].path.exists()

    # the live one is still what it was: rm and resume refuse, cancel asks it to stop
    assert kdtui(home, "rm", str(alive), "--yes").returncode == 2
    refused = kdtui(home, "resume", str(alive), "--no-start")
    assert refused.returncode == 2 and "is running" in refused.stderr
    assert "cancelling" in kdtui(home, "cancel", str(alive)).stdout


def test_engine_recovery_honours_a_cancel_asked_while_the_worker_was_dead(box):
    (run,) = box.store.submit(reading.loads(tiny("orphan"), file="orphan.toml"))
    box.store.claim(run.id, pid=1)
    box.store.update(run.id, cancel_requested=1)  # `kdtui cancel` while no engine ran
    client.ensure_running(box.home)  # recovery runs before the engine reports "started"
    after = box.run(run.id)
    assert after.status == "cancelled", (after.status, after.error)
    assert "cancelled (worker 1 gone)" in after.error
    assert "re-queued" not in (run.path / "log.txt").read_text()


@pytest.mark.slow
def test_an_adopted_worker_that_finishes_is_not_logged_as_died(box):
    box.cli("engine", "start")
    box.cli("submit", box.write("adopt.toml", tiny("adopt", epochs=2, steps=6)))
    run = box.wait_training(1)
    os.kill(box.engine_pid(), signal.SIGKILL)
    box.wait(lambda: client.status(box.home) is None, "the engine to die")
    box.cli("engine", "start")  # adopts the live worker
    box.wait_status(1, "done")
    log = box.home / layout.ENGINE_LOG
    line = box.wait(
        lambda: next(
            (x for x in log.read_text().splitlines() if f"] worker {run.pid} (runs [1])" in x),
            None,
        ),
        "the engine to notice the adopted worker ended",
    )
    assert line.endswith("exited") and "died" not in line


# ---------------------------------------------------------------- kdtui run and signals


def foreground(box: Box, name: str, **kw) -> subprocess.Popen:
    exp = box.write(f"{name}.toml", tiny(name, seeds=[0, 1], epochs=30, steps=2))
    return subprocess.Popen(
        [sys.executable, "-m", "kdtui.cli", "run", str(exp)],
        cwd=box.root,
        env={**os.environ, "COLUMNS": "300"},
        **kw,
    )


def after_first_epoch(box: Box) -> None:
    box.wait(lambda: (r := box.store.runs()) and r[0].epoch >= 1, "the first epoch", timeout=120)


def assert_closed_and_resumable(box: Box, reason: str) -> None:
    first, second = box.store.runs()
    assert first.status == "cancelled" and first.error.startswith(reason)
    assert f"`kdtui resume {first.id}` continues it" in first.error
    assert second.status == "cancelled" and "before it started" in second.error
    assert first.pid is None and not liveness.process_gone(first)
    # resumable: a valid checkpoint, accepted by `kdtui resume`
    last = ckptmod.inspect(first.path / "last.pth")
    assert last.ok and last.sealed and last.epoch >= 1
    again = kdtui(box.home, "resume", "1", "2", "--no-start")
    assert again.returncode == 0, again.stderr
    assert [r.status for r in Store(box.home).runs()] == ["queued", "queued"]


@pytest.mark.slow
def test_kdtui_run_stopped_by_sigterm_leaves_resumable_runs_and_prints_their_ids(box):
    proc = foreground(box, "term", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        after_first_epoch(box)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM: finished epochs are kept; `kdtui resume 1 2` continues" in out
    assert_closed_and_resumable(box, "stopped by SIGTERM")


@pytest.mark.slow
def test_kdtui_run_whose_terminal_hangs_up_leaves_resumable_runs(box):
    """A dropped SSH session: the pseudo-terminal closes, the kernel sends SIGHUP, and every
    later write to the terminal fails with EIO."""
    master, slave = os.openpty()

    def take_terminal():  # the new session's controlling terminal, as sshd sets it up
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = foreground(
        box,
        "hup",
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=take_terminal,
    )
    os.close(slave)
    drain = threading.Thread(target=_drain, args=(master,), daemon=True)
    drain.start()
    try:
        after_first_epoch(box)
    finally:
        os.close(master)  # hang up
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 128 + signal.SIGHUP
    assert_closed_and_resumable(box, "its terminal closed (SIGHUP)")


def _drain(fd: int) -> None:
    """Read the terminal so the progress display never blocks on a full buffer."""
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass
