"""Where things live on disk: the store folder and a run's folder. Torch-free.

Every file name kdtui reads or writes is spelled here once; the run log's line
format is engine.core.runlog, the teacher cache's files engine.core.cachefiles.

    $KDTUI_HOME or ./.kdtui/          the store (private: 0700)
        kdtui.db (+ -wal, -shm)       SQLite: the index of the run folders (engine.core.store)
        engine.lock                   held by the running engine (engine.daemon.lock)
        engine.log, engine.json       the engine's log and its state for clients
        engine-options.json           options saved by `kdtui engine start`
        tui.json                      the app's settings (bell, pinned baseline)
        cache/teacher-<key>/          disk teacher-logit caches
        runs/.slurm/<job id>/         submitit's files of each Slurm job (engine.daemon.backends.slurm)
        runs/<id>-<suffix>/           one folder per run:
            run.json                  submit-time data: id, uuid, experiment (engine.core.runfolder)
            config.toml               its resolved config, as stored
            metrics.jsonl events.jsonl  append-only records: the source of truth the store
                                      ingests (engine.core.runfolder)
            cancel                    present while a cancel is asked (the worker polls it)
            log.txt                   its log (engine.core.runlog)
            worker.log                its worker's raw output (warnings, tracebacks)
            notes.json                its note and tags (engine.core.annotations)
            last.pth prev.pth best.pth  checkpoints (engine.core.checkpoint)
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

# ---------------------------------------------------------------- the store folder
HOME_ENV = "KDTUI_HOME"
DB = "kdtui.db"
RUNS = "runs"
CACHE = "cache"
ENGINE_LOCK = "engine.lock"
ENGINE_LOG = "engine.log"
ENGINE_STATE = "engine.json"
ENGINE_OPTIONS = "engine-options.json"
APP_SETTINGS = "tui.json"
SLURM_JOBS = ".slurm"  # under RUNS: on the shared file system with the run folders
# every file of the store itself: none may be a symlink, so nothing kdtui writes lands in
# someone else's file
STORE_FILES = (
    DB,
    f"{DB}-wal",
    f"{DB}-shm",
    ENGINE_LOCK,
    ENGINE_LOG,
    ENGINE_STATE,
    ENGINE_OPTIONS,
)


def db_set_aside(stamp: str) -> str:
    """Where `kdtui store rebuild` keeps the database it replaces (with its -wal, -shm)."""
    return f"{DB}.before-rebuild-{stamp}"


def default_home() -> Path:
    """The store: $KDTUI_HOME, else ./.kdtui."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.cwd() / ".kdtui"


def home_path(home: str | os.PathLike | None) -> Path:
    """A store folder as given (`--home`, ~ expanded), else the default one; absolute."""
    return (Path(home).expanduser() if home else default_home()).absolute()


# ---------------------------------------------------------------- a run's folder
CONFIG = "config.toml"
META = "run.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
CANCEL = "cancel"
LOG = "log.txt"
WORKER_OUTPUT = "worker.log"
ANNOTATIONS = "notes.json"
LAST, PREV, BEST = "last.pth", "prev.pth", "best.pth"
CHECKPOINTS = (LAST, PREV, BEST)  # preference order on equal epochs
RUN_DIR_NAME = re.compile(r"^\d{4,}-[0-9a-f]{6}$")


def run_dir_name(run_id: int) -> str:
    """`0012-a3f9c1`: the id, then a random suffix, so a reused id never reuses a folder."""
    return f"{run_id:04d}-{secrets.token_hex(3)}"
