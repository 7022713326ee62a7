"""The store: one SQLite database (WAL) and one folder per run. Torch-free.

Every process (app, CLI, engine, workers) opens its own connection; WAL
lets the app read while workers append metrics. Run ids come from
AUTOINCREMENT and run folders are created exclusively, so nothing is ever
reused or overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.core import (
    annotations,
    display,
    layout,
    liveness,
    planning,
    reading,
    safefs,
    schema,
    writing,
)
from engine.core import fingerprint as fpmod
from engine.core import metrics as M
from engine.core.reading import tomllib

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    source TEXT,
    config_toml TEXT NOT NULL,
    created REAL NOT NULL
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
    trained_params INTEGER,
    fingerprint TEXT,
    identity TEXT,
    world_size INTEGER,
    effective_batch INTEGER,
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
    note TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]'
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
"""
SCHEMA_VERSION = 4
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
)


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
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            self._backfill_fingerprints(con)
            self._backfill_world(con)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
        try:  # several nodes need the Slurm backend: refused before anything is stored
            reading.check_local(exp, file=source)
        except schema.ConfigError as e:
            raise StoreError(str(e)) from None
        written = writing.dumps(exp, full=False)  # as the user wrote it: what a clone starts from
        exp = planning.absolute_paths(exp)
        plans = planning.expand(exp)
        now = time.time()
        created: list[int] = []
        with self._tx() as con:
            exp_id = con.execute(
                "INSERT INTO experiments(name, source, config_toml, created) VALUES (?,?,?,?)",
                (exp.name, source, written, now),
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
                run_id = self._insert_run(con, exp_id, plan, status, now)
                if holder is not None:
                    con.execute("UPDATE runs SET pid=? WHERE id=?", (holder, run_id))
                created.append(run_id)
        return [self.run(i) for i in created]

    def _insert_run(self, con, exp_id: int, plan: planning.RunPlan, status: str, now: float) -> int:
        """Record a resolved plan: its row, and its config in the run's new folder."""
        cfg = plan.config
        spec = cfg.method
        teacher_arch = cfg.teacher.arch if spec.needs_teacher else ""
        toml_text = writing.resolved_toml(cfg)
        run_id = con.execute(
            """INSERT INTO runs(experiment_id, experiment, role, label, point, seed, status,
               method, teacher_arch, student_arch, dataset, head, config_toml, dir, depends_on,
               priority, fuse_key, epochs, created, fingerprint, identity, world_size,
               effective_batch)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
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
            ),
        ).lastrowid
        run_dir = self._make_run_dir(run_id)
        safefs.write_new(run_dir / layout.CONFIG, toml_text)
        con.execute("UPDATE runs SET dir=? WHERE id=?", (str(run_dir), run_id))
        return run_id

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
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += statuses
        if experiment:
            sql += " AND experiment=?"
            args.append(experiment)
        if ids is not None:
            ids = [int(i) for i in ids]
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids
        return [Run(**dict(r)) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def runs_without_config(self) -> list[Run]:
        """Every run, its `config_toml` left empty: what the app polls twice a second (the
        configs are most of a row's bytes; a run's own is read when it is opened)."""
        columns = ", ".join(c for c in RUN_COLUMNS if c != "config_toml")
        sql = f"SELECT {columns}, '' AS config_toml FROM runs ORDER BY id"
        return [Run(**dict(r)) for r in self.conn.execute(sql)]

    def cancel_requested(self, run_id: int) -> bool:
        """Whether someone asked this run to stop (the worker checks at every log step)."""
        row = self.conn.execute(
            "SELECT cancel_requested FROM runs WHERE id=?", (int(run_id),)
        ).fetchone()
        return bool(row and row[0])

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

    # ------------------------------------------------------------ lifecycle
    def update(self, run_id: int, **values: Any) -> None:
        bad = set(values) - set(RUN_COLUMNS)
        if bad:
            raise KeyError(f"unknown run columns {bad}")
        cols = ", ".join(f"{k}=?" for k in values)
        self.conn.execute(f"UPDATE runs SET {cols} WHERE id=?", (*values.values(), int(run_id)))

    def claim(self, run_id: int, **values: Any) -> bool:
        """queued -> running, atomically; False when someone else got it first."""
        values.setdefault("started", time.time())
        values.setdefault("host", socket.gethostname())
        cols = ", ".join(f"{k}=?" for k in values)
        with self._tx() as con:
            cur = con.execute(
                f"UPDATE runs SET status='running', heartbeat=?, error=NULL, "
                f"attempts=attempts+1, {cols} WHERE id=? AND status='queued'",
                (time.time(), *values.values(), int(run_id)),
            )
            return cur.rowcount == 1

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        assert status in FINISHED, status
        self.conn.execute(
            "UPDATE runs SET status=?, error=COALESCE(?, error), ended=?, pid=NULL, heartbeat=? "
            "WHERE id=?",
            (status, error, time.time(), time.time(), int(run_id)),
        )
        self.event(run_id, status, error or "")

    def requeue(self, run_id: int, *, resume: bool = True, holder: int | None = None) -> Run:
        """Back to the queue; `holder` (a foreground pid) keeps the engine off it."""
        run = self.run(run_id)
        if run.status not in ("failed", "cancelled", "running"):
            raise StoreError(f"run {run_id} is {run.status}; only failed or cancelled runs resume")
        self.conn.execute(
            "UPDATE runs SET status='queued', resume=?, cancel_requested=0, pid=?, "
            "ended=NULL, heartbeat=? WHERE id=?",
            (1 if resume else 0, holder, time.time(), int(run_id)),
        )
        self.event(run_id, "queued", "resume" if resume else "restart")
        return self.run(run_id)

    def request_cancel(self, run_id: int) -> str:
        """Queued runs are cancelled now; running ones are asked to stop; dead ones end now."""
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
            self.update(run_id, cancel_requested=1)
            self.event(run_id, "cancel", "cancel requested")
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
        with self._tx() as con:
            con.execute("DELETE FROM metrics WHERE run_id=?", (run.id,))
            con.execute("DELETE FROM events WHERE run_id=?", (run.id,))
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
        """rows of (epoch, step, name, value), committed at once."""
        when = when or time.time()
        data = [(int(run_id), int(e), int(s), n, float(v), when) for e, s, n, v in rows]
        if not data:
            return
        with self._tx() as con:
            con.executemany(
                "INSERT INTO metrics(run_id, epoch, step, name, value, time) VALUES (?,?,?,?,?,?)",
                data,
            )
            con.execute("UPDATE runs SET heartbeat=? WHERE id=?", (when, int(run_id)))

    def metrics(
        self,
        run_id: int,
        *,
        since_id: int = 0,
        names: Sequence[str] | None = None,
    ) -> list[Metric]:
        sql = "SELECT * FROM metrics WHERE run_id=? AND id>?"
        args: list[Any] = [int(run_id), int(since_id)]
        if names:
            sql += f" AND name IN ({','.join('?' * len(names))})"
            args += list(names)
        return [Metric(**dict(r)) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def series(self, run_id: int, name: str) -> list[tuple[int, int, float]]:
        """(epoch, step, value) of one metric, in order."""
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
        """Drop metrics of epochs beyond a checkpoint before resuming from it."""
        self.conn.execute(
            "DELETE FROM metrics WHERE run_id=? AND epoch>?", (int(run_id), int(after_epoch))
        )

    # ------------------------------------------------------------ crash safety
    def settle_gone(self, run: Run, status: str, error: str) -> bool:
        """End a running row whose process is gone, unless it changed since `run` was read."""
        assert status in FINISHED, status
        now = time.time()
        cur = self.conn.execute(
            "UPDATE runs SET status=?, error=?, ended=?, pid=NULL, heartbeat=? "
            "WHERE id=? AND status='running' AND pid IS ?",
            (status, error, now, now, int(run.id), run.pid),
        )
        if cur.rowcount == 1:
            self.event(run.id, status, error)
        return cur.rowcount == 1

    def commit_epoch(
        self,
        run_id: int,
        rows: Iterable[tuple[int, int, str, float]],
        values: dict[str, Any],
        *,
        before_commit=None,
    ) -> None:
        """An epoch's metrics and the run row's progress/accuracy, in one transaction.

        So a kill leaves either both or neither; what a kill after the
        checkpoint but before this loses is replayed from the checkpoint
        on resume (`rewind`).
        """
        bad = set(values) - set(RUN_COLUMNS)
        if bad:
            raise KeyError(f"unknown run columns {bad}")
        when = time.time()
        data = [(int(run_id), int(e), int(s), n, float(v), when) for e, s, n, v in rows]
        cols = ", ".join(f"{k}=?" for k in values)
        with self._tx() as con:
            con.executemany(
                "INSERT INTO metrics(run_id, epoch, step, name, value, time) VALUES (?,?,?,?,?,?)",
                data,
            )
            con.execute(
                f"UPDATE runs SET {cols}, heartbeat=? WHERE id=?",
                (*values.values(), when, int(run_id)),
            )
            if before_commit is not None:
                before_commit()

    def rewind(self, run_id: int, epochs: int, commit: dict | None = None) -> dict[str, int]:
        """Make the store agree with a checkpoint of `epochs` finished epochs.

        Drops metrics of later epochs (and the unfinished one), records the
        checkpoint's own epoch metrics when the kill came before they were
        committed (`commit`: {"epoch", "step", "time", "metrics"}), and
        recomputes epoch, best and last accuracy from what remains.
        Returns {"dropped": rows deleted, "replayed": rows added}.
        """
        replayed = 0
        with self._tx() as con:
            dropped = con.execute(
                "DELETE FROM metrics WHERE run_id=? AND epoch>=?", (int(run_id), int(epochs))
            ).rowcount
            if commit and int(commit.get("epoch", -1)) == epochs - 1:
                for name, value in commit.get("metrics", {}).items():
                    have = con.execute(
                        "SELECT 1 FROM metrics WHERE run_id=? AND name=? AND epoch=? LIMIT 1",
                        (int(run_id), name, epochs - 1),
                    ).fetchone()
                    if have is None:
                        con.execute(
                            "INSERT INTO metrics(run_id, epoch, step, name, value, time) "
                            "VALUES (?,?,?,?,?,?)",
                            (
                                int(run_id),
                                epochs - 1,
                                int(commit.get("step", 0)),
                                name,
                                float(value),
                                float(commit.get("time", time.time())),
                            ),
                        )
                        replayed += 1
            top1 = con.execute(
                "SELECT epoch, value FROM metrics WHERE run_id=? AND name=? ORDER BY epoch, id",
                (int(run_id), M.TEST_TOP1),
            ).fetchall()
            top5 = con.execute(
                "SELECT value FROM metrics WHERE run_id=? AND name=? "
                "ORDER BY epoch DESC, id DESC LIMIT 1",
                (int(run_id), M.TEST_TOP5),
            ).fetchone()
            best = max(top1, key=lambda r: r[1]) if top1 else None
            con.execute(
                "UPDATE runs SET epoch=?, step=0, best_top1=?, best_epoch=?, last_top1=?, "
                "last_top5=? WHERE id=?",
                (
                    int(epochs),
                    best[1] if best else None,
                    best[0] + 1 if best else None,
                    top1[-1][1] if top1 else None,
                    top5[0] if top5 else None,
                    int(run_id),
                ),
            )
        return {"dropped": dropped, "replayed": replayed}

    def remove_run_dir(self, run: Run) -> str | None:
        """Delete a run's folder only as a real directory inside the real runs/ (else why not)."""
        if not run.dir:
            return None
        return safefs.remove_run_dir(self.runs_dir, Path(run.dir))

    # ------------------------------------------------------------ events
    def event(self, run_id: int | None, kind: str, message: str = "") -> None:
        self.conn.execute(
            "INSERT INTO events(run_id, time, kind, message) VALUES (?,?,?,?)",
            (run_id, time.time(), kind, message),
        )

    def events(self, since_id: int = 0) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM events WHERE id>? ORDER BY id", (since_id,)
        ).fetchall()


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
