"""Run one run, or one fused group of runs, and record everything in the store.

`python -m engine.worker RUN_ID [RUN_ID ...]` is what the engine spawns;
`kdtui run` calls `execute` in its own process. Workers only ever run
configs read from the store.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import torch

from engine.core import checkpoint as ckptmod
from engine.core import faults, layout, runlog, safefs
from engine.core.metrics import IMAGES_PER_S, STEP_LR, TEST_TOP1, TEST_TOP5, loss_name
from engine.core.registry import METHODS, resolve
from engine.core.schema import Experiment, strong_view
from engine.core.store import Run, Store, StoreError
from engine.data import DeviceLoader, build_data
from engine.train import (
    CachedTeacherSource,
    Member,
    Runtime,
    build_member,
    commit_of,
    evaluate,
    fit,
    load_teacher,
    pick_runtime,
    plain_teacher_source,
)


class SetupError(RuntimeError):
    """A run cannot start (missing teacher, bad checkpoint, missing data)."""


class StoreCallbacks:
    """Commits metrics as they are produced, so a crash loses at most a log window."""

    def __init__(self, store: Store, run_ids: dict[str, int], extra=None):
        self.store = store
        self.ids = run_ids
        self.extra = extra
        self.epoch_started: dict[str, float] = {}
        self.steps_per_epoch: dict[str, int] = {}
        self.epoch_times: dict[str, list[float]] = {}
        self.finished: set[str] = set()

    def _id(self, m: Member) -> int:
        return self.ids[m.name]

    def on_start(self, m, info):
        self.store.update(
            self._id(m),
            epochs=info["epochs"],
            params=info["params"],
            trained_params=info["trainable_params"],
            steps_per_epoch=info["steps_per_epoch"],
            epoch=m.epoch,
            heartbeat=time.time(),
        )
        self.epoch_started[m.name] = time.perf_counter()
        self.steps_per_epoch[m.name] = info["steps_per_epoch"]
        self.log(
            m,
            f"start: epoch {m.epoch}/{info['epochs']}, {info['steps_per_epoch']} steps "
            f"per epoch, {info['params']:,} student parameters "
            f"({info['trainable_params']:,} trained)",
        )
        if self.extra:
            self.extra.on_start(m, info)

    def on_step(self, m, epoch, step, losses, lr):
        rows = [(epoch, m.step, loss_name(k), v) for k, v in losses.items()]
        rows.append((epoch, m.step, STEP_LR, lr))
        self.store.add_metrics(self._id(m), rows)
        values = dict(step=step, epoch=epoch)
        if not self.epoch_times.get(m.name):  # no whole epoch timed yet: ETA from the steps
            values.update(eta_s=self.first_epoch_eta(m, epoch, step))
        self.store.update(self._id(m), **values)
        faults.point("step", epoch + 1)
        if self.extra:
            self.extra.on_step(m, epoch, step, losses, lr)

    def first_epoch_eta(self, m, epoch: int, step: int) -> float | None:
        """Seconds left, from the time per step of the steps done since (re)start; on_epoch
        takes over with whole-epoch times (the first steps pay for warm-up: an over-estimate
        that shrinks as steps come in)."""
        spe = self.steps_per_epoch.get(m.name)
        started = self.epoch_started.get(m.name)
        if not spe or started is None or step <= 0:
            return None
        per_step = (time.perf_counter() - started) / step
        return (m.cfg.optim.epochs * spe - (epoch * spe + step)) * per_step

    def on_epoch(self, m, epoch, metrics):
        now = time.perf_counter()
        times = self.epoch_times.setdefault(m.name, [])
        times.append(now - self.epoch_started.get(m.name, now))
        self.epoch_started[m.name] = now
        recent = times[-3:]
        eta = (m.cfg.optim.epochs - m.epoch) * sum(recent) / len(recent)
        values = dict(epoch=m.epoch, step=0, images_per_s=metrics[IMAGES_PER_S], eta_s=eta)
        if TEST_TOP1 in metrics:
            values.update(
                last_top1=metrics[TEST_TOP1],
                last_top5=metrics[TEST_TOP5],
                best_top1=m.best_top1,
                best_epoch=m.best_epoch + 1,
            )
        # metrics and row in one transaction, after the checkpoint that carries them: a kill
        # before the commit is replayed from last.pth on resume (resume_member)
        self.store.commit_epoch(
            self._id(m),
            [(epoch, m.step, k, v) for k, v in metrics.items()],
            values,
            before_commit=lambda: faults.point("metrics-open", m.epoch),
        )
        faults.point("metrics", m.epoch)
        if self.extra:
            self.extra.on_epoch(m, epoch, metrics)

    def on_end(self, m):
        # final status now, not when the whole fused group ends: the engine and the app
        # see a cancelled or finished member at once
        self.store.finish(self._id(m), m.status, m.error if m.status != "done" else None)
        self.finished.add(m.name)
        if self.extra:
            self.extra.on_end(m)

    def should_stop(self, m):
        if self.extra and self.extra.should_stop(m):
            return True
        return self.store.cancel_requested(self._id(m))

    def log(self, m, message):
        runlog.append(Path(m.dir), message)
        if self.extra:
            self.extra.log(m, message)


def _try_log(run_dir: Path, message: str) -> None:
    """runlog.append on a failure path: a full disk must not hide the failure itself."""
    try:
        runlog.append(run_dir, message)
    except OSError:
        print(message, file=sys.stderr, flush=True)  # worker.log, if it has room


def teacher_checkpoint(store: Store, cfg: Experiment) -> Path:
    t = cfg.teacher
    if t.checkpoint:
        path = Path(t.checkpoint).expanduser()
        if not path.exists():
            raise SetupError(f"teacher.checkpoint {t.checkpoint!r} does not exist")
        return path
    if t.from_run:
        try:
            dep = store.run(int(t.from_run))
        except (ValueError, StoreError):
            raise SetupError(
                f"teacher.from_run = {t.from_run!r} is not a run in this store"
            ) from None
        if dep.status != "done":
            raise SetupError(
                f"teacher run {dep.id} ({dep.experiment}) is {dep.status}"
                + (f": {dep.error}" if dep.error else "")
            )
        if dep.head != "student":
            raise SetupError(
                f"run {dep.id} uses a {dep.head} head ({dep.method}) and cannot "
                "serve as a teacher; use a vanilla or logit-distilled run"
            )
        path = Path(dep.dir) / layout.BEST
        if not path.exists():
            raise SetupError(f"teacher run {dep.id} has no best checkpoint at {path}")
        info = ckptmod.inspect(path)
        if info.problem:
            raise SetupError(f"teacher run {dep.id}: {path} {info.problem}")
        return path
    raise SetupError("no teacher source (checkpoint, from_run) in the resolved config")


def execute(
    store: Store,
    run_ids: list[int],
    *,
    callbacks=None,
    resume: bool | None = None,
) -> list[Run]:
    """Train the given runs (one fused group) to the end; returns their final rows."""
    runs = [store.run(i) for i in run_ids]
    cfgs = [r.load_config() for r in runs]
    names = {str(r.id): r.id for r in runs}
    cb = StoreCallbacks(store, names, callbacks)
    try:
        runtime = pick_runtime(cfgs[0].run)
        for r in runs:
            store.update(
                r.id,
                pid=os.getpid(),
                host=socket.gethostname(),
                device=_device_name(runtime),
                torch_version=torch.__version__,
                started=r.started or time.time(),
                error=None,
            )
            runlog.append(
                Path(r.dir),
                f"worker pid {os.getpid()} on {socket.gethostname()}, "
                f"{_device_name(runtime)}, torch {torch.__version__}, "
                f"{torch.get_num_threads()} CPU thread{'s' * (torch.get_num_threads() != 1)}",
            )
        members, data, teacher_source = prepare(store, runs, cfgs, runtime, cb, resume)
    except Exception as e:  # setup failures fail every run of the group, with the reason
        why = _reason(e, store, Path(runs[0].dir))
        for r in runs:
            _try_log(Path(r.dir), traceback.format_exc())
            _try_finish(store, r.id, "failed", why)
        if callbacks is not None and hasattr(callbacks, "on_setup_error"):
            callbacks.on_setup_error(e)
        return [store.run(r.id) for r in runs]
    try:
        fit(members, data, teacher_source, runtime, cb)
    except Exception as e:
        for m in members:
            if m.active:
                m.status, m.error = "failed", _reason(e, store, m.dir)
                if safefs.is_disk_full(e):
                    m.error += f"; free some space, then `kdtui resume {m.name}`"
                _try_log(m.dir, traceback.format_exc())
    except KeyboardInterrupt as e:
        why = getattr(e, "reason", "interrupted (Ctrl-C)")
        for m in members:
            if m.active:
                m.status, m.error = "cancelled", f"{why}; `kdtui resume {m.name}` continues it"
                _try_log(m.dir, m.error)
        _finish(store, [m for m in members if m.name not in cb.finished])
        raise
    _finish(store, [m for m in members if m.name not in cb.finished])
    return [store.run(r.id) for r in runs]


def _finish(store: Store, members: list[Member]) -> None:
    for m in members:
        status = m.status if m.status != "running" else "failed"
        error = m.error if status != "done" else None
        _try_finish(store, int(m.name), status, error)


def _try_finish(store: Store, run_id: int, status: str, error: str | None) -> None:
    """The final status; when even that cannot be written (a full disk), say why on stderr
    (worker.log) and leave the row to the engine, which sees the process gone."""
    try:
        store.finish(run_id, status, error)
    except Exception as e:
        print(f"run {run_id}: could not record {status} ({error}): {_one_line(e)}", file=sys.stderr)


def _reason(e: BaseException, store: Store, run_dir: Path) -> str:
    """One line for the run's error: "no space left on device: PATH" for a full disk."""
    if safefs.is_disk_full(e):
        chain, x = [], e
        while x is not None and len(chain) < 8:
            chain.append(x)
            x = x.__cause__ or x.__context__
        sqlite = any(type(x).__module__ == "sqlite3" for x in chain)
        return str(safefs.DiskFull(safefs.full_path(e, store.db_path if sqlite else run_dir)))
    return _one_line(e)


def prepare(
    store: Store, runs: list[Run], cfgs: list[Experiment], runtime: Runtime, cb, resume: bool | None
):
    cfg0 = cfgs[0]
    data = build_data(
        cfg0.data,
        seed=cfg0.seeds[0],
        device=runtime.device,
        channels_last=runtime.channels_last,
        strong=any(strong_view(c) for c in cfgs),
    )
    info = data.info
    input_shape = (1, info.channels, info.image_size, info.image_size)
    teacher = None
    teacher_source = None
    if any(METHODS[c.distill.method].needs_teacher for c in cfgs):
        path = teacher_checkpoint(store, cfg0)
        teacher = load_teacher(cfg0.teacher.arch, path, info.num_classes)
        memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
        teacher.to(runtime.device, memory_format=memory_format).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        ev = evaluate(teacher, data.test, runtime)
        for r in runs:
            store.update(r.id, teacher_top1=ev["top1"])
            runlog.append(
                Path(r.dir), f"teacher {cfg0.teacher.arch} from {path}: test top1 {ev['top1']:.2f}"
            )
        teacher_source = make_teacher_source(store, runs, cfgs, teacher, path, data, runtime)
    members = []
    labels = data.train.labels.cpu() if _needs_train_labels(cfgs) else None
    for r, cfg in zip(runs, cfgs):
        m = build_member(
            str(r.id),
            cfg,
            teacher,
            info.num_classes,
            runtime,
            Path(r.dir),
            input_shape=input_shape,
            train_labels=labels,
        )
        want_resume = r.resume if resume is None else resume
        ckptmod.clean_temp(Path(r.dir))  # half-written by a killed process
        if want_resume:
            resume_member(store, r, m)
        elif any(i.exists for i in ckptmod.survey(Path(r.dir))) or store.metrics(r.id)[:1]:
            # a restart from scratch: nothing is overwritten, old files move aside
            _archive(Path(r.dir))
            store.rewind(r.id, 0)
        members.append(m)
    if len({m.epoch for m in members}) > 1:
        raise SetupError(
            "runs of a fused group resume from different epochs; resume them one at a time"
        )
    return members, data, teacher_source


def resume_member(store: Store, r: Run, m: Member) -> None:
    """Continue `m` from its newest valid checkpoint; never start over silently.

    last.pth missing or damaged: the newest valid of prev.pth and best.pth,
    said in the log and as a `fallback` event, and only the metrics after it
    are dropped. No valid checkpoint after finished epochs: SetupError
    (`kdtui resume --restart` starts over). The checkpoint's own epoch
    metrics are recorded if the process died before committing them.
    """
    run_dir = Path(r.dir)
    infos = ckptmod.survey(run_dir)
    failed: dict[str, str] = {}
    used = state = None
    for info in ckptmod.ranked(infos):
        try:
            state = m.restore(info.path)
        except Exception as e:
            failed[info.name] = f"{info.name} cannot be loaded ({_one_line(e)})"
            continue
        used = info
        break
    if used is None:
        if r.epoch == 0 and not any(i.exists for i in infos):
            store.rewind(r.id, 0)  # the unfinished first epoch's step metrics
            runlog.append(run_dir, "resume: no checkpoint yet (no epoch had finished): epoch 0")
            return
        found = [failed.get(i.name) or i.describe() for i in infos]
        raise SetupError(ckptmod.refusal(r.id, run_dir, found))
    last = infos[0]
    note = None
    if used is not last and not (last.ok and last.name not in failed):
        why = "is missing" if not last.exists else (last.problem or "cannot be loaded")
        note = f"last.pth {why}; resuming from {used.name} at epoch {m.epoch}"
        if r.epoch > m.epoch:
            which = (
                f"epoch {r.epoch}" if r.epoch == m.epoch + 1 else f"epochs {m.epoch + 1}-{r.epoch}"
            )
            note += f"; the metrics of {which} are dropped (trained again)"
    moved = ckptmod.set_aside_bad(infos)  # kept for inspection, out of the next resume's way
    if note and moved:
        note += f"; damaged file kept as {', '.join(p.name for p in moved)}"
    replayed = store.rewind(r.id, m.epoch, commit_of(state))["replayed"]
    if note:
        runlog.append(run_dir, note)
        store.event(r.id, "fallback", note)
    runlog.append(
        run_dir,
        f"resumed from {used.path} at epoch {m.epoch}"
        + (
            f"; epoch {m.epoch}'s metrics recorded from the checkpoint (the process had died "
            "before committing them)"
            if replayed
            else ""
        ),
    )


def _needs_train_labels(cfgs: list[Experiment]) -> bool:
    """Does a member keep a row per training sample (CRD's memory banks)?"""
    return any(
        getattr(resolve(METHODS[c.distill.method].impl), "needs_train_labels", False) for c in cfgs
    )


def make_teacher_source(
    store: Store, runs: list[Run], cfgs: list[Experiment], teacher, path: Path, data, runtime
):
    """One teacher pass per batch for the whole group; through the exact logit cache when
    `[run] teacher_cache` is on and every member reads only the teacher's logits."""
    run = cfgs[0].run
    compile_teacher = run.compile
    batch_size = cfgs[0].data.batch_size
    outputs = {METHODS[c.distill.method].teacher_outputs for c in cfgs}
    logit_only = outputs <= {"logits", "none"}
    strong = any(METHODS[c.distill.method].strong_view for c in cfgs)  # MLKD's second view
    common = {
        "compile": compile_teacher,
        "batch_size": batch_size,
        "strong": strong,
        "preact": "preact" in outputs,  # ReviewKD's teacher side
        "logits_only": "features" not in outputs,
    }
    if run.teacher_cache == "off":
        return plain_teacher_source(teacher, runtime, **common)

    def note(message: str) -> None:
        for r in runs:
            runlog.append(Path(r.dir), message)

    train = data.train
    if not logit_only:
        feats = sorted(
            {
                c.distill.method
                for c in cfgs
                if METHODS[c.distill.method].teacher_outputs != "logits"
            }
        )
        note(f"teacher cache off: {', '.join(feats)} read the teacher's feature maps")
    elif not isinstance(train, DeviceLoader):
        note("teacher cache off: it needs the device loader (sample index and view of each image)")
    else:
        from engine import cache as cachemod

        dtype = cachemod.DTYPES[run.teacher_cache_dtype]
        key = cachemod.cache_key(
            cachemod.file_digest(path),
            cfgs[0].teacher.arch,
            cachemod.tensor_digest(train.images),
            train._mean.flatten().tolist(),
            train._std.flatten().tolist(),
            train.hflip,
            runtime.device.type,
            runtime.amp_dtype,
            runtime.channels_last,
            run.teacher_cache_dtype,
        )
        cache = cachemod.open_cache(
            run.teacher_cache,
            key=key,
            num_samples=train.num_samples,
            num_classes=data.info.num_classes,
            dtype=dtype,
            limit_bytes=run.teacher_cache_mb * 2**20,
            device=runtime.device,
            home=store.home,
        )
        where = str(cache.path) if cache.path else f"memory on {cache.device}"
        note(
            f"teacher cache ({run.teacher_cache}, {run.teacher_cache_dtype}, key {key}): "
            f"{cache.capacity:,} rows, {cache.nbytes / 2**20:.1f} MiB in {where}, "
            f"{100 * cache.fill:.1f}% of the views already stored"
        )
        if strong:
            note("teacher cache: weak views only; the teacher sees every (fresh) strong view")
        return CachedTeacherSource(
            teacher, runtime, cache, compile=compile_teacher, batch_size=batch_size, strong=strong
        )
    return plain_teacher_source(teacher, runtime, **common)


def _archive(run_dir: Path) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in layout.CHECKPOINTS:
        p = run_dir / name
        if p.exists():
            p.rename(run_dir / f"{p.stem}.{stamp}.pth")


def _device_name(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        idx = runtime.device.index or 0
        return f"cuda:{idx} {torch.cuda.get_device_name(idx)}"
    return "cpu"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip().rstrip(":")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.worker", description="Train runs from the kdtui store."
    )
    parser.add_argument("run_ids", nargs="+", type=int)
    parser.add_argument("--home", default=None, help="store directory (default $KDTUI_HOME)")
    args = parser.parse_args(argv)
    store = Store(args.home)
    results = execute(store, args.run_ids)
    return 0 if all(r.status == "done" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
