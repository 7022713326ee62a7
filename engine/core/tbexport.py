"""TensorBoard event files of runs: `kdtui export --format tensorboard -o DIR`. Torch-free.

Written with the `tensorboard` package's own writer (EventFileWriter and its protos, no
TensorFlow, no torch), imported only when an export runs. The layout, per run:

    DIR/<id>-<experiment>-<label>/          hparams (the run's config) + per-step scalars
    DIR/<id>-<experiment>-<label>/epoch/    per-epoch scalars (step = epoch, from 1)

Every event file has steps that only grow (per-step metrics on the global step,
per-epoch ones on the epoch): what TensorBoard's reloader and `wandb sync
--sync-tensorboard` expect. The run's folder is an hparams *session* (the hparams
plugin's session start and end infos) whose metrics are its own and its `epoch/`
folder's scalars. Exporting again replaces the event files of the runs exported.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core import curves as curvesmod
from engine.core.store import Run, Store

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EPOCH_DIR = "epoch"
EVENTS_PREFIX = "events.out.tfevents."
NAME_MAX = 120
# the hparams plugin's session end status for each finished status; running runs have none
END_STATUS = {"done": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "cancelled": "STATUS_ABORTED"}


@dataclass
class Exported:
    run: Run
    folder: Path
    scalars: int


def folder_name(run: Run) -> str:
    """`12-kd-r32x4-r8x4-lr=0.05_seed=1`: the run id first (unique), then what it is."""
    parts = [str(run.id), run.experiment] + ([run.label] if run.label else [])
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "_", "-".join(parts)).strip("._")
    return name[:NAME_MAX]


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _hparam(value: Any) -> bool | float | str:
    """What the hparams plugin holds: bools, numbers, strings (lists as compact JSON)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return json.dumps(value, separators=(", ", ": "), default=str)


def hparams_of(run: Run) -> dict[str, bool | float | str]:
    """The run's resolved config as dotted keys (`optim.lr`, `distill.method`), its seed
    instead of the one-element `seeds`, and what names the run in the store."""
    flat = _flatten(tomllib.loads(run.config_toml))
    flat.pop("seeds", None)
    out = {key: _hparam(value) for key, value in flat.items()}
    out.update(
        seed=float(run.seed),
        run_id=float(run.id),
        label=run.label,
        role=run.role,
        status=run.status,
        fingerprint=run.fingerprint or "",
    )
    return out


def _clear_events(folder: Path) -> None:
    """Event files an earlier export left here (only regular files of that name)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for e in entries:
        if e.name.startswith(EVENTS_PREFIX) and e.is_file(follow_symlinks=False):
            os.unlink(e.path)


def _hparams_summaries(run: Run):
    """Session start (the config) and, for a finished run, session end: the hparams
    plugin's own protos, built without TensorFlow."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

    start = summary_v2.hparams_pb(
        hparams_of(run), trial_id=folder_name(run), start_time_secs=run.started or run.created
    )
    end = None
    if run.status in END_STATUS:
        info = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value(END_STATUS[run.status]),
            end_time_secs=run.ended or run.heartbeat or run.created,
        )
        end = summary_pb2.Summary()
        end.value.add(
            tag=metadata.SESSION_END_INFO_TAG,
            metadata=metadata.create_summary_metadata(
                plugin_data_pb2.HParamsPluginData(session_end_info=info)
            ),
            tensor=metadata.NULL_TENSOR,
        )
    return start, end


def write_run(store: Store, run: Run, out: Path) -> Exported | None:
    """One run's folder: hparams and per-step scalars, per-epoch scalars under epoch/.
    None (and nothing written) for a run that logged nothing yet."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    folder = out / folder_name(run)
    per_step, per_epoch = [], []
    for m in store.metrics(run.id):
        x = curvesmod.x_of(m.name, m.epoch, m.step)
        (per_step if curvesmod.per_step(m.name) else per_epoch).append((x, m.time, m))
    if not per_step and not per_epoch:
        return None
    for path in (folder, folder / EPOCH_DIR):
        _clear_events(path)

    def scalar(x: int, when: float, name: str, value: float):
        value_pb = summary_pb2.Summary.Value(tag=name, simple_value=value)
        return event_pb2.Event(
            wall_time=when, step=x, summary=summary_pb2.Summary(value=[value_pb])
        )

    start, end = _hparams_summaries(run)
    t0 = run.started or run.created
    writer = EventFileWriter(str(folder), max_queue_size=1000, flush_secs=3600)
    try:
        writer.add_event(event_pb2.Event(wall_time=t0, step=0, summary=start))
        for x, when, m in sorted(per_step, key=lambda t: (t[0], t[2].id)):
            writer.add_event(scalar(x, when, m.name, m.value))
        if end is not None:
            last = max((x for x, _, _ in per_step), default=0)
            writer.add_event(event_pb2.Event(wall_time=run.ended or t0, step=last, summary=end))
    finally:
        writer.close()
    if per_epoch:
        writer = EventFileWriter(str(folder / EPOCH_DIR), max_queue_size=1000, flush_secs=3600)
        try:
            for x, when, m in sorted(per_epoch, key=lambda t: (t[0], t[2].id)):
                writer.add_event(scalar(x, when, m.name, m.value))
        finally:
            writer.close()
    return Exported(run, folder, len(per_step) + len(per_epoch))


def export(store: Store, runs: Sequence[Run], out: Path) -> list[Exported]:
    """Every run that logged a metric, one folder each under `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    done = [write_run(store, run, out) for run in runs]
    return [d for d in done if d is not None]
