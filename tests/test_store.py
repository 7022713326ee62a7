"""The SQLite store: runs, metrics and folders that are never reused or overwritten."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from engine.core import fingerprint, planning, reading
from engine.core.store import Store, StoreError

EXP = """
name = "simkd-digits"
seeds = [0, 1]
[data]
dataset = "digits"
[teacher]
arch = "resnet20"
train = true
[student]
arch = "resnet8"
[distill]
method = "simkd"
[optim]
lr = [0.01, 0.05]
epochs = 2
"""


def submit(store, text=EXP, **kw):
    return store.submit(reading.loads(text, file="exp.toml"), source="exp.toml", **kw)


def test_submit_creates_one_queued_row_and_folder_per_run(store):
    runs = submit(store)
    assert len(runs) == 1 + 2 * 2  # teacher + lr grid x seeds
    assert [r.status for r in runs] == ["queued"] * 5
    teacher, students = runs[0], runs[1:]
    assert teacher.role == "teacher" and teacher.method == "vanilla"
    assert teacher.student_arch == "resnet20"
    for r in students:
        assert r.depends_on == teacher.id
        assert r.head == "teacher"  # simkd reports the reused teacher classifier
        assert r.load_config().teacher.from_run == str(teacher.id)
        assert (r.path / "config.toml").read_text() == r.config_toml
    assert {r.label for r in students} == {
        "lr=0.01 seed=0",
        "lr=0.01 seed=1",
        "lr=0.05 seed=0",
        "lr=0.05 seed=1",
    }


def test_a_plan_comes_out_complete_and_the_store_only_records_it(store):
    """Planning resolves the teacher dependency, fuse key, data seed and fingerprint; the
    store supplies the teacher's run id and recipe, then writes the plan as it is."""
    exp = reading.loads(EXP, file="exp.toml")
    teacher_plan, *plans = planning.expand(planning.absolute_paths(exp))
    assert teacher_plan.role == "teacher" and teacher_plan.run_label == "teacher"
    assert [p.teacher_plan for p in plans] == [0, 0, 0, 0]
    assert [p.data_seed for p in plans] == [0, 1, 0, 1]  # data_seed = -1 follows the run's seed
    assert plans[0].teacher_ref is None  # trained here, not from another run

    runs = submit(store)
    source = fingerprint.run_source(runs[0].fingerprint)
    plan = planning.resolve(plans[1], teacher_run=runs[0].id, teacher_source=source)
    cfg = plan.config
    assert (cfg.teacher.train, cfg.teacher.optim, cfg.teacher.from_run) == (
        False,
        {},
        str(runs[0].id),
    )
    stored = runs[2]  # the same point and seed
    assert (stored.label, stored.depends_on) == (plan.run_label, plan.depends_on)
    assert stored.fuse_key == plan.fuse_key and str(plan.data_seed) in plan.fuse_key.split("|")
    assert stored.fingerprint == plan.fingerprint == fingerprint.fingerprint(cfg, teacher=source)
    assert stored.method == plan.method_label == "simkd"


def test_the_stored_config_reproduces_the_run(store):
    r = submit(store)[2]
    cfg = r.load_config()
    assert cfg.optim.lr == 0.01 and cfg.seeds == [1] and cfg.sweep == {}
    assert cfg.distill.options["factor"] == 2


def test_ids_and_folders_never_collide(store, home):
    first = submit(store)
    # a second store in the same place continues the sequence
    second = submit(Store(home))
    ids = [r.id for r in first + second]
    assert len(set(ids)) == len(ids)
    dirs = [r.dir for r in first + second]
    assert len(set(dirs)) == len(dirs)


def test_database_is_wal_and_private(store, home):
    mode = store.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "kdtui.db").st_mode) == 0o600


def test_claim_is_atomic(store, home):
    run = submit(store)[0]
    other = Store(home)
    assert store.claim(run.id, pid=1) is True
    assert other.claim(run.id, pid=2) is False
    assert store.run(run.id).status == "running" and store.run(run.id).pid == 1


def test_cancel_a_queued_run_and_ask_a_running_one_to_stop(store):
    a, b, dead = submit(store)[:3]
    assert store.request_cancel(a.id) == "cancelled"
    assert store.run(a.id).status == "cancelled"
    # a live kdtui process trains b: it is asked to stop at its next log step
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "kdtui"])
    try:
        store.claim(b.id, pid=holder.pid)
        assert store.request_cancel(b.id) == "cancelling"
        assert store.run(b.id).cancel_requested == 1
    finally:
        holder.kill()
        holder.wait()
    # pid 1 is no kdtui process: nobody would ever see the request, so it takes effect now
    store.claim(dead.id, pid=1)
    assert store.request_cancel(dead.id) == "cancelled"
    assert store.run(dead.id).status == "cancelled"
    assert "process 1 was gone" in store.run(dead.id).error


def test_metrics_are_read_incrementally(store):
    run = submit(store)[0]
    store.add_metrics(run.id, [(0, 10, "train/loss", 2.0), (0, 20, "train/loss", 1.5)])
    first = store.metrics(run.id)
    assert [m.value for m in first] == [2.0, 1.5]
    store.add_metrics(run.id, [(1, 30, "test/top1", 50.0)])
    new = store.metrics(run.id, since_id=first[-1].id)
    assert [(m.name, m.value) for m in new] == [("test/top1", 50.0)]
    assert store.series(run.id, "train/loss") == [(0, 10, 2.0), (0, 20, 1.5)]
    store.truncate_metrics(run.id, after_epoch=0)
    assert [m.epoch for m in store.metrics(run.id)] == [0, 0]


def test_metrics_query_uses_the_index(store):
    plan = store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM metrics WHERE run_id=? AND id>? ORDER BY id", (1, 0)
    ).fetchall()
    assert any("metrics_run" in str(tuple(row)) for row in plan)


def test_from_run_resolves_an_experiment_name_to_its_best_done_run(store):
    text = EXP.replace("train = true", "checkpoint = 't.pth'")
    teacher_exp = """
name = "teacher-r20"
seeds = [0, 1]
[data]
dataset = "digits"
[student]
arch = "resnet20"
[optim]
epochs = 1
"""
    t0, t1 = submit(store, teacher_exp)
    store.update(t0.id, status="done", best_top1=90.0)
    store.update(t1.id, status="done", best_top1=95.0)
    runs = submit(store, text.replace("checkpoint = 't.pth'", "from_run = 'teacher-r20'"))
    assert all(r.depends_on == t1.id for r in runs)


def test_from_run_with_no_such_run_is_a_clear_error(store):
    with pytest.raises(StoreError, match="no run id or experiment"):
        submit(store, EXP.replace("train = true", "from_run = 'nope'"))


def test_delete_removes_row_metrics_but_only_when_finished(store):
    run = submit(store)[1]
    with pytest.raises(StoreError, match="cancel it"):
        store.delete(run.id)
    store.finish(run.id, "failed", "boom")
    store.add_metrics(run.id, [(0, 1, "train/loss", 1.0)])
    store.delete(run.id)
    with pytest.raises(StoreError):
        store.run(run.id)
    rows = store.conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id=?", (run.id,)).fetchone()
    assert rows[0] == 0


def test_requeue_for_resume(store):
    run = submit(store)[0]
    store.claim(run.id, pid=1)
    store.finish(run.id, "failed", "worker died")
    again = store.requeue(run.id)
    assert again.status == "queued" and again.resume == 1 and again.error == "worker died"
    store.finish(run.id, "done")
    with pytest.raises(StoreError, match="only failed or cancelled"):
        store.requeue(run.id)


def test_schema_is_plain_sqlite(home, store):
    con = sqlite3.connect(home / "kdtui.db")
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"experiments", "runs", "metrics", "events"} <= tables


def test_relative_paths_are_stored_absolute_so_the_engine_finds_them(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = submit(store, EXP.replace("train = true", "checkpoint = 'teachers/t.pth'"))
    cfg = runs[0].load_config()
    assert cfg.teacher.checkpoint == str(tmp_path / "teachers" / "t.pth")
    assert cfg.data.root == str(tmp_path / "data")


def test_the_experiment_is_kept_as_written_for_a_clone(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    submit(store, 'name = "teacher-r20"\n[student]\narch = "resnet20"\n[optim]\nepochs = 1\n')
    text = EXP.replace("train = true", "from_run = 'teacher-r20'").replace(
        "[student]", "[student]\ncheckpoint = 'init/s.pth'"
    )
    run = submit(store, text)[3]  # lr 0.05, seed 1
    assert run.load_config().teacher.from_run.isdigit()  # what the worker reads: resolved
    assert run.load_config().data.root == str(tmp_path / "data")
    written = store.written_config(run.id)
    assert written.teacher.from_run == "teacher-r20"
    assert written.student.checkpoint == "init/s.pth" and written.data.root == "data"
    assert written.sweep == {} and written.optim.lr == 0.05 and written.seeds == [1]
    trained = submit(store)  # a teacher trained here: the clone of it is that teacher's run
    assert store.written_config(trained[0].id).distill.method == "vanilla"
    assert store.written_config(trained[1].id).teacher.train


def test_runs_stored_before_fingerprints_get_one_even_with_the_default_milestones(home):
    # EXP trains 2 epochs on the default multistep schedule: its stored config writes the
    # default milestones (150, 180, 210) out, which a user's file could not
    first = Store(home)
    run = submit(first)[1]
    fingerprint = first.run(run.id).fingerprint
    assert fingerprint and run.load_config().optim.milestones == [150, 180, 210]
    first.conn.execute("UPDATE runs SET fingerprint=NULL, identity=NULL")
    first.conn.execute("PRAGMA user_version = 1")  # a store from before fingerprints
    first.conn.commit()
    first.close()
    assert Store(home).run(run.id).fingerprint == fingerprint  # backfilled on open


# what each older store lacked: (user_version, runs columns, experiments columns, tables,
# whether its run folders had records yet); every one opens migrated to one current version
WORLD, NOTES, JOBS = (
    ("world_size", "effective_batch"),
    ("note", "tags"),
    ("job_id", "job_node", "job_state"),
)
OLDER_STORES = {
    "2: before world size, notes, run folders and Slurm": (
        2,
        (*WORLD, *NOTES, "uuid", *JOBS),
        ("uuid",),
        ("ingested",),
        False,
    ),
    "4: notes and tags, before run folders": (4, ("uuid", *JOBS), ("uuid",), ("ingested",), False),
    "5: run folders, before Slurm": (5, JOBS, (), (), True),
    "i13-slurm's 4: job columns, no notes, no run folders": (
        4,
        (*NOTES, "uuid"),
        ("uuid",),
        ("ingested",),
        False,
    ),
}


@pytest.mark.parametrize("before", OLDER_STORES)
def test_a_store_of_every_older_version_opens_migrated_with_its_rows(home, before):
    from engine.core import layout, runfolder
    from engine.core import store as storemod

    version, run_cols, exp_cols, tables, has_records = OLDER_STORES[before]
    old = Store(home)
    teacher, student = submit(
        old, EXP.replace("lr = [0.01, 0.05]", "lr = 0.01").replace("seeds = [0, 1]", "seeds = [0]")
    )
    assert old.claim(teacher.id, pid=None)
    old.add_metrics(teacher.id, [(0, 1, "train/loss", 1.0), (0, 1, "test/top1", 50.0)])
    old.finish(teacher.id, "done")
    con = old.conn
    if "job_id" not in run_cols:  # a Slurm store: its job columns hold what the engine saw
        con.execute("UPDATE runs SET job_id='41_0', job_node='n1', job_state='COMPLETED'")
    con.execute("DROP INDEX IF EXISTS runs_uuid")
    for col in run_cols:
        con.execute(f"ALTER TABLE runs DROP COLUMN {col}")
    for col in exp_cols:
        con.execute(f"ALTER TABLE experiments DROP COLUMN {col}")
    for table in tables:
        con.execute(f"DROP TABLE {table}")
    con.execute(f"PRAGMA user_version = {version}")
    con.commit()
    if not has_records:
        for run in (teacher, student):
            for name in (layout.META, layout.METRICS, layout.EVENTS):
                (run.path / name).unlink(missing_ok=True)
    old.close()

    store = Store(home)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == storemod.SCHEMA_VERSION
    fresh = sqlite3.connect(":memory:")
    fresh.executescript(storemod.SCHEMA)
    for table in ("runs", "experiments", "ingested"):
        cols = {r[1] for r in fresh.execute(f"PRAGMA table_info({table})")}
        assert {r[1] for r in store.conn.execute(f"PRAGMA table_info({table})")} == cols
    done = store.run(teacher.id)
    assert (done.status, done.uuid) == ("done", runfolder.read_meta(done.path)["uuid"])
    assert [m.value for m in store.metrics(teacher.id)] == [1.0, 50.0]
    assert (done.world_size, done.note, done.tag_list) == (1, "", [])  # backfilled, defaults
    slurm = "job_id" not in run_cols
    assert done.job_id == ("41_0" if slurm else None)
    store.update(student.id, job_id="42", job_state="PENDING (Priority)")  # works as new
    store.close()

    # and its folders hold everything: the database rebuilt from them is the same
    for suffix in ("", "-wal", "-shm"):
        (home / f"{layout.DB}{suffix}").unlink(missing_ok=True)
    assert storemod.rebuild(home).runs == 2
    store = Store(home)
    assert store.run(teacher.id).job_id == ("41_0" if slurm else None)
    assert store.run(teacher.id).status == "done"
    assert (store.run(student.id).job_id, store.run(student.id).job_state) == (
        "42",
        "PENDING (Priority)",
    )
    assert len(store.metrics(teacher.id)) == 2
