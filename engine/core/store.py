"""The store: one folder per run (the source of truth) and a SQLite index of them. Torch-free.

Workers write only their run folder (engine.core.runfolder) and never open the
database; the front ends and the engine (on the local disk where `kdtui` runs)
ingest folders into SQLite incrementally: per run a byte offset into
metrics.jsonl and events.jsonl, advanced in the transaction that applies the
new lines, so ingesting again adds nothing and a crash at any point loses
nothing. Every change the store itself makes to a run (claim, cancel,
requeue, finish) is an event appended to the run's folder and then ingested,
so `rebuild` recreates the whole database from the folders. Readers ingest
what they read (`run`, `runs`, `metrics`: the active runs, or the ones asked
for). Run ids come from AUTOINCREMENT and run folders are created exclusively,
so nothing is ever reused or overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.core import (
    annotations,
    display,
    layout,
    liveness,
    planning,
    reading,
    runfolder,
    safefs,
    schema,
    writing,
)
from engine.core import fingerprint as fpmod
from engine.core.reading import tomllib

STATUSES = runfolder.STATUSES
FINISHED = runfolder.FINISHED

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    source TEXT,
    config_toml TEXT NOT NULL,
    created REAL NOT NULL,
    uuid TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    experiment TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'student',
    label TEXT NOT NULL DEFAULT '',
    point TEXT NOT NULL DEFAULT '{}',
    seed INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'queued',
    method TEXT NOT NULL,
    teacher_arch TEXT NOT NULL DEFAULT '',
    student_arch TEXT NOT NULL,
    dataset TEXT NOT NULL,
    head TEXT NOT NULL DEFAULT 'student',
    config_toml TEXT NOT NULL,
    dir TEXT NOT NULL,
    depends_on INTEGER REFERENCES runs(id),
    priority INTEGER NOT NULL DEFAULT 0,
    fuse_key TEXT,
    epochs INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    steps_per_epoch INTEGER NOT NULL DEFAULT 0,
    best_top1 REAL,
    best_epoch INTEGER,
    last_top1 REAL,
    last_top5 REAL,
    teacher_top1 REAL,
    params INTEGER,
    images_per_s REAL,
    eta_s REAL,
    host TEXT,
    device TEXT,
    gpu TEXT,
    pid INTEGER,
    torch_version TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    heartbeat REAL,
    trained_params INTEGER,
    fingerprint TEXT,
    identity TEXT,
    world_size INTEGER,
    effective_batch INTEGER,
    note TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]',
    uuid TEXT,
    job_id TEXT,
    job_node TEXT,
    job_state TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, priority, id);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs(experiment);
CREATE INDEX IF NOT EXISTS runs_fingerprint ON runs(fingerprint);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, id);
CREATE INDEX IF NOT EXISTS metrics_run_name ON metrics(run_id, name, step);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_id ON events(id);
CREATE INDEX IF NOT EXISTS runs_uuid ON runs(uuid);
CREATE TABLE IF NOT EXISTS ingested (
    run_id INTEGER PRIMARY KEY,
    metrics_at INTEGER NOT NULL DEFAULT 0,
    events_at INTEGER NOT NULL DEFAULT 0,
    bad_lines INTEGER NOT NULL DEFAULT 0
);
"""
# 2: fingerprints; 3: world size (issue 14); 4: notes and tags (issue 16); 5: run folders
# are the source of truth (uuid, `ingested`); 6: Slurm job columns (issue 13). Older stores
# migrate by the columns they lack (tested from 2, 3, 4, 5 and unmerged branches' shapes:
# run folders without world size, Slurm without run folders).
SCHEMA_VERSION = 6
# columns added after version 1: (name, SQL type); `_migrate` adds them to older stores
ADDED_COLUMNS = (
    ("trained_params", "INTEGER"),  # student + projector/regressor: what the optimiser updates
    ("fingerprint", "TEXT"),  # engine.core.fingerprint: equal = same experiment up to the seed
    ("identity", "TEXT"),  # the JSON the fingerprint hashes
    # version 3: processes that train the run, and data.batch_size x world_size
    ("world_size", "INTEGER"),
    ("effective_batch", "INTEGER"),
    # version 4: the researcher's note and tags (engine.core.annotations)
    ("note", "TEXT NOT NULL DEFAULT ''"),
    ("tags", "TEXT NOT NULL DEFAULT '[]'"),
    ("uuid", "TEXT"),  # version 5: the run folder's uuid (run.json), unique across stores
    # version 6: a run trained by a batch system (engine.daemon.backends.slurm): its job id
    # (an array task: "123_0"), the node it runs on, and the scheduler's state ("PENDING
    # (Priority)"), as the engine last polled them
    ("job_id", "TEXT"),
    ("job_node", "TEXT"),
    ("job_state", "TEXT"),
)
ACTIVE = ("queued", "running")  # not finished
# an idle poll looks only at running runs' folders: only a worker writes a folder without
# ingesting what it wrote, and a worker trains only claimed (running) runs; everything the
# store writes (submit, claim, cancel, ...) is ingested in the same transaction
POLLED = "running"


class StoreError(Exception):
    """A user-facing problem with the store (unknown run, bad state)."""


@dataclass
class Run:
    id: int
    experiment_id: int
    experiment: str
    role: str
    label: str
    point: str
    seed: int
    status: str
    method: str
    teacher_arch: str
    student_arch: str
    dataset: str
    head: str
    config_toml: str
    dir: str
    depends_on: int | None
    priority: int
    fuse_key: str | None
    epochs: int
    epoch: int
    step: int
    steps_per_epoch: int
    best_top1: float | None
    best_epoch: int | None
    last_top1: float | None
    last_top5: float | None
    teacher_top1: float | None
    params: int | None
    images_per_s: float | None
    eta_s: float | None
    host: str | None
    device: str | None
    gpu: str | None
    pid: int | None
    torch_version: str | None
    error: str | None
    cancel_requested: int
    resume: int
    attempts: int
    created: float
    started: float | None
    ended: float | None
    heartbeat: float | None
    trained_params: int | None = None
    fingerprint: str | None = None
    identity: str | None = None
    world_size: int | None = None  # processes training it (nproc_per_node x nnodes)
    effective_batch: int | None = None  # images per optimiser step: batch_size x world_size
    note: str = ""
    tags: str = "[]"  # a JSON list: `tag_list`
    uuid: str | None = None
    job_id: str | None = None
    job_node: str | None = None
    job_state: str | None = None

    @property
    def tag_list(self) -> list[str]:
        return annotations.parse_tags(self.tags)

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def load_config(self) -> schema.Experiment:
        """The run's resolved config, parsed from `config_toml` at each call (a method, not a
        field: each call parses the TOML and returns a new Experiment the caller may change)."""
        return reading.loads(self.config_toml, file=f"run {self.id} config", resolved=True)

    @property
    def pair(self) -> str:
        return display.pair(self.teacher_arch, self.student_arch)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def progress(self) -> float:
        if not self.epochs:
            return 0.0
        part = self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0
        return min(1.0, (self.epoch + min(part, 1.0)) / self.epochs)


RUN_COLUMNS = [f.name for f in fields(Run)]


@dataclass
class Metric:
    id: int
    run_id: int
    epoch: int
    step: int
    name: str
    value: float
    time: float


class Store:
    """Thread-safe handle: one SQLite connection per thread."""

    def __init__(self, home: str | Path | None = None):
        self.home = layout.home_path(home)
        self.db_path = self.home / layout.DB
        self.runs_dir = self.home / layout.RUNS
        self._local = threading.local()
        self._init()

    # ------------------------------------------------------------ plumbing
    def _init(self) -> None:
        fresh = not os.path.lexists(self.home)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if fresh:
            os.chmod(self.home, 0o700)
        try:
            self._check_trust()
            if not os.path.lexists(self.runs_dir):
                with contextlib.suppress(FileExistsError):
                    self.runs_dir.mkdir(mode=0o700)
            if not self.db_path.exists():
                os.close(safefs.open_fd(self.db_path, os.O_CREAT | os.O_WRONLY))
        except safefs.UnsafePath as e:
            raise StoreError(str(e)) from None
        con = self.conn
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """Create the schema, or bring an older store's up to date (columns added, then the
        fingerprints of its runs computed from their stored configs). One transaction: a
        second process opening the store at the same time waits and then finds it done."""
        with self._tx() as con:
            if con.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            if have:
                for name, sql_type in ADDED_COLUMNS:
                    if name not in have:
                        con.execute(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}")
            have_exp = {r[1] for r in con.execute("PRAGMA table_info(experiments)")}
            if have_exp and "uuid" not in have_exp:
                con.execute("ALTER TABLE experiments ADD COLUMN uuid TEXT")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            self._backfill_fingerprints(con)
            self._backfill_world(con)
            if have:
                self._write_legacy_folders(con)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _write_legacy_folders(self, con) -> None:
        """Runs of a store from before run folders were the source of truth get run.json,
        metrics.jsonl and events.jsonl written from their rows, offsets at the end: from
        then on `rebuild` and `import` know them too. A folder that is gone is skipped."""
        for exp in con.execute("SELECT id FROM experiments WHERE uuid IS NULL").fetchall():
            con.execute(
                "UPDATE experiments SET uuid=? WHERE id=?", (runfolder.new_uuid(), exp["id"])
            )
        for row in con.execute("SELECT * FROM runs WHERE uuid IS NULL ORDER BY id").fetchall():
            run = Run(**dict(row))
            uid = runfolder.new_uuid()
            con.execute("UPDATE runs SET uuid=? WHERE id=?", (uid, run.id))
            run.uuid = uid
            if not run.dir or not os.path.isdir(run.dir):
                continue
            try:
                runfolder.write_meta(run.path, self._meta(con, run))
                metrics = [
                    runfolder.metric_record(m["epoch"], m["step"], m["name"], m["value"], m["time"])
                    for m in con.execute(
                        "SELECT * FROM metrics WHERE run_id=? ORDER BY id", (run.id,)
                    )
                ]
                runfolder.append_records(run.path / layout.METRICS, metrics, cut_torn=True)
                state = {c: getattr(run, c) for c in runfolder.STATE_COLUMNS}
                runfolder.append_records(
                    run.path / layout.EVENTS,
                    [runfolder.event_record("migrated", state, when=liveness.row_time(run))],
                )
            except (OSError, FileExistsError):
                continue
            self._set_offsets(con, run.id, *self._sizes(run.path), 0)

    def _backfill_fingerprints(self, con) -> None:
        """Fingerprints of runs stored before they existed; a config that no longer parses
        keeps none (the leaderboard then shows that run alone)."""
        files: dict[str, str] = {}
        rows = con.execute(
            "SELECT id, config_toml FROM runs WHERE fingerprint IS NULL ORDER BY id"
        ).fetchall()
        for row in rows:  # in id order: a teacher run gets its fingerprint before its students
            try:
                cfg = reading.loads(
                    row["config_toml"], file=f"run {row['id']} config", resolved=True
                )
                ident = fpmod.identity(cfg, teacher=self._teacher_source(con, cfg, files))
            except (ValueError, KeyError, TypeError, StoreError):
                continue
            con.execute(
                "UPDATE runs SET fingerprint=?, identity=? WHERE id=?",
                (fpmod.digest(ident), fpmod.dumps(ident), row["id"]),
            )

    def _backfill_world(self, con) -> None:
        """World size and effective batch of runs stored before version 3: one process each
        (the keys did not exist), so the effective batch is the stored batch size."""
        rows = con.execute(
            "SELECT id, config_toml FROM runs WHERE world_size IS NULL ORDER BY id"
        ).fetchall()
        for row in rows:
            try:
                batch = int(tomllib.loads(row["config_toml"])["data"]["batch_size"])
            except (ValueError, KeyError, TypeError):
                batch = None
            con.execute(
                "UPDATE runs SET world_size=1, effective_batch=? WHERE id=?", (batch, row["id"])
            )

    def _teacher_source(
        self, con, cfg: schema.Experiment, files: dict[str, str], teacher_run: int | None = None
    ) -> str | None:
        """The teacher as a recipe: the fingerprint of the run that trains it, or the sha256
        of its checkpoint file (hashed once per submit)."""
        t = cfg.teacher
        if not cfg.method.needs_teacher:
            return None
        if teacher_run is None and t.from_run:
            teacher_run = self._resolve_from_run(con, t.from_run, t.arch)
        if teacher_run is not None:
            row = con.execute("SELECT fingerprint FROM runs WHERE id=?", (teacher_run,)).fetchone()
            return fpmod.run_source(row["fingerprint"] if row else None)
        if t.checkpoint:
            if t.checkpoint not in files:
                files[t.checkpoint] = fpmod.file_source(t.checkpoint)
            return files[t.checkpoint]
        return fpmod.run_source(None)

    def _check_trust(self) -> None:
        """Only a store that is ours alone: see engine.core.safefs (UnsafePath says why and the fix)."""
        safefs.check_private_dir(self.home)
        for name in layout.STORE_FILES:
            safefs.refuse_link(self.home / name)
        if self.runs_dir.is_symlink():  # allowed (runs on a bigger disk), if ours alone too
            safefs.check_private_dir(self.runs_dir, "runs folder")

    @property
    def conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        frozen = getattr(self._local, "frozen_until", None)
        if con is not None and frozen is not None and time.monotonic() > frozen:
            with contextlib.suppress(sqlite3.OperationalError):  # space back? writable again
                fresh = self._connect()
                con.close()
                con, self._local.con, self._local.frozen_until = fresh, fresh, None
            if self._local.frozen_until is not None:
                self._local.frozen_until = time.monotonic() + 5.0
        if con is None:
            try:
                con = self._connect()
            except sqlite3.OperationalError:
                if not safefs.low_on_space(self.home):
                    raise
                # a full disk: SQLite cannot even size its shared-memory file, so read the
                # database file as it is (no locks, no writes) until space is freed
                con = sqlite3.connect(
                    f"file:{self.db_path}?mode=ro&immutable=1", uri=True, isolation_level=None
                )
                con.row_factory = sqlite3.Row
                self._local.frozen_until = time.monotonic() + 5.0
            self._local.con = con
        return con

    @property
    def read_only(self) -> bool:
        """True while a full disk keeps this store read-only (see `conn`)."""
        return getattr(self._local, "frozen_until", None) is not None

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=60000")
        except BaseException:
            con.close()
            raise
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
            self._local.frozen_until = None

    def _tx(self):
        return _Transaction(self.conn)

    # ------------------------------------------------------------ submit
    def submit(
        self,
        exp: schema.Experiment,
        *,
        source: str | None = None,
        status: str = "queued",
        holder: int | None = None,
    ) -> list[Run]:
        """Expand an experiment into runs (teacher first when trained here).

        `holder`: the pid of a foreground `kdtui run` that will train these
        runs itself; the engine leaves queued runs alone while it lives.
        """
        if holder is not None:  # `kdtui run` trains on this box: several nodes are refused
            try:  # before anything is stored (the engine's backend judges queued runs)
                reading.check_local(exp, file=source)
            except schema.ConfigError as e:
                raise StoreError(str(e)) from None
        written = writing.dumps(exp, full=False)  # as the user wrote it: what a clone starts from
        exp = planning.absolute_paths(exp)
        plans = planning.expand(exp)
        now = time.time()
        created: list[int] = []
        made: list[Path] = []
        try:
            self._submit(exp, plans, written, source, status, holder, now, created, made)
        except BaseException:
            for path in made:  # rolled back: no folder may outlive its row (rebuild reads them)
                safefs.remove_run_dir(self.runs_dir, path)
            raise
        return [self.run(i) for i in created]

    def _submit(self, exp, plans, written, source, status, holder, now, created, made) -> None:
        """submit's transaction; the ids it creates go into `created`, folders into `made`."""
        with self._tx() as con:
            exp_id = con.execute(
                "INSERT INTO experiments(name, source, config_toml, created, uuid) "
                "VALUES (?,?,?,?,?)",
                (exp.name, source, written, now, runfolder.new_uuid()),
            ).lastrowid
            files: dict[str, str] = {}  # checkpoint path -> sha256, hashed once per submit
            for plan in plans:
                teacher_run = None
                if plan.teacher_plan is not None:
                    teacher_run = created[plan.teacher_plan]
                elif plan.teacher_ref:
                    teacher_run = self._resolve_from_run(
                        con, plan.teacher_ref, plan.config.teacher.arch
                    )
                teacher = self._teacher_source(con, plan.config, files, teacher_run)
                planning.resolve(plan, teacher_run=teacher_run, teacher_source=teacher)
                run_id = self._insert_run(con, exp_id, plan, status, now, holder, made)
                created.append(run_id)

    def _insert_run(
        self,
        con,
        exp_id: int,
        plan: planning.RunPlan,
        status: str,
        now: float,
        holder: int | None = None,
        made: list[Path] | None = None,
    ) -> int:
        """Record a resolved plan: its row, its config and run.json in the run's new folder
        (`made`: where the folder goes, for submit to remove if the transaction fails)."""
        cfg = plan.config
        spec = cfg.method
        teacher_arch = cfg.teacher.arch if spec.needs_teacher else ""
        toml_text = writing.resolved_toml(cfg)
        run_id = con.execute(
            """INSERT INTO runs(experiment_id, experiment, role, label, point, seed, status,
               method, teacher_arch, student_arch, dataset, head, config_toml, dir, depends_on,
               priority, fuse_key, epochs, created, fingerprint, identity, world_size,
               effective_batch, uuid)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                exp_id,
                cfg.name,
                plan.role,
                plan.run_label,
                json.dumps(plan.point, sort_keys=True),
                plan.seed,
                status,
                plan.method_label,
                teacher_arch,
                cfg.student.arch,
                cfg.data.dataset,
                spec.head,
                toml_text,
                "",
                plan.depends_on,
                cfg.run.priority,
                plan.fuse_key,
                cfg.optim.epochs,
                now,
                plan.fingerprint,
                fpmod.dumps(plan.identity),
                schema.world_size(cfg),
                schema.effective_batch(cfg),
                runfolder.new_uuid(),
            ),
        ).lastrowid
        run_dir = self._make_run_dir(run_id)
        if made is not None:
            made.append(run_dir)
        safefs.write_new(run_dir / layout.CONFIG, toml_text)
        con.execute("UPDATE runs SET dir=? WHERE id=?", (str(run_dir), run_id))
        row = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        runfolder.write_meta(run_dir, self._meta(con, Run(**dict(row))))
        runfolder.append_event(run_dir, "submitted", {"status": status, "pid": holder}, fsync=False)
        self._ingest_run(con, run_id)
        return run_id

    def _meta(self, con, run: Run) -> dict:
        """run.json for a row: what the folder must hold besides its events and metrics."""
        exp = con.execute("SELECT * FROM experiments WHERE id=?", (run.experiment_id,)).fetchone()
        teacher = None
        if run.depends_on is not None:
            t = con.execute(
                "SELECT id, uuid, dir FROM runs WHERE id=?", (run.depends_on,)
            ).fetchone()
            if t is not None:
                teacher = {"id": t["id"], "uuid": t["uuid"] or "", "folder": Path(t["dir"]).name}
        return {
            "format": runfolder.FORMAT,
            "id": run.id,
            "uuid": run.uuid,
            "experiment": {
                "id": exp["id"],
                "uuid": exp["uuid"],
                "name": exp["name"],
                "source": exp["source"],
                "config_toml": exp["config_toml"],
                "created": exp["created"],
            },
            "teacher": teacher,
            "row": {c: getattr(run, c) for c in runfolder.META_COLUMNS},
        }

    def _make_run_dir(self, run_id: int) -> Path:
        while True:
            path = self.runs_dir / layout.run_dir_name(run_id)
            try:
                path.mkdir(mode=0o700)
                return path
            except FileExistsError:
                continue

    def _resolve_from_run(self, con, ref: str, arch: str) -> int:
        """A run id, or the best (else the first pending) run of an experiment with that arch."""
        if ref.isdigit():
            row = con.execute(
                "SELECT id, student_arch FROM runs WHERE id=?", (int(ref),)
            ).fetchone()
            if row is not None:
                if row["student_arch"] != arch:
                    raise StoreError(
                        f"teacher.from_run = {ref}: run {ref} trained "
                        f"{row['student_arch']}, not {arch}"
                    )
                return row["id"]
        rows = con.execute(
            "SELECT id, status, best_top1 FROM runs WHERE experiment=? AND student_arch=? "
            "ORDER BY id",
            (ref, arch),
        ).fetchall()
        if not rows:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT experiment FROM runs WHERE student_arch=?", (arch,)
                )
            ]
            hint = f"; runs that trained {arch}: {', '.join(names)}" if names else ""
            raise StoreError(
                f"teacher.from_run = {ref!r}: no run id or experiment of that name "
                f"trained {arch}{hint}"
            )
        done = [r for r in rows if r["status"] == "done"]
        if done:
            return max(done, key=lambda r: r["best_top1"] or 0.0)["id"]
        pending = [r for r in rows if r["status"] in ("queued", "running")]
        if pending:
            return pending[0]["id"]
        return rows[-1]["id"]  # failed/cancelled: the dependant will fail with its reason

    # ------------------------------------------------------------ queries
    def run(self, run_id: int) -> Run:
        self._ingest_quietly([int(run_id)])
        row = self.conn.execute("SELECT * FROM runs WHERE id=?", (int(run_id),)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id} in {self.home}")
        return Run(**dict(row))

    def runs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        experiment: str | None = None,
        ids: Iterable[int] | None = None,
    ) -> list[Run]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if ids is not None:
            ids = [int(i) for i in ids]
        self._ingest_quietly(ids)
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += statuses
        if experiment:
            sql += " AND experiment=?"
            args.append(experiment)
        if ids is not None:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids
        return [Run(**dict(r)) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def runs_without_config(self) -> list[Run]:
        """Every run, its `config_toml` left empty: what the app polls twice a second (the
        configs are most of a row's bytes; a run's own is read when it is opened)."""
        self._ingest_quietly()
        columns = ", ".join(c for c in RUN_COLUMNS if c != "config_toml")
        sql = f"SELECT {columns}, '' AS config_toml FROM runs ORDER BY id"
        return [Run(**dict(r)) for r in self.conn.execute(sql)]

    def cancel_requested(self, run_id: int) -> bool:
        """Whether someone asked this run to stop: its folder's `cancel` file."""
        return runfolder.cancel_requested(self.run(run_id).path)

    def find(self, ref: str) -> list[Run]:
        """Runs named by a run id or an experiment name (CLI arguments)."""
        if str(ref).isdigit():
            try:
                return [self.run(int(ref))]
            except StoreError:
                pass
        runs = self.runs(experiment=str(ref))
        if not runs:
            raise StoreError(f"no run or experiment {ref!r} in {self.home}")
        return runs

    def written_config(self, run_id: int) -> schema.Experiment:
        """A run's experiment as the user wrote it (teacher `from_run` by name, paths as
        written), narrowed to this run's sweep point and seed: what a clone starts from.
        Stores written before this was kept hold absolute paths here."""
        run = self.run(run_id)
        row = self.conn.execute(
            "SELECT config_toml FROM experiments WHERE id=?", (run.experiment_id,)
        ).fetchone()
        exp = reading.loads(row["config_toml"], file=f"experiment of run {run.id}", resolved=True)
        if run.role == "teacher":
            return schema.teacher_experiment(exp)
        one = reading.apply_point(exp, json.loads(run.point))
        one.seeds = [run.seed]
        return one

    # ------------------------------------------------------------ ingesting run folders
    def ingest(self, ids: Iterable[int] | None = None, *, everything: bool = False) -> int:
        """Apply what run folders gained since they were last read; the number of runs that
        changed. Default: the running runs (an idle poll: two stats a run; see POLLED);
        `ids`: those runs; `everything`: every run (the engine, once when it starts)."""
        con = self.conn
        sql = (
            "SELECT r.id, r.dir, COALESCE(i.metrics_at, 0), COALESCE(i.events_at, 0) "
            "FROM runs r LEFT JOIN ingested i ON i.run_id = r.id"
        )
        if ids is not None:
            ids = [int(i) for i in ids]
            if not ids:
                return 0
            rows = con.execute(f"{sql} WHERE r.id IN ({','.join('?' * len(ids))})", ids).fetchall()
        elif everything:
            rows = con.execute(sql).fetchall()
        else:
            rows = con.execute(f"{sql} WHERE r.status=?", (POLLED,)).fetchall()
        changed = 0
        for run_id, run_dir, m_at, e_at in rows:
            if not run_dir:
                continue
            m_size, e_size = self._sizes(Path(run_dir))
            if m_size <= m_at and e_size <= e_at:
                continue  # the idle case: nothing new
            if con.in_transaction:
                changed += self._ingest_run(con, run_id)[1]
            else:
                with self._tx() as tx:
                    changed += self._ingest_run(tx, run_id)[1]
        return changed

    def _ingest_quietly(self, ids: Iterable[int] | None = None) -> None:
        """A reader's ingest: a read-only (full) disk or a busy database leaves the rows as
        they are (the next read tries again)."""
        if self.read_only:
            return
        with contextlib.suppress(sqlite3.OperationalError, OSError):
            self.ingest(ids)

    @staticmethod
    def _sizes(run_dir: Path) -> tuple[int, int]:
        out = []
        for name in (layout.METRICS, layout.EVENTS):
            try:
                out.append(os.stat(run_dir / name).st_size)
            except OSError:
                out.append(0)
        return out[0], out[1]

    @staticmethod
    def _set_offsets(con, run_id: int, metrics_at: int, events_at: int, bad: int) -> None:
        con.execute(
            "INSERT INTO ingested(run_id, metrics_at, events_at, bad_lines) VALUES (?,?,?,?) "
            "ON CONFLICT(run_id) DO UPDATE SET metrics_at=excluded.metrics_at, "
            "events_at=excluded.events_at, bad_lines=bad_lines+excluded.bad_lines",
            (run_id, metrics_at, events_at, bad),
        )

    def _ingest_run(self, con, run_id: int) -> tuple[sqlite3.Row | None, bool]:
        """Inside a transaction: apply one run folder's new lines, advance its offsets.
        Returns (the row after, whether anything changed)."""
        row = con.execute(
            "SELECT r.dir, COALESCE(i.metrics_at, 0), COALESCE(i.events_at, 0) "
            "FROM runs r LEFT JOIN ingested i ON i.run_id = r.id WHERE r.id=?",
            (int(run_id),),
        ).fetchone()
        if row is None or not row[0]:
            return row, False
        run_dir = Path(row[0])
        metrics = runfolder.read_records(run_dir / layout.METRICS, row[1], runfolder.check_metric)
        events = runfolder.read_records(run_dir / layout.EVENTS, row[2], runfolder.check_event)
        if metrics.end == row[1] and events.end == row[2]:
            return con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone(), False
        heartbeat = 0.0
        batch: list[tuple] = []
        for r in metrics.records:
            if "rewind" in r:
                con.executemany(_INSERT_METRIC, batch)
                batch = []
                con.execute(
                    "DELETE FROM metrics WHERE run_id=? AND epoch>=?", (run_id, r["rewind"])
                )
                continue
            batch.append((run_id, r["epoch"], r["step"], r["name"], r["value"], r["time"]))
            heartbeat = max(heartbeat, r["time"])
        con.executemany(_INSERT_METRIC, batch)
        state = runfolder.fold_state(events.records)
        if any("heartbeat" in e.get("set", {}) for e in events.records):
            heartbeat = state.pop("heartbeat")  # set on purpose: as given
            when = "?"
        else:
            heartbeat = max(heartbeat, state.pop("heartbeat", 0.0))
            when = "MAX(COALESCE(heartbeat, 0), ?)"
        for e in events.records:
            if "message" in e:
                con.execute(
                    "INSERT INTO events(run_id, time, kind, message) VALUES (?,?,?,?)",
                    (run_id, e["time"], e["kind"], e["message"]),
                )
        bad = len(metrics.bad) + len(events.bad)
        for name, chunk in ((layout.METRICS, metrics), (layout.EVENTS, events)):
            for at, why in chunk.bad:
                con.execute(
                    "INSERT INTO events(run_id, time, kind, message) VALUES (?,?,?,?)",
                    (run_id, time.time(), "bad-line", f"{run_dir / name} at byte {at}: {why}"),
                )
        cols = "".join(f"{k}=?, " for k in state)
        con.execute(
            f"UPDATE runs SET {cols}heartbeat={when} WHERE id=?",
            (*state.values(), heartbeat, run_id),
        )
        self._set_offsets(con, run_id, metrics.end, events.end, bad)
        return con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone(), True

    def _record(
        self,
        run_id: int,
        kind: str,
        values: dict | None = None,
        message: str | None = None,
        *,
        unless=None,
    ) -> Run:
        """A change the store makes to a run: an event in its folder, then ingested, in one
        transaction with a fresh read of the row. `unless(row)`: true to change nothing
        (raises _Unchanged); `values` may be a function of the row (absolute values)."""
        with self._tx() as con:
            row, _ = self._ingest_run(con, int(run_id))
            if row is None:
                raise StoreError(f"no run {run_id} in {self.home}")
            run = Run(**dict(row))
            if unless is not None and unless(run):
                raise _Unchanged(run)
            if callable(values):
                values = values(run)
            runfolder.append_event(run.path, kind, values, message)
            row, _ = self._ingest_run(con, run.id)
        return Run(**dict(row))

    # ------------------------------------------------------------ lifecycle
    def update(self, run_id: int, **values: Any) -> None:
        bad = set(values) - set(runfolder.STATE_COLUMNS)
        if bad:
            raise KeyError(f"unknown run columns {bad}")
        self._record(run_id, "set", values)

    def claim(self, run_id: int, **values: Any) -> bool:
        """queued -> running, atomically; False when someone else got it first."""
        values.setdefault("started", time.time())
        values.setdefault("host", socket.gethostname())
        try:
            self._record(
                run_id,
                "claimed",
                lambda run: {
                    "status": "running",
                    "error": None,
                    "attempts": run.attempts + 1,
                    **values,
                },
                unless=lambda run: run.status != "queued",
            )
        except _Unchanged:
            return False
        return True

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        assert status in FINISHED, status
        values: dict[str, Any] = {"status": status, "ended": time.time(), "pid": None}
        if error is not None:
            values["error"] = error
        self._record(run_id, status, values, error or "")

    def requeue(self, run_id: int, *, resume: bool = True, holder: int | None = None) -> Run:
        """Back to the queue; `holder` (a foreground pid) keeps the engine off it."""
        run = self.run(run_id)
        if run.status not in ("failed", "cancelled", "running"):
            raise StoreError(f"run {run_id} is {run.status}; only failed or cancelled runs resume")
        runfolder.clear_cancel(run.path)
        values = {
            "status": "queued",
            "resume": 1 if resume else 0,
            "cancel_requested": 0,
            "pid": holder,
            "ended": None,
        }
        return self._record(run_id, "queued", values, "resume" if resume else "restart")

    def request_cancel(self, run_id: int) -> str:
        """Queued runs are cancelled now; running ones are asked to stop (their folder's
        `cancel` file, which the worker polls); dead ones end now."""
        run = self.run(run_id)
        if run.status == "queued":
            self.finish(run_id, "cancelled", "cancelled before start")
            return "cancelled"
        if liveness.process_gone(run):
            how = f"process {run.pid} was gone" if run.pid else "its worker never started"
            if self.settle_gone(run, "cancelled", f"cancelled ({how})"):
                return "cancelled"
            return self.request_cancel(run_id)  # it changed meanwhile: ask again
        if run.status == "running":
            runfolder.request_cancel(run.path)
            self._record(run_id, "cancel", {"cancel_requested": 1}, "cancel requested")
            return "cancelling"
        return run.status

    def delete(self, run_id: int) -> Run:
        run = self.run(run_id)
        if not run.finished:
            raise StoreError(f"run {run_id} is {run.status}; cancel it before removing it")
        dependants = self.conn.execute(
            "SELECT id FROM runs WHERE depends_on=? AND status IN ('queued','running')", (run.id,)
        ).fetchall()
        if dependants:
            raise StoreError(
                f"run {run_id} is the teacher of queued/running runs {[r[0] for r in dependants]}"
            )
        # in the folder first: if it cannot be deleted, `rebuild` still knows it was removed
        with contextlib.suppress(OSError):
            runfolder.append_event(run.path, runfolder.REMOVED)
        with self._tx() as con:
            con.execute("DELETE FROM metrics WHERE run_id=?", (run.id,))
            con.execute("DELETE FROM events WHERE run_id=?", (run.id,))
            con.execute("DELETE FROM ingested WHERE run_id=?", (run.id,))
            con.execute("UPDATE runs SET depends_on=NULL WHERE depends_on=?", (run.id,))
            con.execute("DELETE FROM runs WHERE id=?", (run.id,))
        return run

    # ------------------------------------------------------------ notes and tags
    def annotate(
        self, run_id: int, *, note: str | None = None, tags: Sequence[str] | None = None
    ) -> Run:
        """Set a run's note and/or its whole tag list (checked by engine.core.annotations:
        AnnotationError says why), in its row and in its folder's annotations file."""
        run = self.run(run_id)
        new_note = run.note if note is None else annotations.check_note(note)
        new_tags = run.tag_list if tags is None else annotations.check_tags(tags)
        annotations.write_folder(run.dir, new_note, new_tags)  # first: the folder outlives us
        self.conn.execute(
            "UPDATE runs SET note=?, tags=? WHERE id=?",
            (new_note, annotations.dump_tags(new_tags), run.id),
        )
        return self.run(run.id)

    # ------------------------------------------------------------ metrics
    def add_metrics(
        self, run_id: int, rows: Iterable[tuple[int, int, str, float]], when: float | None = None
    ) -> None:
        """rows of (epoch, step, name, value), appended to the run's folder and ingested."""
        rows = list(rows)
        if not rows:
            return
        runfolder.append_metrics(self.run(run_id).path, rows, when=when)
        self.ingest([run_id])

    def metrics(
        self,
        run_id: int,
        *,
        since_id: int = 0,
        names: Sequence[str] | None = None,
    ) -> list[Metric]:
        self._ingest_quietly([int(run_id)])
        sql = "SELECT * FROM metrics WHERE run_id=? AND id>?"
        args: list[Any] = [int(run_id), int(since_id)]
        if names:
            sql += f" AND name IN ({','.join('?' * len(names))})"
            args += list(names)
        return [Metric(**dict(r)) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def series(self, run_id: int, name: str) -> list[tuple[int, int, float]]:
        """(epoch, step, value) of one metric, in order."""
        self._ingest_quietly([int(run_id)])
        return [
            (r[0], r[1], r[2])
            for r in self.conn.execute(
                "SELECT epoch, step, value FROM metrics WHERE run_id=? AND name=? ORDER BY step, id",
                (int(run_id), name),
            )
        ]

    def epoch_means(
        self, run_ids: Sequence[int], names: Sequence[str]
    ) -> dict[str, tuple[list[float], list[float]]]:
        """name -> (epochs, mean value per epoch over the runs): a seed group's curves."""
        ids, names = [int(i) for i in run_ids], list(names)
        self._ingest_quietly(ids)
        rows = self.conn.execute(
            f"SELECT name, epoch, AVG(value) FROM metrics WHERE run_id IN "
            f"({','.join('?' * len(ids))}) AND name IN ({','.join('?' * len(names))}) "
            "GROUP BY name, epoch ORDER BY epoch",
            [*ids, *names],
        ).fetchall()
        series: dict[str, tuple[list[float], list[float]]] = {}
        for name, epoch, value in rows:
            xs, ys = series.setdefault(name, ([], []))
            xs.append(epoch)
            ys.append(value)
        return series

    def truncate_metrics(self, run_id: int, after_epoch: int) -> None:
        """Metrics of epochs beyond `after_epoch` stop counting (a rewind marker)."""
        run = self.run(run_id)
        runfolder.append_records(
            run.path / layout.METRICS, [{"rewind": int(after_epoch) + 1}], cut_torn=True
        )
        self.ingest([run_id])

    # ------------------------------------------------------------ crash safety
    def settle_gone(self, run: Run, status: str, error: str) -> bool:
        """End a running row whose process is gone, unless it changed since `run` was read."""
        assert status in FINISHED, status
        now = time.time()
        try:
            self._record(
                run.id,
                status,
                {"status": status, "error": error, "ended": now, "pid": None},
                error,
                unless=lambda row: row.status != "running" or row.pid != run.pid,
            )
        except _Unchanged:
            return False
        return True

    def commit_epoch(
        self,
        run_id: int,
        rows: Iterable[tuple[int, int, str, float]],
        values: dict[str, Any],
        *,
        before_commit=None,
    ) -> None:
        """An epoch's metrics (fsynced), then the run row's progress/accuracy as an event
        (engine.worker does the same on its folder; this is for callers holding a store)."""
        run = self.run(run_id)
        runfolder.append_metrics(run.path, list(rows), fsync=True)
        if before_commit is not None:
            before_commit()
        runfolder.append_event(run.path, "epoch", values)
        self.ingest([run_id])

    def rewind(self, run_id: int, epochs: int, commit: dict | None = None) -> dict[str, int]:
        """Make the run agree with a checkpoint of `epochs` finished epochs
        (engine.core.runfolder.rewind on its folder, then ingested)."""
        out = runfolder.rewind(self.run(run_id).path, epochs, commit)
        self.ingest([run_id])
        return out

    def remove_run_dir(self, run: Run) -> str | None:
        """Delete a run's folder only as a real directory inside the real runs/ (else why not)."""
        if not run.dir:
            return None
        return safefs.remove_run_dir(self.runs_dir, Path(run.dir))

    # ------------------------------------------------------------ events
    def event(self, run_id: int | None, kind: str, message: str = "") -> None:
        if run_id is not None:
            self._record(run_id, kind, None, message)
            return
        self.conn.execute(
            "INSERT INTO events(run_id, time, kind, message) VALUES (?,?,?,?)",
            (run_id, time.time(), kind, message),
        )

    def events(self, since_id: int = 0) -> list[sqlite3.Row]:
        self._ingest_quietly()
        return self.conn.execute(
            "SELECT * FROM events WHERE id>? ORDER BY id", (since_id,)
        ).fetchall()

    # ------------------------------------------------------------ rebuild and import
    def _insert_experiment(self, con, exp: dict, exp_id: int | None) -> int:
        return con.execute(
            "INSERT INTO experiments(id, name, source, config_toml, created, uuid) "
            "VALUES (?,?,?,?,?,?)",
            (
                exp_id,
                exp["name"],
                exp.get("source"),
                exp["config_toml"],
                exp.get("created") or time.time(),
                exp["uuid"],
            ),
        ).lastrowid

    def _insert_folder(
        self,
        con,
        run_dir: Path,
        meta: dict,
        config: str,
        run_id: int | None,
        exp_id: int,
        depends_on: int | None,
    ) -> int:
        """A run's row from its folder (run.json, config.toml), then its records ingested."""
        row = dict(meta["row"])
        row.setdefault("created", time.time())
        try:
            note, tags = annotations.read_folder(run_dir)
        except annotations.AnnotationError:  # import refuses it first; rebuild says so
            note, tags = "", []
        row.update(note=note, tags=annotations.dump_tags(tags))
        values = {
            "id": run_id,
            "experiment_id": exp_id,
            **row,
            "depends_on": depends_on,
            "config_toml": config,
            "dir": str(run_dir),
            "uuid": meta["uuid"],
        }
        names = ", ".join(values)
        run_id = con.execute(
            f"INSERT INTO runs({names}) VALUES ({','.join('?' * len(values))})",
            tuple(values.values()),
        ).lastrowid
        if row.get("world_size") is None:  # a folder from before world sizes: one process
            self._backfill_world(con)
        self._ingest_run(con, run_id)
        return run_id

    def _check_imports(self, paths: Sequence[str | os.PathLike]) -> list[tuple[Path, dict, str]]:
        """Every folder of an import, checked whole before anything is copied."""
        folders: list[Path] = []
        for p in paths:
            folders += _import_candidates(Path(p).absolute())
        checked: list[tuple[Path, dict, str]] = []
        uuids: dict[str, Path] = {}
        for d in folders:
            try:
                meta = runfolder.check_folder(d)
                config = safefs.read_text(d / layout.CONFIG)
                reading.loads(config, file=str(d / layout.CONFIG), resolved=True)
                annotations.read_folder(d)
            except (runfolder.FolderError, annotations.AnnotationError) as e:
                raise ImportRefused(str(e)) from None
            except FileNotFoundError:
                raise ImportRefused(
                    f"{d / layout.CONFIG}: missing; not a whole run folder"
                ) from None
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise ImportRefused(f"{d / layout.CONFIG}: {e}") from None
            if meta["uuid"] in uuids:
                raise ImportRefused(f"{d} and {uuids[meta['uuid']]} are the same run (uuid)")
            uuids[meta["uuid"]] = d
            row = self.conn.execute("SELECT id FROM runs WHERE uuid=?", (meta["uuid"],)).fetchone()
            if row is not None:
                raise ImportRefused(
                    f"{d} is run {row[0]} of this store already (uuid {meta['uuid']}); "
                    "nothing imported"
                )
            checked.append((d, meta, config))
        return sorted(checked, key=lambda t: t[1]["id"])  # teachers before their students

    def import_folders(self, paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Run]]:
        """Add run folders copied from another machine: copied into runs/ under new ids.

        Everything is checked first (only plain files; run.json, metrics and events well
        formed; the config valid; no run already here by its uuid), and any failure
        leaves the store as it was (one transaction; the folders made are removed). A
        teacher run imported with its students (or already here) stays their teacher. A
        run that was queued or running where it came from arrives cancelled (`kdtui
        resume` continues it here)."""
        checked = self._check_imports(paths)
        made: list[Path] = []
        done: list[tuple[Path, int]] = []
        try:
            with self._tx() as con:
                new_ids: dict[str, int] = {}  # uuid -> id here
                for d, meta, config in checked:
                    run_id = self._import_one(con, d, meta, config, new_ids, made)
                    done.append((d, run_id))
        except BaseException:
            for path in made:
                safefs.remove_run_dir(self.runs_dir, path)
            raise
        return [(d, self.run(i)) for d, i in done]

    def _import_one(
        self, con, d: Path, meta: dict, config: str, new_ids: dict[str, int], made: list[Path]
    ) -> int:
        exp = meta["experiment"]
        have = con.execute("SELECT id FROM experiments WHERE uuid=?", (exp["uuid"],)).fetchone()
        exp_id = have[0] if have else self._insert_experiment(con, exp, None)
        teacher = meta.get("teacher")
        dep = None
        if teacher:
            dep = new_ids.get(teacher["uuid"])
            if dep is None:
                hit = con.execute("SELECT id FROM runs WHERE uuid=?", (teacher["uuid"],)).fetchone()
                dep = hit[0] if hit else None
        # the next id, reserved (AUTOINCREMENT never hands it out again) before its folder
        run_id = con.execute(
            "INSERT INTO runs(experiment_id, experiment, method, student_arch, dataset, "
            "config_toml, dir, created) VALUES (?, '', '', '', '', '', '', 0)",
            (exp_id,),
        ).lastrowid
        con.execute("DELETE FROM runs WHERE id=?", (run_id,))
        new_dir = self._make_run_dir(run_id)
        made.append(new_dir)
        new_teacher = None
        if dep is not None and teacher:
            dep_dir = con.execute("SELECT dir FROM runs WHERE id=?", (dep,)).fetchone()[0]
            new_teacher = {"id": dep, "uuid": teacher["uuid"], "folder": Path(dep_dir).name}
            cfg = reading.loads(config, file=str(d / layout.CONFIG), resolved=True)
            if cfg.teacher.from_run == str(teacher["id"]):
                cfg.teacher.from_run = str(dep)
                config = writing.resolved_toml(cfg)
        for entry in os.scandir(d):
            if entry.name not in (layout.META, layout.CONFIG, layout.CANCEL):
                _copy_file(Path(entry.path), new_dir / entry.name)
        safefs.write_new(new_dir / layout.CONFIG, config)
        new_meta = {
            **meta,
            "id": run_id,
            "experiment": {**exp, "id": exp_id},
            "teacher": new_teacher,
        }
        runfolder.write_meta(new_dir, new_meta)
        self._insert_folder(con, new_dir, new_meta, config, run_id, exp_id, dep)
        new_ids[meta["uuid"]] = run_id
        status, host = con.execute("SELECT status, host FROM runs WHERE id=?", (run_id,)).fetchone()
        if status in ACTIVE:
            where = f" on {host}" if host else ""
            why = f"imported while {status}{where}; `kdtui resume {run_id}` continues it"
            values = {"status": "cancelled", "error": why, "pid": None, "ended": time.time()}
            runfolder.append_event(new_dir, "cancelled", values, why)
            self._ingest_run(con, run_id)
        return run_id


_INSERT_METRIC = "INSERT INTO metrics(run_id, epoch, step, name, value, time) VALUES (?,?,?,?,?,?)"


class _Unchanged(Exception):
    """A guarded change that did not apply (the row had changed); carries the row."""

    def __init__(self, run: Run):
        self.run = run


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, so concurrent writers queue instead of failing."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.con.execute("COMMIT")
        else:
            self.con.execute("ROLLBACK")


# ---------------------------------------------------------------- rebuild and import
@dataclass
class Rebuilt:
    """What `rebuild` did: runs back, folders skipped (with why), the old database's name."""

    runs: int = 0
    metrics: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    old_db: Path | None = None


def _run_folders(runs_dir: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(runs_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [
        Path(e.path)
        for e in entries
        if layout.RUN_DIR_NAME.match(e.name) and e.is_dir(follow_symlinks=False)
    ]


def rebuild(home: str | Path | None = None) -> Rebuilt:
    """Recreate the database from the run folders: every run (its id kept), its status,
    metrics and events back. An existing database is moved aside first (with its -wal,
    so it stays readable), never deleted. The caller makes sure no engine runs."""
    home = layout.home_path(home)
    out = Rebuilt()
    db = home / layout.DB
    if db.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out.old_db = db.with_name(layout.db_set_aside(stamp))
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{db}{suffix}", f"{out.old_db}{suffix}")
    store = Store(home)
    found: list[tuple[Path, dict]] = []
    for run_dir in _run_folders(store.runs_dir):
        try:
            meta = runfolder.read_meta(run_dir)
        except runfolder.FolderError as e:
            out.skipped.append((run_dir.name, str(e)))
            continue
        if any(e["kind"] == runfolder.REMOVED for e in runfolder.read_events(run_dir)):
            out.skipped.append((run_dir.name, "removed with `kdtui rm`"))
            continue
        found.append((run_dir, meta))
    found.sort(key=lambda t: t[1]["id"])
    with store._tx() as con:
        seen: set[int] = set()
        for run_dir, meta in found:
            if meta["id"] in seen:
                out.skipped.append((run_dir.name, f"run id {meta['id']} is taken by another"))
                continue
            try:
                config = safefs.read_text(run_dir / layout.CONFIG)
            except (OSError, UnicodeDecodeError) as e:
                out.skipped.append((run_dir.name, f"{layout.CONFIG}: {e}"))
                continue
            try:
                annotations.read_folder(run_dir)
            except annotations.AnnotationError as e:  # the run comes back, the file is kept
                out.skipped.append((run_dir.name, f"{e}; the run is back without its note/tags"))
            seen.add(meta["id"])
            exp = meta["experiment"]
            if con.execute("SELECT 1 FROM experiments WHERE id=?", (exp["id"],)).fetchone() is None:
                store._insert_experiment(con, exp, exp["id"])
            teacher = meta.get("teacher")
            depends_on = teacher["id"] if teacher and teacher["id"] in seen else None
            store._insert_folder(con, run_dir, meta, config, meta["id"], exp["id"], depends_on)
            out.runs += 1
        out.metrics = con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    store.close()
    return out


class ImportRefused(StoreError):
    """A folder that cannot be imported; nothing of the whole import was kept."""


def _import_candidates(path: Path) -> list[Path]:
    """A run folder, or a folder of run folders (another store's runs/, or the store)."""
    if os.path.lexists(path / layout.META) or os.path.islink(path):
        return [path]
    if not path.is_dir():
        raise ImportRefused(f"{path}: no such folder")
    inner = path / layout.RUNS if (path / layout.RUNS).is_dir() else path
    found = [
        Path(e.path)
        for e in sorted(os.scandir(inner), key=lambda e: e.name)
        if os.path.lexists(Path(e.path) / layout.META) or e.is_symlink()
    ]
    if not found:
        raise ImportRefused(f"{path}: holds no run folder (a folder with {layout.META})")
    return found


def _copy_file(src: Path, dst: Path) -> None:
    """A plain file copied without following a link at either end."""
    fd = safefs.open_fd(src, os.O_RDONLY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImportRefused(f"{src} is not a plain file")
        out = safefs.open_fd(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
        finally:
            os.close(out)
    finally:
        os.close(fd)
