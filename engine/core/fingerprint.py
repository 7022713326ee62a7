"""Run identity: which runs are the same experiment. Torch-free.

A run's *identity* is its resolved config reduced to what changes the
result; its *fingerprint* is a hash of that. Runs with equal fingerprints
differ only by seed (or are reruns of one seed), so the leaderboard groups
them and nothing else. The rule, also in the README ("Run identity"):

- dropped: the seed (`seeds`; `data.data_seed = -1` follows it), `name`,
  `description`, and the settings that change speed or bookkeeping but not
  the experiment: `run.device`, `threads`, `channels_last`,
  `deterministic`, `compile`, `compile_mode`, `priority`, `fuse`,
  `teacher_cache` (+ `_dtype`, `_mb`), `log_every`, `checkpoint_every`;
  `data.download`, `data.eval_batch_size`; `data.root` except for
  `folder` data (there the folder is the data set).
- kept as resolved: `data.loader` (auto means device for in-memory data
  sets and the DataLoader for folders; the two draw different augmentation)
  and `data.num_workers` only on the DataLoader path with augmentation (the
  workers decide the augmentation there); `data.hflip` (auto: off for
  digits, on otherwise) only with augmentation; the synthetic data set's
  size keys only for `synthetic` (`image_size` also for `folder`).
  `data.strong_view` is dropped: the methods that read a strong view
  cannot run without it and the others never read it.
- kept: every `optim` key that the schedule and optimiser read
  (`milestones`/`gamma` for multistep, `min_lr` for cosine,
  `momentum`/`nesterov` for SGD), `distill` (method and every option,
  defaults filled in, except an option added later whose default is the
  method's earlier behaviour, e.g. `logit_stand = false`, which is left
  out at that default: `Option.neutral`), `student.arch`, `run.amp`, `run.eval_every` (it
  decides which epochs the best top-1 is taken from) and `run.max_steps`.
- a run on several processes (`run.nproc_per_node` x `run.nnodes` > 1) adds
  `run.world_size`, `run.effective_batch` (`data.batch_size` is per process)
  and `run.sync_bn`: the effective batch sets the step, the world size what
  each BatchNorm normalises over. A one-process run holds none of the three,
  so its fingerprint is the one it had before they existed.
- the teacher (methods that use one) enters as a recipe, never by a store
  run id: `from_run`/`train = true` by the teacher run's own fingerprint,
  `teacher.checkpoint` (and `student.checkpoint`) by the sha256 of the file.

The *baseline fingerprint* is the identity without `teacher` and
`distill`: a vanilla run with an equal one trained the same student the
same way, which is what "gap closed" compares against.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from engine.core import schema, writing

VERSION = 1  # part of every hash: changing the rule changes every fingerprint on purpose
LENGTH = 16  # hex digits kept (64 bits)

DROPPED_RUN = (
    "device",
    "threads",
    "channels_last",
    "deterministic",
    "compile",
    "compile_mode",
    "priority",
    "fuse",
    "teacher_cache",
    "teacher_cache_dtype",
    "teacher_cache_mb",
    "log_every",
    "checkpoint_every",
    # entered as world_size / effective_batch / sync_bn, only when above one process
    "nproc_per_node",
    "nnodes",
    "sync_bn",
)
SYNTHETIC_KEYS = ("num_classes", "train_size", "test_size", "image_size")


def file_source(path: str | Path) -> str:
    """A weights file as content: `sha256:<hex>`, or `path:<path>` when it cannot be read."""
    try:
        h = hashlib.sha256()
        with open(Path(path).expanduser(), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return f"sha256:{h.hexdigest()}"
    except OSError:
        return f"path:{path}"


def run_source(teacher_fingerprint: str | None) -> str:
    """A teacher trained by a run, as that run's recipe."""
    return f"run:{teacher_fingerprint or 'unknown'}"


def _data(d: dict) -> dict:
    d = dict(d)
    dataset = d["dataset"]
    for key in ("download", "eval_batch_size", "strong_view"):
        d.pop(key, None)
    if dataset != "folder":
        d.pop("root", None)
    d["loader"] = "dataloader" if dataset == "folder" or d["loader"] == "dataloader" else "device"
    if d["loader"] != "dataloader" or not d["augment"]:
        d.pop("num_workers", None)
    if d["augment"]:
        if d["hflip"] == "auto":
            d["hflip"] = "off" if dataset == "digits" else "on"
    else:
        d.pop("hflip", None)
    for key in SYNTHETIC_KEYS:
        if dataset != "synthetic" and not (dataset == "folder" and key == "image_size"):
            d.pop(key, None)
    return d


def _distill(exp: schema.Experiment, d: dict) -> dict:
    d = copy.deepcopy(d)
    for key, opt in exp.method.options.items():
        if opt.neutral and d.get(key) == opt.default:
            d.pop(key)
    return d


def _optim(o: dict) -> dict:
    o = dict(o)
    if o["schedule"] != "multistep":
        o.pop("milestones", None)
        o.pop("gamma", None)
    if o["schedule"] != "cosine":
        o.pop("min_lr", None)
    if o["optimizer"] != "sgd":
        o.pop("momentum", None)
        o.pop("nesterov", None)
    return o


def identity(exp: schema.Experiment, *, teacher: str | None = None) -> dict:
    """The experiment a one-run config describes, without seed, names and speed settings.

    `teacher`: the teacher's source (`run_source` / `file_source`); the store
    resolves it, because `from_run` names a run this module cannot see.
    """
    full = writing.to_dict(exp, full=True)
    out: dict[str, Any] = {"fingerprint": VERSION, "data": _data(full["data"])}
    if exp.method.needs_teacher:
        if teacher is None:
            t = exp.teacher
            teacher = file_source(t.checkpoint) if t.checkpoint else run_source(None)
        out["teacher"] = {"arch": exp.teacher.arch, "source": teacher}
    student = {"arch": exp.student.arch}
    if exp.student.checkpoint:
        student["init"] = file_source(exp.student.checkpoint)
    out["student"] = student
    out["distill"] = _distill(exp, full["distill"])
    out["optim"] = _optim(full["optim"])
    out["run"] = {k: v for k, v in full["run"].items() if k not in DROPPED_RUN}
    world = schema.world_size(exp)
    if world > 1:
        out["run"].update(
            world_size=world,
            effective_batch=schema.effective_batch(exp),
            sync_bn=exp.run.sync_bn,
        )
    return out


def digest(ident: dict) -> str:
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:LENGTH]


def fingerprint(exp: schema.Experiment, *, teacher: str | None = None) -> str:
    return digest(identity(exp, teacher=teacher))


def baseline_identity(ident: dict) -> dict:
    """What a vanilla baseline must share: everything but the teacher and the method."""
    return {k: v for k, v in ident.items() if k not in ("teacher", "distill")}


def baseline_fingerprint(ident: dict) -> str:
    return digest(baseline_identity(ident))


def dumps(ident: dict) -> str:
    """The stored form (the fingerprint is the digest of exactly this)."""
    return json.dumps(ident, sort_keys=True, separators=(",", ":"))


def flatten(ident: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.05, ...} in key order, for labels and diffs."""
    out: dict[str, Any] = {}
    for key, value in ident.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{dotted}."))
        elif dotted != "fingerprint":
            out[dotted] = value
    return out


def short_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and ":" in value and key.endswith(("source", "init")):
        kind, _, rest = value.partition(":")  # run:<fp> / sha256:<hex> / path:<path>
        return f"{kind}:{rest[:8]}" if kind != "path" else rest
    if isinstance(value, list):
        return ",".join(short_value(key, v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def diff_labels(idents: dict[str, dict]) -> dict[str, str]:
    """A label per identity showing how it differs from the others (`epochs=3 lr=0.1`).

    A key is shown when at least two of the identities hold it with different
    values (a key only some hold, such as one method's option, is shown only
    when those differ among themselves). Short names are the last part of the
    key unless two shown keys share it. Order: the config's key order.
    """
    flat = {k: flatten(v) for k, v in idents.items()}
    order: list[str] = []
    for f in flat.values():
        order += [k for k in f if k not in order]
    shown = []
    for key in order:
        values = {json.dumps(f[key], sort_keys=True) for f in flat.values() if key in f}
        if len(values) > 1:
            shown.append(key)
    labels = _render(flat, shown, order)
    # identities can still read alike when they differ only by a key that some lack (a
    # student checkpoint): those show the key too, "none" where it is absent
    for label in set(labels.values()):
        alike = [k for k, text in labels.items() if text == label]
        if len(alike) < 2:
            continue
        extra = [
            key
            for key in order
            if key not in shown
            and len({json.dumps(flat[k].get(key), sort_keys=True) for k in alike}) > 1
        ]
        labels.update(_render({k: flat[k] for k in alike}, shown + extra, order, absent="none"))
    return labels


def _render(
    flat: dict[str, dict], shown: list[str], order: list[str], absent: str | None = None
) -> dict[str, str]:
    shown = [k for k in order if k in shown]
    tails = [k.split(".")[-1] for k in shown]
    names = {k: (t if tails.count(t) == 1 else k) for k, t in zip(shown, tails)}
    if "teacher.source" in names:
        names["teacher.source"] = "teacher"
    out = {}
    for key, f in flat.items():
        parts = []
        for k in shown:
            if k in f:
                parts.append(f"{names[k]}={short_value(k, f[k])}")
            elif absent is not None:
                parts.append(f"{names[k]}={absent}")
        out[key] = " ".join(parts)
    return out
