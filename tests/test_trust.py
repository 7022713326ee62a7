"""The store trusts only its owner and never writes or deletes through a symlink.

The attacks are real: a store folder prepared by another user (a uid made
with os.chown, which these tests can do as root), symlinks planted where
kdtui writes its lock, logs and state, and a `runs` link aimed at a
victim's folder. Each test checks the victim's file or folder is intact
and the user is told why and how to fix it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core import reading, runlog, safefs
from engine.core.store import Store, StoreError
from engine.daemon import client
from engine.daemon.lock import EngineError, acquire_lock, lock_holder

ROOT = Path(__file__).resolve().parent.parent
OTHER_UID = 54321  # nobody's; only root can hand a folder to it
EXP = """
name = "trust"
[data]
dataset = "digits"
[student]
arch = "resnet8"
[optim]
epochs = 1
"""


def kdtui(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDTUI_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "kdtui.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd or home.parent,
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim" / "thesis.tex"
    path.parent.mkdir()
    path.write_text("years of work\n")
    return path


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("handing a folder to another uid needs root (CI runs as root)")


# ---------------------------------------------------------------- whose store


@pytest.mark.parametrize(
    ("mode", "word"),
    [(0o770, "group-writable"), (0o707, "world-writable"), (0o777, "group- and world-writable")],
)
def test_a_store_others_may_write_to_is_refused_with_the_fix(tmp_path, mode, word):
    home = tmp_path / "store"
    home.mkdir()
    os.chmod(home, mode)
    with pytest.raises(StoreError, match=word) as e:
        Store(home)
    assert f"chmod 700 {home}" in str(e.value)
    assert os.listdir(home) == []  # nothing created in it

    out = kdtui(home, "ls")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert word in one_line(out.stderr) and f"chmod 700 {home}" in one_line(out.stderr)

    os.chmod(home, 0o700)  # the fix it names works
    assert kdtui(home, "ls").returncode == 0


def test_a_store_owned_by_another_user_is_refused(tmp_path):
    needs_root()
    home = tmp_path / "store"
    home.mkdir(mode=0o700)
    os.chown(home, OTHER_UID, OTHER_UID)
    with pytest.raises(StoreError, match=f"owned by uid {OTHER_UID}, not by you") as e:
        Store(home)
    assert "KDTUI_HOME" in str(e.value)
    out = kdtui(home, "engine", "start")
    assert out.returncode == 2 and f"owned by uid {OTHER_UID}" in one_line(out.stderr)
    assert client.status(home) is None


def test_a_store_prepared_by_another_user_cannot_make_the_engine_truncate_a_victims_file(
    tmp_path, victim
):
    """Today's attack: a world-writable folder with a ready `.kdtui` whose engine.lock links to
    the victim's file; the victim runs kdtui there."""
    needs_root()
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    home = shared / ".kdtui"
    home.mkdir()
    (home / "engine.lock").symlink_to(victim)
    os.chmod(home, 0o777)
    os.lchown(home / "engine.lock", OTHER_UID, OTHER_UID)
    os.chown(home, OTHER_UID, OTHER_UID)

    env = {k: v for k, v in os.environ.items() if k != "KDTUI_HOME"}
    for args in (("engine", "start"), ("ls",), ("resume", "1")):
        out = subprocess.run(
            [sys.executable, "-m", "kdtui.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "PYTHONPATH": str(ROOT)},
            cwd=shared,
        )
        assert out.returncode == 2, out
        assert "not by you" in one_line(out.stderr)
    assert victim.read_text() == "years of work\n"
    assert sorted(os.listdir(home)) == ["engine.lock"]  # no engine ran, nothing was written


# ---------------------------------------------------------------- symlinks in an own store


def test_a_symlinked_engine_lock_is_refused_and_its_target_left_alone(tmp_path, victim):
    home = tmp_path / "store"
    Store(home).close()
    (home / "engine.lock").symlink_to(victim)
    out = kdtui(home, "engine", "start")
    assert out.returncode == 2
    assert "engine.lock is a symbolic link" in one_line(out.stderr)
    assert victim.read_text() == "years of work\n"

    # planted after the store was checked (a race): the lock is opened with O_NOFOLLOW
    with pytest.raises(EngineError, match="symbolic link"):
        acquire_lock(home)
    with pytest.raises(EngineError, match="symbolic link"):
        lock_holder(home)
    assert victim.read_text() == "years of work\n"


@pytest.mark.parametrize("name", ["kdtui.db", "kdtui.db-wal", "engine.log", "engine.json"])
def test_any_store_file_that_is_a_symlink_is_refused(tmp_path, victim, name):
    home = tmp_path / "store"
    Store(home).close()
    target = home / name
    if target.exists():
        target.unlink()
    target.symlink_to(victim)
    with pytest.raises(StoreError, match=f"{name} is a symbolic link"):
        Store(home)
    assert victim.read_text() == "years of work\n"


def test_logs_and_state_are_never_written_through_a_planted_link(tmp_path, victim):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.txt").symlink_to(victim)
    with pytest.raises(safefs.UnsafePath, match="symbolic link"):
        safefs.append_text(run_dir / "log.txt", "epoch 1\n")
    runlog.note(run_dir, "engine: placed")  # the engine: skipped, not followed
    # engine.json goes through a temp file whose (predictable) name may be planted too
    state = tmp_path / "engine.json"
    (tmp_path / f".engine.json.{os.getpid()}.tmp").symlink_to(victim)
    safefs.write_private(state, '{"pid": 1}')
    assert state.read_text() == '{"pid": 1}' and not state.is_symlink()
    assert victim.read_text() == "years of work\n"


def test_a_run_config_is_never_written_through_a_link(store, victim, monkeypatch):
    made = store._make_run_dir

    def planted(run_id):  # someone races the new folder's config.toml
        path = made(run_id)
        (path / "config.toml").symlink_to(victim)
        return path

    monkeypatch.setattr(store, "_make_run_dir", planted)
    with pytest.raises(safefs.UnsafePath):
        store.submit(reading.loads(EXP, file="x.toml"))
    assert victim.read_text() == "years of work\n"
    assert store.runs() == []  # the transaction rolled back


# ---------------------------------------------------------------- kdtui rm


def finished_run(store: Store):
    (run,) = store.submit(reading.loads(EXP, file="x.toml"))
    store.finish(run.id, "failed", "for the test")
    return store.run(run.id)


def test_rm_never_deletes_through_a_symlinked_runs_folder(store, home, tmp_path):
    run = finished_run(store)
    victim_dir = tmp_path / "victim-folders"
    (victim_dir / run.path.name).mkdir(parents=True)
    precious = victim_dir / run.path.name / "data.csv"
    precious.write_text("1,2,3\n")
    os.rename(home / "runs", tmp_path / "runs.real")
    (home / "runs").symlink_to(victim_dir)

    out = kdtui(home, "rm", str(run.id), "--yes")
    assert out.returncode == 0, out.stderr
    assert precious.read_text() == "1,2,3\n"
    assert "runs is a symbolic link" in one_line(out.stderr)
    assert store.runs() == []  # the row and metrics go; only the folder is kept


def test_rm_never_follows_a_run_folder_that_is_a_symlink(store, tmp_path):
    run = finished_run(store)
    os.rename(run.path, tmp_path / "moved")
    victim_dir = tmp_path / "victim-folder"
    victim_dir.mkdir()
    (victim_dir / "notes.txt").write_text("keep me")
    run.path.symlink_to(victim_dir)
    assert store.remove_run_dir(run) == f"{run.path} is a symbolic link, not a run folder"
    assert (victim_dir / "notes.txt").read_text() == "keep me"


def test_rm_removes_a_real_run_folder_and_nothing_outside_runs(store, tmp_path):
    run = finished_run(store)
    assert run.path.is_dir()
    assert store.remove_run_dir(run) is None and not run.path.exists()
    # a row whose dir points elsewhere (an edited database) is not a run folder
    outside = tmp_path / "0002-abcdef"
    outside.mkdir()
    run.dir = str(outside)
    assert "not a run folder inside" in store.remove_run_dir(run)
    assert outside.is_dir()
