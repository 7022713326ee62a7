"""Run one run, or one fused group of runs, writing only their run folders.

`python -m engine.worker [--home HOME] RUN_DIR [RUN_DIR ...]` is what the
engine spawns (engine.daemon.processes.worker_command); `kdtui run` calls
`execute` in its own process. A worker never opens the SQLite store: it
reads each run's config.toml, run.json and events.jsonl (its state: resume?
how far?) and appends metrics and events (engine.core.runfolder), which the
store ingests. `--home` only places the disk teacher cache.

A run with `[run] nproc_per_node = N > 1` trains on N processes: the worker
the engine (or `kdtui run`) starts becomes their launcher (`engine.launch`,
torchrun's own machinery), and each of the N processes it starts runs
`train` as one rank. Rank 0 writes the run folder, the logs and the
checkpoints; the others train their shard and write nothing.
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

from engine import distributed
from engine.core import checkpoint as ckptmod
from engine.core import faults, layout, reading, runfolder, runlog, safefs
from engine.core.metrics import IMAGES_PER_S, STEP_LR, TEST_TOP1, TEST_TOP5, loss_name
from engine.core.registry import METHODS, resolve
from engine.core.schema import ConfigError, Experiment, effective_batch, strong_view, world_size
from engine.data import DeviceLoader, build_data
from engine.distributed import SINGLE, Group
from engine.train import (
    CachedTeacherSource,
    Member,
    NullCallbacks,
    Runtime,
    build_member,
    commit_of,
    data_parallel,
    evaluate,
    fit,
    load_teacher,
    pick_runtime,
    plain_teacher_source,
)


class SetupError(RuntimeError):
    """A run cannot start (missing teacher, bad checkpoint, missing data)."""


class Folder:
    """One run as the worker sees it: its folder, run.json, state (folded events), config."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir).absolute()
        self.meta = runfolder.read_meta(self.dir)
        self.state = runfolder.read_state(self.dir)
        self.id: int = self.meta["id"]
        path = self.dir / layout.CONFIG
        self.config = reading.loads(safefs.read_text(path), file=str(path), resolved=True)

    @property
    def status(self) -> str:
        return self.state.get("status", "queued")


class FolderCallbacks:
    """Appends metrics and events as they are produced: a step's with one write (a crash
    loses at most a log window), an epoch's fsynced."""

    def __init__(self, dirs: dict[str, Path], extra=None):
        self.dirs = dirs
        self.extra = extra
        self.epoch_started: dict[str, float] = {}
        self.steps_per_epoch: dict[str, int] = {}
        self.epoch_times: dict[str, list[float]] = {}
        self.finished: set[str] = set()

    def on_start(self, m, info):
        runfolder.append_event(
            self.dirs[m.name],
            "setup",
            dict(
                epochs=info["epochs"],
                params=info["params"],
                trained_params=info["trainable_params"],
                steps_per_epoch=info["steps_per_epoch"],
                epoch=m.epoch,
            ),
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
        run_dir = self.dirs[m.name]
        runfolder.append_metrics(run_dir, rows)
        values = dict(step=step, epoch=epoch)
        if not self.epoch_times.get(m.name):  # no whole epoch timed yet: ETA from the steps
            values.update(eta_s=self.first_epoch_eta(m, epoch, step))
        runfolder.append_event(run_dir, "step", values, fsync=False)
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
        # after the checkpoint that carries them: the metrics (fsynced), then the row's
        # values; a kill before the metrics are whole is replayed from last.pth on resume
        run_dir = self.dirs[m.name]
        runfolder.append_metrics(
            run_dir, [(epoch, m.step, k, v) for k, v in metrics.items()], fsync=True
        )
        faults.point("metrics-open", m.epoch)
        runfolder.append_event(run_dir, "epoch", values)
        faults.point("metrics", m.epoch)
        if self.extra:
            self.extra.on_epoch(m, epoch, metrics)

    def on_end(self, m):
        # final status now, not when the whole fused group ends: the engine and the app
        # see a cancelled or finished member at once
        _finish_folder(self.dirs[m.name], m.status, m.error if m.status != "done" else None)
        self.finished.add(m.name)
        if self.extra:
            self.extra.on_end(m)

    def should_stop(self, m):
        if self.extra and self.extra.should_stop(m):
            return True
        return runfolder.cancel_requested(self.dirs[m.name])

    def log(self, m, message):
        runlog.append(Path(m.dir), message)
        if self.extra:
            self.extra.log(m, message)


def _finish_folder(run_dir: Path, status: str, error: str | None) -> None:
    runfolder.append_finish(run_dir, status, error)


class FollowerCallbacks(NullCallbacks):
    """The callbacks of ranks 1..N-1 of a run on several processes: they write nothing
    (rank 0 records the run), but they reach the test-only crash points, so a test can
    SIGKILL one rank at a chosen step (engine.core.faults)."""

    def on_step(self, m, epoch, step, losses, lr):
        faults.point("step", epoch + 1)


def _try_log(run_dir: Path, message: str) -> None:
    """runlog.append on a failure path: a full disk must not hide the failure itself."""
    try:
        runlog.append(run_dir, message)
    except OSError:
        print(message, file=sys.stderr, flush=True)  # worker.log, if it has room


def teacher_checkpoint(run: Folder, cfg: Experiment) -> Path:
    t = cfg.teacher
    if t.checkpoint:
        path = Path(t.checkpoint).expanduser()
        if not path.exists():
            raise SetupError(f"teacher.checkpoint {t.checkpoint!r} does not exist")
        return path
    if t.from_run:
        teacher = run.meta.get("teacher")
        if not teacher or str(teacher["id"]) != str(t.from_run):
            raise SetupError(
                f"teacher.from_run = {t.from_run!r}: its run folder is not recorded in "
                f"{run.dir / layout.META}"
            )
        try:
            dep = Folder(run.dir.parent / teacher["folder"])
        except (runfolder.FolderError, OSError, ValueError) as e:
            raise SetupError(f"teacher run {t.from_run}: {e}") from None
        if dep.status != "done":
            error = dep.state.get("error")
            raise SetupError(
                f"teacher run {dep.id} ({dep.meta['row']['experiment']}) is {dep.status}"
                + (f": {error}" if error else "")
            )
        head = dep.meta["row"].get("head", "student")
        if head != "student":
            raise SetupError(
                f"run {dep.id} uses a {head} head ({dep.meta['row']['method']}) and cannot "
                "serve as a teacher; use a vanilla or logit-distilled run"
            )
        path = dep.dir / layout.BEST
        if not path.exists():
            raise SetupError(f"teacher run {dep.id} has no best checkpoint at {path}")
        info = ckptmod.inspect(path)
        if info.problem:
            raise SetupError(f"teacher run {dep.id}: {path} {info.problem}")
        return path
    raise SetupError("no teacher source (checkpoint, from_run) in the resolved config")


def execute(
    store, run_ids: list[int], *, callbacks=None, resume: bool | None = None, group: Group = SINGLE
):
    """`kdtui run`'s call: train runs of `store` (one fused group) here, through their
    folders; returns their final rows (ingested)."""
    dirs = [store.run(i).path for i in run_ids]
    train(dirs, home=store.home, callbacks=callbacks, resume=resume, group=group)
    return [store.run(i) for i in run_ids]


def train(
    run_dirs: list[Path],
    *,
    home: Path | None = None,
    callbacks=None,
    resume: bool | None = None,
    group: Group = SINGLE,
) -> list[Folder]:
    """Train the runs in these folders (one fused group) to the end; their final states.

    group: this process's rank when the runs train on several processes (torchrun). Rank 0
    writes the folders; an error on another rank is raised (its launcher records the
    first failure), and so is, on rank 0, a collective that failed because another rank
    died (`distributed.peer_failure`), so that the run's error names the rank that died.
    """
    runs = [Folder(d) for d in run_dirs]
    cfgs = [r.config for r in runs]
    dirs = {str(r.id): r.dir for r in runs}
    cb = FolderCallbacks(dirs, callbacks) if group.main else FollowerCallbacks()
    try:
        if world_size(cfgs[0]) != group.world:
            raise SetupError(
                f"run {runs[0].id} trains on {world_size(cfgs[0])} processes "
                f"(run.nproc_per_node x run.nnodes) but this worker is one of {group.world}; "
                "start it with `kdtui run`, `kdtui resume` or the engine, which launch them"
            )
        runtime = pick_runtime(cfgs[0].run, group)
        distributed.init(group, runtime.device)
        if group.main:
            _record_start(runs, cfgs, runtime)
        members, data, teacher_source = prepare(runs, cfgs, runtime, cb, resume, home)
    except Exception as e:  # setup failures fail every run of the group, with the reason
        if not group.main or distributed.peer_failure(e):
            raise
        why = _reason(e, runs[0].dir)
        for r in runs:
            _try_log(r.dir, traceback.format_exc())
            _try_finish(r.dir, r.id, "failed", why)
        if callbacks is not None and hasattr(callbacks, "on_setup_error"):
            callbacks.on_setup_error(e)
        return [Folder(r.dir) for r in runs]
    try:
        fit(members, data, teacher_source, runtime, cb)
    except Exception as e:
        if not group.main or distributed.peer_failure(e):
            raise
        for m in members:
            if m.active:
                m.status, m.error = "failed", _reason(e, m.dir)
                if safefs.is_disk_full(e):
                    m.error += f"; free some space, then `kdtui resume {m.name}`"
                _try_log(m.dir, traceback.format_exc())
    except KeyboardInterrupt as e:
        if not group.main:
            raise
        why = getattr(e, "reason", "interrupted (Ctrl-C)")
        for m in members:
            if m.active:
                m.status, m.error = "cancelled", f"{why}; `kdtui resume {m.name}` continues it"
                _try_log(m.dir, m.error)
        _finish(dirs, [m for m in members if m.name not in cb.finished])
        raise
    if group.main:
        _finish(dirs, [m for m in members if m.name not in cb.finished])
    return [Folder(r.dir) for r in runs]


def _record_start(runs: list[Folder], cfgs: list[Experiment], runtime: Runtime):
    """Who trains the runs, on what: a `started` event in each folder and a first log line.

    On several processes the recorded pid is the launcher's (the ranks' parent), the
    process the engine and `kdtui run` watch."""
    group = runtime.group
    pid = os.getppid() if group.parallel else os.getpid()
    threads = torch.get_num_threads()
    for r, cfg in zip(runs, cfgs):
        runfolder.append_event(
            r.dir,
            "started",
            dict(
                pid=pid,
                host=socket.gethostname(),
                device=_device_name(runtime)
                if not group.parallel
                else f"{group.world}× " + _device_name(runtime),
                torch_version=torch.__version__,
                started=r.state.get("started") or time.time(),
                error=None,
            ),
        )
        who = f"worker pid {pid}"
        if group.parallel:
            nodes = f" on {cfg.run.nnodes} nodes" if cfg.run.nnodes > 1 else ""
            who = (
                f"launcher pid {pid}, {group.world} processes{nodes} "
                f"({distributed.backend(runtime.device)}), batch {cfg.data.batch_size} per process, effective batch "
                f"{effective_batch(cfg)}" + (", SyncBatchNorm" if cfg.run.sync_bn else "") + ";"
            )
        runlog.append(
            r.dir,
            f"{who} on {socket.gethostname()}, "
            f"{_device_name(runtime)}, torch {torch.__version__}, "
            f"{threads} CPU thread{'s' * (threads != 1)}" + (" per process" * group.parallel),
        )


def _finish(dirs: dict[str, Path], members: list[Member]) -> None:
    for m in members:
        status = m.status if m.status != "running" else "failed"
        error = m.error if status != "done" else None
        _try_finish(dirs[m.name], int(m.name), status, error)


def _try_finish(run_dir: Path, run_id: int, status: str, error: str | None) -> None:
    """The final status; when even that cannot be written (a full disk), say why on stderr
    (worker.log) and leave the row to the engine, which sees the process gone."""
    try:
        _finish_folder(run_dir, status, error)
    except Exception as e:
        print(f"run {run_id}: could not record {status} ({error}): {_one_line(e)}", file=sys.stderr)


def _reason(e: BaseException, run_dir: Path) -> str:
    """One line for the run's error: "no space left on device: PATH" for a full disk."""
    if safefs.is_disk_full(e):
        return str(safefs.DiskFull(safefs.full_path(e, run_dir)))
    return _one_line(e)


def prepare(
    runs: list[Folder],
    cfgs: list[Experiment],
    runtime: Runtime,
    cb,
    resume: bool | None,
    home: Path | None = None,
):
    cfg0 = cfgs[0]
    group = runtime.group
    data = build_data(
        cfg0.data,
        seed=cfg0.seeds[0],
        device=runtime.device,
        channels_last=runtime.channels_last,
        strong=any(strong_view(c) for c in cfgs),
        rank=group.rank,
        world=group.world,
    )
    info = data.info
    input_shape = (1, info.channels, info.image_size, info.image_size)
    teacher = None
    teacher_source = None
    if any(METHODS[c.distill.method].needs_teacher for c in cfgs):
        path = teacher_checkpoint(runs[0], cfg0)
        teacher = load_teacher(cfg0.teacher.arch, path, info.num_classes)
        memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
        teacher.to(runtime.device, memory_format=memory_format).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        ev = evaluate(teacher, data.test, runtime)
        for r in runs if group.main else ():
            runfolder.append_event(r.dir, "teacher", {"teacher_top1": ev["top1"]})
            runlog.append(
                r.dir, f"teacher {cfg0.teacher.arch} from {path}: test top1 {ev['top1']:.2f}"
            )
        teacher_source = make_teacher_source(runs, cfgs, teacher, path, data, runtime, home)
    members = []
    labels = data.train.labels.cpu() if _needs_train_labels(cfgs) else None
    for r, cfg in zip(runs, cfgs):
        m = build_member(
            str(r.id),
            cfg,
            teacher,
            info.num_classes,
            runtime,
            r.dir,
            input_shape=input_shape,
            train_labels=labels,
        )
        want_resume = bool(r.state.get("resume")) if resume is None else resume
        if group.main:
            try:
                used = _start_member(r, m, want_resume)
            except Exception as e:
                distributed.broadcast_object(group, ("error", _one_line(e)))
                raise
            distributed.broadcast_object(group, ("checkpoint", used))
        else:  # the checkpoint rank 0 chose (or its refusal)
            kind, value = distributed.broadcast_object(group, None)
            if kind == "error":
                raise SetupError(f"rank 0 could not start run {r.id}: {value}")
            if value is not None:
                m.restore(Path(value))
        members.append(m)
    if len({m.epoch for m in members}) > 1:
        raise SetupError(
            "runs of a fused group resume from different epochs; resume them one at a time"
        )
    if group.parallel:
        for m in members:
            data_parallel(m)
    return members, data, teacher_source


def _start_member(r: Folder, m: Member, want_resume: bool) -> str | None:
    """Resume `m` or start it afresh (old files moved aside); the checkpoint used, if any."""
    ckptmod.clean_temp(r.dir)  # half-written by a killed process
    if want_resume:
        return resume_member(r, m)
    if any(i.exists for i in ckptmod.survey(r.dir)) or runfolder.read_metrics(r.dir)[:1]:
        # a restart from scratch: nothing is overwritten, old files move aside
        _archive(r.dir)
        runfolder.rewind(r.dir, 0)
    return None


def resume_member(r: Folder, m: Member) -> str | None:
    """Continue `m` from its newest valid checkpoint; never start over silently.

    last.pth missing or damaged: the newest valid of prev.pth and best.pth,
    said in the log and as a `fallback` event, and only the metrics after it
    are dropped. No valid checkpoint after finished epochs: SetupError
    (`kdtui resume --restart` starts over). The checkpoint's own epoch
    metrics are recorded if the process died before writing them.
    A checkpoint written by another number of processes is refused (the
    data order and the effective batch depend on it). Returns the path of
    the checkpoint used (None: no epoch had finished).
    """
    run_dir = r.dir
    recorded_epoch = int(r.state.get("epoch") or 0)
    infos = ckptmod.survey(run_dir)
    failed: dict[str, str] = {}
    used = state = None
    for info in ckptmod.ranked(infos):
        try:
            state = m.restore(info.path)
        except Exception as e:
            failed[info.name] = f"{info.name} cannot be loaded ({_one_line(e)})"
            continue
        saved = int(state.get("world_size", 1))
        if saved != m.world_size:
            raise SetupError(world_size_refusal(r, info.path, saved, m.world_size))
        used = info
        break
    if used is None:
        if recorded_epoch == 0 and not any(i.exists for i in infos):
            runfolder.rewind(run_dir, 0)  # the unfinished first epoch's step metrics
            runlog.append(run_dir, "resume: no checkpoint yet (no epoch had finished): epoch 0")
            return None
        found = [failed.get(i.name) or i.describe() for i in infos]
        raise SetupError(ckptmod.refusal(r.id, run_dir, found))
    last = infos[0]
    note = None
    if used is not last and not (last.ok and last.name not in failed):
        why = "is missing" if not last.exists else (last.problem or "cannot be loaded")
        note = f"last.pth {why}; resuming from {used.name} at epoch {m.epoch}"
        if recorded_epoch > m.epoch:
            which = (
                f"epoch {recorded_epoch}"
                if recorded_epoch == m.epoch + 1
                else f"epochs {m.epoch + 1}-{recorded_epoch}"
            )
            note += f"; the metrics of {which} are dropped (trained again)"
    moved = ckptmod.set_aside_bad(infos)  # kept for inspection, out of the next resume's way
    if note and moved:
        note += f"; damaged file kept as {', '.join(p.name for p in moved)}"
    replayed = runfolder.rewind(
        run_dir, m.epoch, commit_of(state), f"resumed from {used.name} at epoch {m.epoch}"
    )["replayed"]
    if note:
        runlog.append(run_dir, note)
        runfolder.append_event(run_dir, "fallback", message=note)
    runlog.append(
        run_dir,
        f"resumed from {used.path} at epoch {m.epoch}"
        + (
            f"; epoch {m.epoch}'s metrics recorded from the checkpoint (the process had died "
            "before writing them)"
            if replayed
            else ""
        ),
    )
    return str(used.path)


def world_size_refusal(r: Folder, path: Path, saved: int, now: int) -> str:
    """Why a checkpoint of another world size does not resume, and what to do instead."""

    def procs(n: int) -> str:
        return f"{n} process{'es' * (n != 1)}"

    return (
        f"{path.name} of run {r.id} was trained on {procs(saved)} and this resume runs "
        f"{procs(now)}: each process's share of every epoch and the effective batch "
        f"(batch_size x processes) depend on it, so it cannot continue exactly. Resume it "
        f"with run.nproc_per_node x run.nnodes = {saved} as it was trained, or start it over "
        f"with `kdtui resume {r.id} --restart`"
    )


def _needs_train_labels(cfgs: list[Experiment]) -> bool:
    """Does a member keep a row per training sample (CRD's memory banks)?"""
    return any(
        getattr(resolve(METHODS[c.distill.method].impl), "needs_train_labels", False) for c in cfgs
    )


def make_teacher_source(
    runs: list[Folder],
    cfgs: list[Experiment],
    teacher,
    path: Path,
    data,
    runtime,
    home: Path | None = None,
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
            runlog.append(r.dir, message)

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
            home=home,
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
        prog="python -m engine.worker",
        description="Train runs from their run folders (never opens the SQLite store).",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders (one fused group)")
    parser.add_argument(
        "--home", default=None, help="the store folder: where the disk teacher cache lives"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="a restarted batch job (Slurm requeue): resume every run still unfinished from "
        "its last checkpoint; finished runs stay as they are",
    )
    parser.add_argument(
        "--rendezvous",
        metavar="HOST:PORT",
        default=None,
        help="a run across several nodes: where the launchers meet (the first node); the "
        "Slurm backend's job gives it to the launcher of each node",
    )
    parser.add_argument(
        "--node-rank", type=int, default=0, help="with --rendezvous: this node's rank (0: first)"
    )
    args = parser.parse_args(argv)
    home = Path(args.home) if args.home else None
    dirs = args.run_dirs
    meet = None
    if args.rendezvous:
        from engine.launch import Rendezvous

        try:
            meet = Rendezvous.parse(args.rendezvous, args.node_rank)
        except ValueError as e:
            parser.error(str(e))
    if args.resume:
        dirs = [d for d in dirs if Folder(d).status not in runfolder.FINISHED]
        if not dirs:
            return 0
        if meet is None or meet.node_rank == 0:  # one writer of the folders per run
            for d in dirs:  # every path below resumes: one process, or each rank of a DDP run
                runfolder.append_event(d, "set", {"resume": 1}, "a restarted batch job: resume")
    group = distributed.from_env()
    if group is not None:  # one rank of a run on several processes, started by engine.launch
        return rank_main(dirs, home, group)
    if _world(dirs[0]) > 1:
        return launch(dirs, home, meet)
    results = train(dirs, home=home, resume=True if args.resume else None)
    return 0 if all(r.status == "done" for r in results) else 1


def _world(run_dir: Path) -> int:
    try:
        return world_size(Folder(run_dir).config)
    except Exception:  # a folder or config that cannot be read: `train` records why
        return 1


def launch(run_dirs: list[Path], home: Path | None, meet=None) -> int:
    """Train the runs on the processes their config asks for, under torchrun (engine.launch);
    0 when every run is done. Like every worker, it writes only the run folders, and on a
    run across several nodes (`meet`: this node's engine.launch.Rendezvous) only node 0's
    launcher does."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from engine import launch as rules

    runs = [Folder(d) for d in run_dirs]
    dirs = [r.dir for r in runs]
    writer = meet is None or meet.node_rank == 0
    try:
        cfg = runs[0].config
        if meet is None:  # several nodes only through a backend that gives the rendezvous
            reading.check_local(cfg, file=str(runs[0].dir / layout.CONFIG))
        elif meet.node_rank >= cfg.run.nnodes:
            raise ConfigError(
                f"--node-rank {meet.node_rank} but the run has run.nnodes = {cfg.run.nnodes}",
                file=str(runs[0].dir / layout.CONFIG),
                key="run.nnodes",
            )
    except ConfigError as e:
        if writer:
            rules.settle(dirs, str(e))
        print(f"launcher: {e}", flush=True)
        return 1
    nproc, nnodes = cfg.run.nproc_per_node, cfg.run.nnodes
    if writer:
        for r in runs:
            runfolder.append_event(r.dir, "launcher", {"pid": os.getpid()})
    if "OMP_NUM_THREADS" not in os.environ:  # each rank its share of the cores
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    argv = rules.torchrun_args(dirs, home, nproc, nnodes, meet)
    try:
        torchrun.run(torchrun.get_args_parser().parse_args(argv))
    except ChildFailedError as e:
        reason = rules.failure_reason(e.failures, e.get_first_failure(), nproc * nnodes)
        if meet is not None:
            reason = (
                rules.elsewhere_reason(e.failures, nproc * nnodes, nnodes) if writer else None
            ) or f"{reason} (node rank {meet.node_rank} of {nnodes})"
        print(f"launcher: {reason}", flush=True)
        if writer:
            rules.settle(dirs, reason)
    except SignalException as e:  # stopped by the engine or `kdtui run`, which settle the runs
        return 128 + int(e.sigval)
    return 0 if all(Folder(d).status == "done" for d in dirs) else 1


def rank_main(run_dirs: list[Path], home: Path | None, group: Group) -> int:
    """One rank: 0 once the runs are recorded (rank 0 records them, done or failed); an
    exception goes to torchrun's error file (`record`), whose launcher names the rank."""
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def run_rank() -> None:
        distributed.die_with_parent()
        try:
            train(run_dirs, home=home, group=group)
        finally:
            distributed.shutdown()

    run_rank()
    return 0


if __name__ == "__main__":
    sys.exit(main())
