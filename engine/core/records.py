"""Machine-readable listings: `kdtui ls --json` and `kdtui leaderboard --json`. Torch-free.

A stable, versioned schema (README, "Machine-readable listings"): the document is
`{"schema": 1, "kind": "runs" | "leaderboard", ...}`; fields are only ever added
within a schema version; renaming or removing one raises it. Accuracies are
percentages, gap closed a fraction, times Unix seconds; absent values are null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from engine.core import liveness
from engine.core.leaderboard import Row
from engine.core.store import Run

SCHEMA = 1

RUN_FIELDS = (
    "id",
    "experiment",
    "label",
    "role",
    "seed",
    "point",
    "status",
    "method",
    "teacher",
    "student",
    "dataset",
    "head",
    "epoch",
    "epochs",
    "step",
    "steps_per_epoch",
    "progress",
    "best_top1",
    "best_epoch",
    "last_top1",
    "last_top5",
    "teacher_top1",
    "student_params",
    "trained_params",
    "world_size",
    "effective_batch",
    "images_per_s",
    "eta_s",
    "fingerprint",
    "depends_on",
    "device",
    "gpu",
    "host",
    "created",
    "started",
    "ended",
    "error",
    "dir",
    "slurm_job",
    "slurm_node",
    "slurm_state",
    "note",
    "tags",
)

ROW_FIELDS = (
    "rank",
    "name",
    "experiment",
    "label",
    "role",
    "method",
    "teacher",
    "student",
    "dataset",
    "head",
    "best_top1_mean",
    "best_top1_std",
    "last_top1_mean",
    "last_top1_std",
    "n",
    "reruns",
    "running_best_top1",
    "gap_closed",
    "gap_note",
    "teacher_top1",
    "baseline_top1",
    "baseline",
    "baseline_run_ids",
    "baseline_fingerprint",
    "fingerprint",
    "student_params",
    "trained_params",
    "world_size",
    "effective_batch",
    "epoch",
    "epochs",
    "status",
    "run_ids",
    "members",
)

MEMBER_FIELDS = (
    "run_id",
    "experiment",
    "seed",
    "status",
    "counted",
    "note",
    "best_top1",
    "last_top1",
    "teacher_top1",
    "tags",
    "run_note",
)


def _num(x: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is null."""
    return None if x is None or not math.isfinite(x) else x


def _counts(statuses: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return out


def run_record(r: Run) -> dict[str, Any]:
    """One run as `kdtui ls` shows it; `status` is "dead" for a running run whose process
    is gone (as in `kdtui ls`)."""
    rec = {
        "id": r.id,
        "experiment": r.experiment,
        "label": r.label,
        "role": r.role,
        "seed": r.seed,
        "point": json.loads(r.point or "{}"),
        "status": liveness.shown_status(r),
        "method": r.method,
        "teacher": r.teacher_arch or None,
        "student": r.student_arch,
        "dataset": r.dataset,
        "head": r.head,
        "epoch": r.epoch,
        "epochs": r.epochs,
        "step": r.step,
        "steps_per_epoch": r.steps_per_epoch,
        "progress": _num(r.progress),
        "best_top1": _num(r.best_top1),
        "best_epoch": r.best_epoch,
        "last_top1": _num(r.last_top1),
        "last_top5": _num(r.last_top5),
        "teacher_top1": _num(r.teacher_top1),
        "student_params": r.params,
        "trained_params": r.trained_params,
        "world_size": r.world_size,
        "effective_batch": r.effective_batch,
        "images_per_s": _num(r.images_per_s),
        "eta_s": _num(r.eta_s) if r.status == "running" else None,
        "fingerprint": r.fingerprint,
        "depends_on": r.depends_on,
        "device": r.device,
        "gpu": r.gpu,
        "host": r.host,
        "created": _num(r.created),
        "started": _num(r.started),
        "ended": _num(r.ended),
        "error": r.error,
        "dir": r.dir,
        "slurm_job": r.job_id,
        "slurm_node": r.job_node,
        "slurm_state": r.job_state,
        "note": r.note,
        "tags": r.tag_list,
    }
    return rec


def row_record(row: Row, rank: int) -> dict[str, Any]:
    """One leaderboard row, with the same figures as its CSV line, and its member runs."""
    rec = {
        "rank": rank,
        "name": row.name,
        "experiment": row.experiment,
        "label": row.label,
        "role": row.role,
        "method": row.method,
        "teacher": row.teacher or None,
        "student": row.student,
        "dataset": row.dataset,
        "head": row.head,
        "best_top1_mean": _num(row.best_mean),
        "best_top1_std": _num(row.best_std),
        "last_top1_mean": _num(row.last_mean),
        "last_top1_std": _num(row.last_std),
        "n": row.n,
        "reruns": row.reruns,
        "running_best_top1": _num(row.provisional_mean) if row.best_mean is None else None,
        "gap_closed": _num(row.gap),
        "gap_note": row.gap_note or None,
        "teacher_top1": _num(row.teacher_top1),
        "baseline_top1": _num(row.baseline),
        "baseline": row.baseline_label or None,
        "baseline_run_ids": list(row.baseline_runs),
        "baseline_fingerprint": row.baseline_fingerprint,
        "fingerprint": row.fingerprint,
        "student_params": row.params,
        "trained_params": row.trained_params,
        "world_size": row.world_size,
        "effective_batch": row.effective_batch,
        "epoch": row.epoch,
        "epochs": row.epochs,
        "status": _counts(row.statuses),
        "run_ids": list(row.run_ids),
        "members": [
            {
                "run_id": m.id,
                "experiment": m.experiment,
                "seed": m.seed,
                "status": m.status,
                "counted": m.counted,
                "note": m.note,
                "best_top1": _num(m.best),
                "last_top1": _num(m.last),
                "teacher_top1": _num(m.teacher_top1),
                "tags": list(m.tags),
                "run_note": m.run_note,
            }
            for m in row.members
        ],
    }
    return rec


def runs_document(runs: Sequence[Run], store: str) -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": "runs", "store": store, "runs": [run_record(r) for r in runs]}


def leaderboard_document(rows: Sequence[Row], store: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "kind": "leaderboard",
        "store": store,
        "rows": [row_record(row, i) for i, row in enumerate(rows, 1)],
    }


def dumps(document: dict[str, Any]) -> str:
    """ASCII JSON (control and bidi characters of names escaped), one document, newline."""
    return json.dumps(document, indent=1, ensure_ascii=True, allow_nan=False) + "\n"
