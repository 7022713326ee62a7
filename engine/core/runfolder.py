"""A run's folder is the source of truth; the SQLite store is an index of folders. Torch-free.

Workers write only their run's folder and never open SQLite: a compute node on a
network file system (where SQLite's WAL does not work) shares nothing with the
machine running `kdtui` but these files. Files (names in engine.core.layout):

    run.json        written once at submit: the run's id and uuid, its experiment (id,
                    uuid, name, source, the TOML as written), the submit-time row data
                    (role, label, point, seed, method, fuse key, fingerprint...) and its
                    teacher run (id, uuid, folder name: a sibling in the same runs/).
    config.toml     its resolved config (written at submit).
    metrics.jsonl   append-only, one JSON object a line: {"name", "epoch", "step",
                    "value", "time"} (the store's metrics table), or {"rewind": N}: the
                    metrics of epochs >= N written before this line no longer count (a
                    resume from a checkpoint of N finished epochs). Appended with one
                    write(2) per log step (visible to readers at once) and fsynced at every
                    epoch; only the worker training the run writes it.
    events.jsonl    append-only, one JSON object a line: {"time", "kind", "set": {column:
                    value}, "message"}; `set` holds absolute values of the run's row
                    (status, pid, host, epoch, best_top1, ...), so folding the events in
                    order gives the row (`fold_state`) and applying one twice changes
                    nothing. Written by the worker (started, epoch, done/failed/cancelled
                    with the reason, rewind, fallback) and by the front ends through the
                    store (submitted, claimed, queued, cancel, removed, ...).
    cancel          exists while a cancel is asked: the worker polls it at every log step.
    log.txt, worker.log, *.pth   as before (engine.core.runlog, engine.core.checkpoint).

Crash safety. A record is a complete line; a reader (`read_records`) stops before an
unterminated last line and leaves it for next time. A writer that finds the file's tail
torn (a kill mid-write on a full disk) cuts it off (metrics: one writer) or starts on a
fresh line (events: several writers, so the torn piece stays as one bad line, skipped and
counted). The store keeps per run a byte offset into both files, advanced in the same
SQLite transaction that applies the lines, so ingesting twice adds nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import stat
import time
import uuid as uuidmod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core import safefs
from engine.core.layout import CANCEL, EVENTS, META, METRICS
from engine.core.metrics import TEST_TOP1, TEST_TOP5

FORMAT = 1
# the row columns an event may set (everything but the row's identity and where it lives)
STATE_COLUMNS = (
    "status",
    "epochs",
    "epoch",
    "step",
    "steps_per_epoch",
    "best_top1",
    "best_epoch",
    "last_top1",
    "last_top5",
    "teacher_top1",
    "params",
    "trained_params",
    "images_per_s",
    "eta_s",
    "host",
    "device",
    "gpu",
    "pid",
    "torch_version",
    "error",
    "cancel_requested",
    "resume",
    "attempts",
    "started",
    "ended",
    "priority",
    "heartbeat",  # set explicitly only by tests and tools; else the latest record's time
    # a run trained by a batch system (engine.daemon.backends.slurm), as the engine last
    # polled it: its job id ("123_0" in an array), node and scheduler state
    "job_id",
    "job_node",
    "job_state",
)
STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = STATUSES[2:]  # a run in one of these trains no more
# submit-time row data kept in run.json ("row")
META_COLUMNS = (
    "experiment",
    "role",
    "label",
    "point",
    "seed",
    "method",
    "teacher_arch",
    "student_arch",
    "dataset",
    "head",
    "priority",
    "fuse_key",
    "epochs",
    "created",
    "fingerprint",
    "identity",
    "world_size",  # processes training the run (engine.core.schema.world_size)
    "effective_batch",  # images per optimiser step: batch_size x world_size
)
REMOVED = "removed"  # the event `kdtui rm` leaves when it cannot delete the folder


class FolderError(ValueError):
    """A run folder that cannot be read as one: names the file, the line or key, and the fix."""


def new_uuid() -> str:
    return uuidmod.uuid4().hex


# ---------------------------------------------------------------- the worker's command line

WORKER_MODULE = "engine.worker"


def worker_args(
    home: str | os.PathLike | None,
    run_dirs: list[Path],
    *,
    resume: bool = False,
    rendezvous: str | None = None,
    node_rank: int = 0,
) -> list[str]:
    """The worker's arguments, in one place: run folders only, and the store folder for the
    disk teacher cache (none given: no disk cache); `resume`: a restarted batch job (Slurm
    requeue) resumes its unfinished runs; `rendezvous` (HOST:PORT) and `node_rank`: this
    node's launcher of a run across several nodes. engine.daemon.processes.worker_command runs
    `python -m WORKER_MODULE` with them, the Slurm backend's job calls the worker's main with
    them; engine.launch wraps the same in torchrun."""
    return [
        *(["--home", os.fspath(home)] if home is not None else []),
        *(os.fspath(d) for d in run_dirs),
        *(["--resume"] if resume else []),
        *(["--rendezvous", rendezvous, "--node-rank", str(node_rank)] if rendezvous else []),
    ]


# ---------------------------------------------------------------- run.json


def write_meta(run_dir: Path, meta: dict) -> None:
    """run.json, once (O_EXCL: never over another run's)."""
    safefs.write_new(Path(run_dir) / META, json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_meta(run_dir: Path) -> dict:
    """run.json, checked: FolderError names what is wrong."""
    path = Path(run_dir) / META
    try:
        text = safefs.read_text(path)
    except FileNotFoundError:
        raise FolderError(f"{path}: missing; not a kdtui run folder") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FolderError(f"{path}: cannot be read ({e})") from None
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise FolderError(f"{path}: not JSON ({e}); restore it from the original copy") from None
    check_meta(meta, path)
    return meta


def check_meta(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict):
        raise FolderError(f"{path}: must hold a JSON object")

    def need(obj: dict, key: str, kind, where: str) -> None:
        if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
            raise FolderError(
                f"{path}: key {where}{key!r} is missing or not a {getattr(kind, '__name__', kind)}"
            )

    need(meta, "format", int, "")
    if meta["format"] > FORMAT:
        raise FolderError(f"{path}: format {meta['format']} is newer than this kdtui; upgrade")
    need(meta, "id", int, "")
    need(meta, "uuid", str, "")
    need(meta, "experiment", dict, "")
    need(meta, "row", dict, "")
    for key in ("uuid", "name", "config_toml"):
        need(meta["experiment"], key, str, "experiment.")
    need(meta["experiment"], "id", int, "experiment.")
    teacher = meta.get("teacher")
    if teacher is not None:
        if not isinstance(teacher, dict):
            raise FolderError(f"{path}: key 'teacher' must be an object or null")
        need(teacher, "id", int, "teacher.")
        need(teacher, "uuid", str, "teacher.")
        need(teacher, "folder", str, "teacher.")
        if "/" in teacher["folder"] or teacher["folder"] in ("", ".", ".."):
            raise FolderError(f"{path}: key 'teacher.folder' must be a folder name")
    row = meta["row"]
    unknown = set(row) - set(META_COLUMNS)
    if unknown:
        raise FolderError(f"{path}: unknown keys row.{sorted(unknown)[0]!r}")
    for key in ("experiment", "role", "method", "student_arch", "dataset"):
        need(row, key, str, "row.")
    for key, value in row.items():
        if not _plain(value):
            raise FolderError(f"{path}: key row.{key!r} is not a plain value")
    for key, value in meta["experiment"].items():
        if not _plain(value):
            raise FolderError(f"{path}: key experiment.{key!r} is not a plain value")


# ---------------------------------------------------------------- appending


def _write_all(fd: int, data: bytes, path: Path) -> None:
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except OSError as e:
        if e.errno in safefs.FULL_ERRNOS:
            raise safefs.DiskFull(path) from e
        raise


def _tail_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def append_records(
    path: Path, records: list[dict], *, fsync: bool = False, cut_torn: bool = False
) -> None:
    """Records as JSON lines, in one write(2) (no follow of a symlink; DiskFull when full).

    A torn tail is cut off (`cut_torn`: the caller is the file's only writer) or ended
    with a newline first, so the new lines stay whole."""
    if not records:
        return
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    fd = safefs.open_fd(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        if _tail_torn(fd):
            if cut_torn:
                text = _read_fd(fd, 0)
                os.ftruncate(fd, text.rfind(b"\n") + 1)
            else:
                data = b"\n" + data
        _write_all(fd, data, path)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_fd(fd: int, offset: int) -> bytes:
    chunks = []
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def metric_record(epoch: int, step: int, name: str, value: float, when: float) -> dict:
    return {
        "name": name,
        "epoch": int(epoch),
        "step": int(step),
        "value": float(value),
        "time": when,
    }


def append_metrics(run_dir: Path, rows, *, when: float | None = None, fsync: bool = False) -> None:
    """rows of (epoch, step, name, value)."""
    when = time.time() if when is None else when
    records = [metric_record(e, s, n, v, when) for e, s, n, v in rows]
    append_records(Path(run_dir) / METRICS, records, fsync=fsync, cut_torn=True)


def event_record(
    kind: str, values: dict | None = None, message: str | None = None, when: float | None = None
) -> dict:
    record: dict[str, Any] = {"time": time.time() if when is None else when, "kind": kind}
    if values:
        bad = set(values) - set(STATE_COLUMNS)
        if bad:
            raise KeyError(f"unknown run columns {bad}")
        record["set"] = values
    if message is not None:
        record["message"] = message
    return record


def append_event(
    run_dir: Path,
    kind: str,
    values: dict | None = None,
    message: str | None = None,
    *,
    fsync: bool = True,
) -> dict:
    record = event_record(kind, values, message)
    append_records(Path(run_dir) / EVENTS, [record], fsync=fsync)
    return record


def append_finish(run_dir: Path, status: str, error: str | None = None) -> dict:
    """The event that ends a run (done, failed, cancelled): what a worker or a launcher
    writes when it ends one; the store's `finish` writes the same."""
    assert status in ("done", "failed", "cancelled"), status
    values: dict[str, Any] = {"status": status, "ended": time.time(), "pid": None}
    if error is not None:
        values["error"] = error
    return append_event(run_dir, status, values, error or "")


# ---------------------------------------------------------------- reading


@dataclass
class Chunk:
    """What a file holds past an offset: whole lines parsed, where they end, bad lines."""

    records: list[dict] = field(default_factory=list)
    end: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (byte offset, why)
    size: int = 0


def read_records(path: Path, offset: int = 0, check=None) -> Chunk:
    """Complete lines of a JSON-lines file from `offset` (an unterminated last line is left
    for next time); `check(record)` returns why a record is bad, or None."""
    try:
        fd = safefs.open_fd(path, os.O_RDONLY)
    except FileNotFoundError:
        return Chunk(end=offset)
    try:
        size = os.fstat(fd).st_size
        data = _read_fd(fd, offset) if size > offset else b""
    finally:
        os.close(fd)
    chunk = Chunk(end=offset, size=size)
    whole = data.rfind(b"\n") + 1
    at = offset
    for line in data[:whole].split(b"\n")[:-1]:
        here, at = at, at + len(line) + 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            chunk.bad.append((here, f"not JSON ({e.msg})"))
            continue
        why = check(record) if check else None
        if why:
            chunk.bad.append((here, why))
            continue
        chunk.records.append(record)
    chunk.end = offset + whole
    return chunk


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_metric(r) -> str | None:
    if not isinstance(r, dict):
        return "not a JSON object"
    if "rewind" in r:
        return None if isinstance(r["rewind"], int) and r["rewind"] >= 0 else "bad 'rewind'"
    if not isinstance(r.get("name"), str):
        return "key 'name' is missing or not a string"
    for key in ("epoch", "step"):
        if not isinstance(r.get(key), int) or isinstance(r.get(key), bool):
            return f"key {key!r} is missing or not an integer"
    for key in ("value", "time"):
        if not _number(r.get(key)) or math.isnan(r[key]):
            return f"key {key!r} is missing or not a number"
    for key in ("epoch", "step"):
        if not _plain(r[key]):
            return f"key {key!r} is out of range"
    return None


def _plain(value) -> bool:
    """What a SQLite column takes: text, a 64-bit integer, a finite float, or null."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, type(None)))


def check_event(r) -> str | None:
    if not isinstance(r, dict):
        return "not a JSON object"
    if not isinstance(r.get("kind"), str):
        return "key 'kind' is missing or not a string"
    if not _number(r.get("time")) or not math.isfinite(r["time"]):
        return "key 'time' is missing or not a number"
    values = r.get("set", {})
    if not isinstance(values, dict):
        return "key 'set' is not an object"
    bad = sorted(set(values) - set(STATE_COLUMNS))
    if bad:
        return f"key 'set.{bad[0]}' is not a run column"
    for k, v in values.items():
        if not _plain(v):
            return f"key 'set.{k}' is not a plain value"
    if values.get("status", "queued") not in STATUSES:
        return f"key 'set.status' is {values['status']!r}, not one of {', '.join(STATUSES)}"
    if not isinstance(r.get("message", ""), str):
        return "key 'message' is not a string"
    return None


def read_metrics(run_dir: Path) -> list[dict]:
    """Every metric that counts (rewinds applied), in order."""
    out: list[dict] = []
    for r in read_records(Path(run_dir) / METRICS, 0, check_metric).records:
        if "rewind" in r:
            out = [m for m in out if m["epoch"] < r["rewind"]]
        else:
            out.append(r)
    return out


def read_events(run_dir: Path) -> list[dict]:
    return read_records(Path(run_dir) / EVENTS, 0, check_event).records


def fold_state(events: list[dict]) -> dict:
    """The row's state after these events (the columns they set, plus `heartbeat`)."""
    state: dict[str, Any] = {}
    for e in events:
        values = e.get("set", {})
        state.update(values)
        if "heartbeat" not in values:
            state["heartbeat"] = max(state.get("heartbeat") or 0.0, e["time"])
    return state


def read_state(run_dir: Path) -> dict:
    return fold_state(read_events(run_dir))


# ---------------------------------------------------------------- cancel


def request_cancel(run_dir: Path) -> None:
    with contextlib.suppress(FileExistsError):
        safefs.write_new(Path(run_dir) / CANCEL, f"{time.time()} {socket.gethostname()}\n")


def clear_cancel(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(run_dir) / CANCEL)


def cancel_requested(run_dir: Path) -> bool:
    """What the worker polls at every log step: one stat."""
    return os.path.lexists(Path(run_dir) / CANCEL)


# ---------------------------------------------------------------- resume


def accuracy(metrics: list[dict]) -> dict:
    """best/last test accuracy of a run from its metrics (the row's columns)."""
    top1 = [(m["epoch"], m["value"]) for m in metrics if m["name"] == TEST_TOP1]
    top5 = [m["value"] for m in metrics if m["name"] == TEST_TOP5]
    best = max(top1, key=lambda t: t[1]) if top1 else None
    return {
        "best_top1": best[1] if best else None,
        "best_epoch": best[0] + 1 if best else None,
        "last_top1": top1[-1][1] if top1 else None,
        "last_top5": top5[-1] if top5 else None,
    }


def rewind(
    run_dir: Path, epochs: int, commit: dict | None = None, message: str | None = None
) -> dict[str, int]:
    """Make the folder agree with a checkpoint of `epochs` finished epochs.

    Appends a rewind marker (later epochs and the unfinished one no longer count), the
    checkpoint's own epoch metrics that never reached the file (`commit`: {"epoch",
    "step", "time", "metrics"}), and a `rewind` event with the row's epoch and accuracy
    recomputed (`message`: where it resumed from). Returns {"dropped": metrics that stop counting, "replayed": added}.
    """
    run_dir = Path(run_dir)
    have = read_metrics(run_dir)
    kept = [m for m in have if m["epoch"] < epochs]
    replay: list[dict] = []
    if commit and int(commit.get("epoch", -1)) == epochs - 1:
        present = {m["name"] for m in kept if m["epoch"] == epochs - 1}
        when = float(commit.get("time", time.time()))
        for name, value in commit.get("metrics", {}).items():
            if name not in present:
                replay.append(
                    metric_record(epochs - 1, int(commit.get("step", 0)), name, value, when)
                )
    append_records(run_dir / METRICS, [{"rewind": int(epochs)}, *replay], fsync=True, cut_torn=True)
    values = {"epoch": int(epochs), "step": 0, **accuracy(kept + replay)}
    append_event(run_dir, "rewind", values, message)
    return {"dropped": len(have) - len(kept), "replayed": len(replay)}


# ---------------------------------------------------------------- importing


def check_folder(run_dir: Path) -> dict:
    """A run folder from elsewhere, checked whole before anything is copied: only regular
    files (no links, devices or sub-folders), run.json, metrics and events all well formed.
    Returns its run.json; FolderError says what is wrong and where."""
    run_dir = Path(run_dir)
    try:
        st = os.lstat(run_dir)
    except OSError as e:
        raise FolderError(f"{run_dir}: cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise FolderError(f"{run_dir} is a symbolic link; import the folder it points to")
    if not stat.S_ISDIR(st.st_mode):
        raise FolderError(f"{run_dir} is not a folder")
    for entry in os.scandir(run_dir):
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise FolderError(
                f"{entry.path} is a symbolic link; kdtui imports only plain files "
                "(copy the folder with `cp -rL` or remove the link)"
            )
        if not stat.S_ISREG(mode):
            raise FolderError(f"{entry.path} is not a plain file; remove it before importing")
    meta = read_meta(run_dir)
    for name, check in ((METRICS, check_metric), (EVENTS, check_event)):
        chunk = read_records(run_dir / name, 0, check)
        if chunk.bad:
            at, why = chunk.bad[0]
            line = safefs.read_bytes(run_dir / name)[:at].count(b"\n") + 1
            raise FolderError(
                f"{run_dir / name}: line {line}: {why}; fix or delete that line, then import again"
            )
    return meta
