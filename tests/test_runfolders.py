"""Run folders are the source of truth; the store is an index that ingests them.

Real processes on digits with resnet8: a worker process (never allowed to open
SQLite), the engine, `kdtui store rebuild` after the database is deleted,
`kdtui import` from another store, cancel through the folder's file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.core import layout, reading, runfolder
from engine.core.store import Store
from engine.daemon.processes import worker_command
from tests.test_engine import box, tiny  # noqa: F401  (box: the engine fixture)

ROOT = Path(__file__).resolve().parent.parent

# the worker under an audit hook: any sqlite3.connect in the process ends it with code 97
NO_SQLITE = (
    "import os, sys, runpy\n"
    "def hook(event, args):\n"
    "    if event == 'sqlite3.connect':\n"
    "        sys.stderr.write(f'worker opened sqlite: {args}\\n'); sys.stderr.flush()\n"
    "        os._exit(97)\n"
    "sys.addaudithook(hook)\n"
    "sys.argv = ['engine.worker', *sys.argv[1:]]\n"
    "runpy.run_module('engine.worker', run_name='__main__')\n"
)


def run_worker(store: Store, run_ids: list[int], **kw) -> subprocess.Popen:
    """The engine's worker command line, run under the no-SQLite audit hook."""
    cmd = worker_command(store.home, [store.run(i).path for i in run_ids])
    assert cmd[1:3] == ["-m", "engine.worker"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        [cmd[0], "-c", NO_SQLITE, *cmd[3:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def kdtui(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDTUI_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    proc = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def dump(home: Path) -> dict:
    """Everything the database says about runs, comparable across rebuilds (metric and
    event row ids aside: they number rows of all runs together)."""
    con = sqlite3.connect(home / layout.DB)
    con.row_factory = sqlite3.Row
    try:
        runs = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY id")]
        metrics = [
            tuple(r)
            for r in con.execute(
                "SELECT run_id, epoch, step, name, value, time FROM metrics ORDER BY run_id, id"
            )
        ]
        events = [
            tuple(r)
            for r in con.execute(
                "SELECT run_id, time, kind, message FROM events WHERE run_id IS NOT NULL "
                "ORDER BY run_id, id"
            )
        ]
        exps = [dict(r) for r in con.execute("SELECT * FROM experiments ORDER BY id")]
    finally:
        con.close()
    return {"runs": runs, "metrics": metrics, "events": events, "experiments": exps}


def folder_metrics(run_dir: Path) -> list[tuple]:
    return [
        (m["epoch"], m["step"], m["name"], m["value"], m["time"])
        for m in runfolder.read_metrics(run_dir)
    ]


def store_metrics(store: Store, run_id: int) -> list[tuple]:
    return [(m.epoch, m.step, m.name, m.value, m.time) for m in store.metrics(run_id)]


# ---------------------------------------------------------------- the worker writes folders


def test_a_worker_process_never_opens_sqlite_and_its_folder_and_the_store_agree(store):
    (teacher,) = store.submit(reading.loads(tiny("t", epochs=2, steps=2), file="t.toml"))
    os.chmod(store.db_path, 0)  # and the database is unreadable while it trains
    try:
        proc = run_worker(store, [teacher.id])
        out, errors = proc.communicate(timeout=300)
    finally:
        os.chmod(store.db_path, 0o600)
    assert proc.returncode == 0, errors[-3000:]
    assert "opened sqlite" not in errors

    # the folder holds everything; the store ingests it when read
    state = runfolder.read_state(teacher.path)
    assert state["status"] == "done" and state["epoch"] == 2
    run = store.run(teacher.id)
    assert run.status == "done" and run.epoch == 2 and run.best_top1 == state["best_top1"]
    assert run.steps_per_epoch == 2 and run.pid is None and run.device == "cpu"
    assert folder_metrics(run.path) == store_metrics(store, run.id)
    assert {m[2] for m in folder_metrics(run.path)} >= {"train/loss", "test/top1", "lr"}

    # a student of that teacher finds its checkpoint through the teacher's folder
    kd = tiny("kd", more='[teacher]\narch = "resnet8"\nfrom_run = "t"\n[distill]\nmethod = "kd"')
    (student,) = store.submit(reading.loads(kd, file="kd.toml"))
    meta = runfolder.read_meta(student.path)
    assert meta["teacher"] == {"id": teacher.id, "uuid": run.uuid, "folder": run.path.name}
    proc = run_worker(store, [student.id])
    _, errors = proc.communicate(timeout=300)
    assert proc.returncode == 0, errors[-3000:]
    done = store.run(student.id)
    assert done.status == "done" and done.teacher_top1 == run.best_top1


# every process that imports site under this PYTHONPATH (the launcher and each torchrun rank)
# ends with code 97 if it opens SQLite
SITE_NO_SQLITE = (
    "import os, sys\n"
    "def hook(event, args):\n"
    "    if event == 'sqlite3.connect':\n"
    "        sys.stderr.write(f'pid {os.getpid()} opened sqlite: {args}\\n'); sys.stderr.flush()\n"
    "        os._exit(97)\n"
    "sys.addaudithook(hook)\n"
)


@pytest.mark.slow
def test_a_run_on_two_processes_writes_each_metric_once_and_no_process_opens_sqlite(
    store, tmp_path
):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITE_NO_SQLITE)
    exp = tiny("ddp", epochs=2, steps=2, more="nproc_per_node = 2\nthreads = 1")
    (run,) = store.submit(reading.loads(exp, file="ddp.toml"))
    assert store.claim(run.id, pid=None)
    env = {
        **os.environ,
        "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    os.chmod(store.db_path, 0)  # and the database is unreadable while they train
    try:
        proc = subprocess.run(
            worker_command(store.home, [run.path]),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.chmod(store.db_path, 0o600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "opened sqlite" not in proc.stderr

    # rank 0 alone wrote the folder: each metric once per step or epoch
    records = runfolder.read_metrics(run.path)
    counts = Counter((m["epoch"], m["step"], m["name"]) for m in records)
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]
    assert sorted(e for e, _, n in counts if n == "test/top1") == [0, 1]  # one per epoch
    assert sum(n == "train/loss" for _, _, n in counts) == 4  # 2 epochs x 2 steps
    starts = [e for e in runfolder.read_events(run.path) if e["kind"] == "started"]
    assert len(starts) == 1 and starts[0]["set"]["device"] == "2× cpu"
    done = store.run(run.id)
    assert done.status == "done" and done.epoch == 2
    assert (done.world_size, done.effective_batch) == (2, 128)
    assert runfolder.read_meta(run.path)["row"]["world_size"] == 2


def test_cancel_is_a_file_the_running_worker_polls(store):
    (run,) = store.submit(reading.loads(tiny("long", epochs=200, steps=2), file="l.toml"))
    assert store.claim(run.id, pid=None)
    proc = run_worker(store, [run.id])
    try:
        deadline = time.monotonic() + 120
        while not store.metrics(run.id) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        store.update(run.id, pid=proc.pid)
        assert store.request_cancel(run.id) == "cancelling"
        assert (run.path / layout.CANCEL).exists()
        _, errors = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, errors[-3000:]  # not every run done: exit 1
    after = store.run(run.id)
    assert after.status == "cancelled" and after.epoch < 200
    assert "cancelled during epoch" in after.error
    # resuming clears the request, so the next worker trains on
    store.requeue(run.id)
    assert not (run.path / layout.CANCEL).exists() and not store.run(run.id).cancel_requested


# ---------------------------------------------------------------- ingestion


def test_ingesting_is_incremental_idempotent_and_leaves_a_torn_last_line_for_later(store):
    (run,) = store.submit(reading.loads(tiny("i"), file="i.toml"))
    metrics = run.path / layout.METRICS
    line = lambda step, value: json.dumps(  # noqa: E731
        {"name": "train/loss", "epoch": 0, "step": step, "value": value, "time": 1.0}
    )
    metrics.write_text(line(1, 2.0) + "\n" + line(2, 1.5) + "\n" + line(3, 1.0)[:20])
    store.ingest([run.id])
    store.ingest([run.id])  # again: nothing new
    assert [m.step for m in store.metrics(run.id)] == [1, 2]  # the torn line waits
    with open(metrics, "a") as f:  # the writer finishes its line
        f.write(line(3, 1.0)[20:] + "\n" + "{not json\n" + line(4, 0.5) + "\n")
    for _ in range(3):
        store.ingest([run.id])
    assert [m.step for m in store.metrics(run.id)] == [1, 2, 3, 4]  # the bad line skipped
    bad = [e for e in store.events() if e["kind"] == "bad-line"]
    assert len(bad) == 1 and "metrics.jsonl" in bad[0]["message"]
    # a rewind marker: later epochs stop counting, in the folder and in the store
    store.add_metrics(run.id, [(1, 5, "train/loss", 0.4)])
    store.truncate_metrics(run.id, after_epoch=0)
    assert [m.epoch for m in store.metrics(run.id)] == [0, 0, 0, 0]
    assert folder_metrics(run.path) == store_metrics(store, run.id)

    # a second process (the app, the engine) ingesting the same folders adds nothing twice
    other = Store(store.home)
    store.add_metrics(run.id, [(0, 6, "train/loss", 0.3)])
    assert len(other.metrics(run.id)) == len(store.metrics(run.id)) == 5
    other.close()


def test_a_torn_metrics_tail_is_cut_by_the_next_append_so_no_record_is_lost(tmp_path):
    run_dir = tmp_path / "0001-abcdef"
    run_dir.mkdir()
    runfolder.append_metrics(run_dir, [(0, 1, "train/loss", 1.0)])
    with open(run_dir / layout.METRICS, "a") as f:
        f.write('{"name": "train/lo')  # a write cut short by a kill on a full disk
    runfolder.append_metrics(run_dir, [(0, 2, "train/loss", 0.5)])
    assert [m["step"] for m in runfolder.read_metrics(run_dir)] == [1, 2]
    assert runfolder.read_records(run_dir / layout.METRICS).bad == []


# ---------------------------------------------------------------- rebuild and import


@pytest.mark.slow
def test_the_engine_trains_into_folders_and_store_rebuild_restores_every_run_and_metric(box):  # noqa: F811
    kd = tiny(
        "kd", seeds=[0, 1], epochs=2, steps=2, more='[teacher]\narch = "resnet8"\ntrain = true'
    )
    kd += '[distill]\nmethod = "kd"\n'
    box.cli("submit", box.write("kd.toml", kd))
    box.cli("submit", box.write("long.toml", tiny("long", epochs=100, steps=2)))
    for i in (1, 2, 3):
        box.wait_status(i, "done", timeout=300)
    box.wait_training(4)
    box.cli("cancel", "4")
    box.wait_status(4, "cancelled", timeout=120)
    box.cli("engine", "stop")

    # what the engine ingested is exactly what the folders hold
    for run in box.store.runs():
        assert folder_metrics(run.path) == store_metrics(box.store, run.id), run.id
        assert runfolder.read_state(run.path)["status"] == run.status
    box.store.close()
    before = dump(box.home)
    assert len(before["runs"]) == 4 and len(before["metrics"]) > 50

    for suffix in ("", "-wal", "-shm"):
        (box.home / f"{layout.DB}{suffix}").unlink(missing_ok=True)
    out = kdtui(box.home, "store", "rebuild")
    assert "4 runs" in out.stdout
    after = dump(box.home)
    assert after == before
    assert "cancelled" in kdtui(box.home, "ls").stdout
    assert "kd" in kdtui(box.home, "leaderboard").stdout

    # with a database in place: it is kept aside, and the new one is the same again
    out = kdtui(box.home, "store", "rebuild")
    assert "before-rebuild" in out.stdout and dump(box.home) == before


def test_import_copies_runs_from_another_store_and_refuses_them_twice(tmp_path):
    from engine.worker import execute

    there = Store(tmp_path / "there")
    exp = tiny("t", steps=2, more="") + ""
    (teacher,) = there.submit(reading.loads(exp, file="t.toml"))
    assert there.claim(teacher.id, pid=os.getpid())
    assert execute(there, [teacher.id])[0].status == "done"
    there.annotate(teacher.id, note="the teacher", tags=["paper"])
    kd = tiny("kd", more='[teacher]\narch = "resnet8"\nfrom_run = "t"\n[distill]\nmethod = "kd"')
    (student,) = there.submit(reading.loads(kd, file="kd.toml"))  # queued there
    here = Store(tmp_path / "here")
    (mine,) = here.submit(reading.loads(tiny("mine"), file="m.toml"))  # ids 1, 2 taken... 1

    out = kdtui(here.home, "import", there.runs_dir)
    assert "imported 2 runs" in out.stdout
    runs = here.runs()
    assert [r.id for r in runs] == [mine.id, 2, 3]
    t, s = runs[1], runs[2]
    assert t.uuid == there.run(teacher.id).uuid and t.status == "done"
    assert (t.note, t.tag_list) == ("the teacher", ["paper"])  # from its notes.json
    assert store_metrics(here, t.id) == store_metrics(there, teacher.id)
    assert t.best_top1 == there.run(teacher.id).best_top1
    assert t.path.parent == here.runs_dir and (t.path / layout.BEST).exists()
    # the student keeps its teacher (now run 2 here) and arrives cancelled, resumable
    assert s.depends_on == t.id and s.load_config().teacher.from_run == str(t.id)
    assert s.status == "cancelled" and "kdtui resume 3" in s.error
    assert runfolder.read_meta(s.path)["teacher"]["folder"] == t.path.name

    again = kdtui(here.home, "import", there.runs_dir, check=False)
    assert again.returncode != 0 and "already" in again.stderr
    assert len(here.runs()) == 3
    here.close()
    there.close()


def test_a_hostile_folder_is_refused_with_one_error_and_nothing_is_imported(tmp_path):
    src = Store(tmp_path / "src")
    a, b = src.submit(reading.loads(tiny("h", seeds=[0, 1]), file="h.toml"))
    src.add_metrics(a.id, [(0, 1, "train/loss", 1.0)])
    dest = Store(tmp_path / "dest")
    listing = sorted(os.listdir(dest.runs_dir))

    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, b.path / "log.txt")
    out = kdtui(dest.home, "import", a.path, b.path, check=False)
    assert out.returncode == 2
    assert "symbolic link" in out.stderr and str(b.path / "log.txt") in out.stderr
    assert dest.runs() == [] and sorted(os.listdir(dest.runs_dir)) == listing

    os.unlink(b.path / "log.txt")
    (b.path / layout.ANNOTATIONS).write_text('{"note": "", "tags": ["not a tag!"]}')
    out = kdtui(dest.home, "import", a.path, b.path, check=False)
    assert out.returncode == 2 and str(b.path / layout.ANNOTATIONS) in out.stderr
    assert dest.runs() == [] and sorted(os.listdir(dest.runs_dir)) == listing
    (b.path / layout.ANNOTATIONS).unlink()
    with open(a.path / layout.METRICS, "a") as f:
        f.write('{"name": "x", "epoch": "one"}\n')
    out = kdtui(dest.home, "import", a.path, b.path, check=False)
    assert out.returncode == 2 and "metrics.jsonl: line 2" in out.stderr
    assert "'epoch'" in out.stderr
    assert dest.runs() == [] and sorted(os.listdir(dest.runs_dir)) == listing

    meta = json.loads((b.path / layout.META).read_text())
    meta["row"]["seed"] = {"nested": 1}  # well-formed JSON, not what a column takes
    (b.path / layout.META).write_text(json.dumps(meta))
    out = kdtui(dest.home, "import", b.path, check=False)
    assert out.returncode == 2 and "row.'seed' is not a plain value" in out.stderr

    (a.path / layout.META).write_text("{broken")
    out = kdtui(dest.home, "import", a.path, check=False)
    assert out.returncode == 2 and "run.json: not JSON" in out.stderr
    assert dest.runs() == []
    src.close()
    dest.close()


@pytest.mark.parametrize("version", ["2", "3", "4", "3-folders"])
def test_a_store_from_before_run_folders_gets_them_written_when_opened(home, version):
    from engine.core import store as storemod

    old = Store(home)
    a, b = old.submit(reading.loads(tiny("old", seeds=[0, 1]), file="o.toml"))
    assert old.claim(a.id, pid=None)
    old.add_metrics(a.id, [(0, 1, "train/loss", 1.0), (0, 1, "test/top1", 50.0)])
    old.finish(a.id, "done")
    if version == "4":  # main's version 4: notes and tags (in the row and notes.json)
        old.annotate(a.id, note="lr too high", tags=["paper"])
    # what a version-2 store had: rows and metrics in SQLite, no records in the folders;
    # version 3 (main's, issue 14): the same with world sizes, no uuid column, no `ingested`;
    # "3-folders" (the run-folder branch before the merge): folders, no world sizes anywhere
    if version == "2":
        old.conn.execute("UPDATE runs SET uuid=NULL, world_size=NULL, effective_batch=NULL")
        old.conn.execute("UPDATE experiments SET uuid=NULL")
        old.conn.execute("DELETE FROM ingested")
    elif version in ("3", "4"):
        old.conn.execute("DROP INDEX runs_uuid")
        old.conn.execute("ALTER TABLE runs DROP COLUMN uuid")
        old.conn.execute("ALTER TABLE experiments DROP COLUMN uuid")
        old.conn.execute("DROP TABLE ingested")
    else:
        old.conn.execute("ALTER TABLE runs DROP COLUMN world_size")
        old.conn.execute("ALTER TABLE runs DROP COLUMN effective_batch")
        for run in (a, b):
            meta = json.loads((run.path / layout.META).read_text())
            del meta["row"]["world_size"], meta["row"]["effective_batch"]
            (run.path / layout.META).write_text(json.dumps(meta))
    old.conn.execute(f"PRAGMA user_version = {version[0]}")
    for run in (a, b) if version != "3-folders" else ():
        for name in (layout.META, layout.METRICS, layout.EVENTS):  # notes.json stays
            (run.path / name).unlink(missing_ok=True)
    old.close()
    before = dump(home)

    Store(home).close()  # the migration writes the folders' records from the rows
    assert runfolder.read_state(a.path)["status"] == "done"
    assert len(runfolder.read_metrics(a.path)) == 2
    for suffix in ("", "-wal", "-shm"):
        (home / f"{layout.DB}{suffix}").unlink(missing_ok=True)
    assert storemod.rebuild(home).runs == 2
    after = dump(home)
    # world size and effective batch: backfilled (one process) from version 2, kept from 3,
    # in run.json from either, and from a folder without them the rebuild backfills them
    assert {(r["world_size"], r["effective_batch"]) for r in after["runs"]} == {(1, 64)}
    if version == "4":  # the note and tags come back from notes.json
        assert (after["runs"][0]["note"], after["runs"][0]["tags"]) == ("lr too high", '["paper"]')
    for rows in (before["runs"], after["runs"]):
        for row in rows:
            row.pop("uuid", None)
            if version not in ("3", "4"):
                row.pop("world_size", None), row.pop("effective_batch", None)
    assert after["runs"] == before["runs"] and after["metrics"] == before["metrics"]
