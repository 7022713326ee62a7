"""A full disk: the engine survives, the run fails saying so, nothing is half-written, and it
resumes once space is freed. On a real small tmpfs (mounted here when allowed: root)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from engine.core import layout, reading, runlog, safefs
from engine.core.liveness import pid_alive
from engine.core.store import Store
from engine.daemon import backends, client, server
from engine.daemon.options import Options
from tests import test_engine

Box, tiny = test_engine.Box, test_engine.tiny
CHECKPOINT_BYTES = 650_000  # a resnet8 checkpoint with its optimiser state (about 659 kB)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs, or a skip saying why there is none."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip() or made.returncode}")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)
    if os.path.ismount(mount):
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the file system, leaving about `leave` bytes free."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    with open(filler, "wb") as f:
        try:
            while True:
                st = os.statvfs(disk)
                free = st.f_bavail * st.f_frsize - leave
                if free <= 0:
                    break
                f.write(b"\0" * min(free, 1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_state_writes_on_a_full_disk_leave_no_temp_file_and_never_raise(small_disk):
    store = Store(small_disk / "home")
    engine = server.Engine(
        store, Options(gpus="none"), backends.create(Options(gpus="none"), store.home)
    )
    engine.write_state()
    assert json.loads((store.home / layout.ENGINE_STATE).read_text())["pid"] == os.getpid()
    filler = fill(small_disk)
    engine.started += 1  # the state changed: it must be written again
    engine.write_state()  # ENOSPC: logged, not raised
    runlog.note(store.home, "engine: a line")  # nor here
    with pytest.raises(safefs.DiskFull, match=f"no space left on device: {store.home}"):
        safefs.write_private(store.home / "x.json", "x" * 100_000)
    assert temp_files(small_disk) == []
    filler.unlink()
    engine.write_state()
    assert json.loads((store.home / layout.ENGINE_STATE).read_text())["started"] == engine.started


def test_a_store_on_a_full_disk_can_still_be_read_and_says_why_it_cannot_change(small_disk):
    box = Box(small_disk)
    (run,) = box.store.submit(reading.loads(tiny("full"), file="full.toml"))
    box.store.close()  # no connection holds SQLite's shared memory: it cannot be sized now
    filler = fill(small_disk)
    env = {"KDTUI_HOME": str(box.home), "PYTHONPATH": str(test_engine.ROOT), "COLUMNS": "300"}
    listed = box.cli("ls", env={**os.environ, **env})
    assert f"{run.id}" in listed.stdout and "queued" in listed.stdout
    refused = box.cli("cancel", str(run.id), check=False, env={**os.environ, **env})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"no space left on device: {box.home}" in " ".join(refused.stderr.split())
    filler.unlink()
    assert "cancelled" in box.cli("cancel", str(run.id), env={**os.environ, **env}).stdout


@pytest.mark.slow
def test_a_run_that_fills_the_disk_fails_saying_so_and_resumes_once_space_is_freed(
    small_disk, monkeypatch
):
    box = Box(small_disk)
    monkeypatch.setenv("KDTUI_HOME", str(box.home))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(test_engine.ROOT))
    try:
        box.cli("submit", box.write("full.toml", tiny("full", epochs=3, steps=2)), "--no-start")
        # room for the log and the database, not for a checkpoint
        filler = fill(small_disk, leave=CHECKPOINT_BYTES * 6 // 10)
        box.cli("engine", "start")
        failed = box.wait_status(1, "failed", timeout=120)
        assert failed.error.startswith(f"no space left on device: {box.home}"), failed.error
        assert "`kdtui resume 1`" in failed.error
        engine = box.engine_pid()
        assert pid_alive(engine)  # the engine survives
        assert temp_files(small_disk) == []  # no half-written checkpoint left behind
        listed = box.cli("ls")  # the store stays readable
        assert "failed" in listed.stdout

        filler.unlink()
        box.cli("resume", "1")
        box.wait_status(1, "done", timeout=180)
        assert box.epochs_tested(1) == [0, 1, 2]
        assert box.engine_pid() == engine
    finally:
        client.stop(box.home, timeout=5, stop_runs=True)
        box.store.close()
