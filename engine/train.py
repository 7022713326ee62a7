"""The training loop, readable in one sitting.

`fit` trains one or more *members* (runs) over the same batches: the
teacher's forward pass is done once per batch and shared, so a fused
sweep costs one teacher pass for N students. Each member keeps its own
seed, optimiser, metrics and checkpoints, and can stop (NaN, cancel)
without stopping the others. Data order is a pure function of
(data seed, epoch) and every piece of state lives in the `last`
checkpoint, so a resumed run ends exactly where an uninterrupted one does.

On several processes (`Runtime.group`, engine.distributed) every rank runs this
loop on its shard of each epoch; each member's training step goes through
DistributedDataParallel (gradients averaged over the ranks), the numbers the loop
decides on (logged losses, NaN, cancel, accuracies) are reduced so that every rank
decides alike, and rank 0 alone saves checkpoints (the callbacks of the other ranks
write nothing).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from engine import distributed
from engine.core import checkpoint as ckptmod
from engine.core import faults, safefs
from engine.core import metrics as M
from engine.core.devices import ENGINE_GPU_ENV, worker_device
from engine.core.schema import Experiment, OptimConfig, RunConfig
from engine.distill.base import Distiller, TeacherOut, build_distiller
from engine.distributed import SINGLE, Group
from engine.models import build_model, load_checkpoint_file
from engine.models.base import FeatureModel, count_params


# ---------------------------------------------------------------- device
@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool
    group: Group = SINGLE  # this process's rank in a run on several processes

    def autocast(self):
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )


def pick_runtime(run: RunConfig, group: Group = SINGLE) -> Runtime:
    """Device, precision and process-wide switches for a run (or a fused group).

    Under the engine a worker sees only its slot's GPU, as cuda:0 (`engine.core.devices.
    worker_device` maps `cuda:N`); the device is made current, so that synchronize(),
    memory statistics and new tensors without an index all use it. A rank of a run on
    several processes takes GPU `local_rank` of the ones it sees (the engine shows the
    group its GPUs); more ranks than GPUs is an error naming both numbers.
    """
    if group.parallel:
        requested = run.device if run.device in ("cpu", "cuda") else "auto"
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count < run.nproc_per_node:
                raise RuntimeError(
                    f"run.nproc_per_node = {run.nproc_per_node} but this process sees {count} "
                    "GPU(s) (CUDA_VISIBLE_DEVICES); lower nproc_per_node to the GPUs of the box "
                    'or free more of them (device = "cpu" runs the processes on CPUs)'
                )
            requested = f"cuda:{group.local_rank}"
    else:
        requested = worker_device(run.device, os.environ.get(ENGINE_GPU_ENV))
    if requested == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"run.device = {run.device!r} but CUDA is not available here")
    cuda = device.type == "cuda"
    if cuda:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"run.device = {run.device!r} but this process sees {torch.cuda.device_count()} "
                f"GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}); check "
                'CUDA_VISIBLE_DEVICES or use device = "cuda"'
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    amp = {
        "auto": torch.bfloat16 if cuda else None,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "off": None,
    }[run.amp]
    channels_last = run.channels_last == "on" or (run.channels_last == "auto" and cuda)
    torch.set_num_threads(run.threads or auto_threads())
    set_deterministic(run.deterministic)
    if group.parallel and run.sync_bn and not cuda:
        raise RuntimeError(
            "run.sync_bn = true but this run trains on the CPU, and torch's SyncBatchNorm "
            "runs on GPUs only; set sync_bn = false (each process then normalises its own "
            "batch) or run it on GPUs"
        )
    return Runtime(device, amp, channels_last, group)


def set_deterministic(on: bool) -> None:
    """`[run] deterministic`: reproducible kernels instead of the fastest ones.

    On: deterministic algorithms everywhere torch has them (`use_deterministic_algorithms`,
    warn_only: an op without one, e.g. adaptive_avg_pool2d's CUDA backward when a method
    pools maps of different sizes, warns once and runs anyway), cuDNN autotuning off, TF32
    off (full fp32 matmuls and convs), CUBLAS_WORKSPACE_CONFIG for deterministic cuBLAS
    (effective when set before CUDA starts, as in a worker) and Inductor's deterministic
    mode (no benchmarked kernel choices). Off: the fast defaults (cudnn.benchmark, TF32).
    CPU runs are deterministic either way for a fixed thread count.
    """
    torch.use_deterministic_algorithms(on, warn_only=True)
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        importlib.import_module("torch._inductor.config")  # seconds to import: only if asked
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:  # compiled steps: no autotuning choices that change numerics
        inductor.deterministic = on
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on
    torch.backends.cuda.matmul.allow_tf32 = not on
    torch.backends.cudnn.allow_tf32 = not on


def auto_threads() -> int:
    """CPU threads when `[run] threads = 0`: $OMP_NUM_THREADS if set (the engine sets cores /
    slots per worker), else every core.

    On a shared 2-core VM, 2 threads were 2-13x *slower* than 1 while another process held
    a core, because GNU OpenMP threads spin at every barrier. With OMP_WAIT_POLICY=PASSIVE
    (set in engine/__init__.py before torch loads) 2 threads are never slower than 1 under
    load (resnet8 step: 261-276 ms vs 304-308 ms beside a training process) and up to 1.8x
    faster when idle. Fixed per machine, not probed per run: the thread count changes the
    last bits of CPU gradients.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def compile_mode(run: RunConfig, runtime: Runtime) -> str | None:
    """torch.compile mode: CUDA graphs (reduce-overhead) on CUDA unless told otherwise."""
    if run.compile_mode == "auto":
        return "reduce-overhead" if runtime.device.type == "cuda" else None
    return None if run.compile_mode == "default" else run.compile_mode


# ---------------------------------------------------------------- schedule
def lr_at(o: OptimConfig, epoch: int, frac: float = 0.0) -> float:
    """Learning rate at `epoch` (0-based) plus `frac` of it; a pure function, nothing to save."""
    t = epoch + frac
    if o.warmup_epochs and t < o.warmup_epochs:
        return o.lr * t / o.warmup_epochs
    if o.schedule == "multistep":
        return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)
    if o.schedule == "cosine":
        span = max(o.epochs - o.warmup_epochs, 1e-9)
        progress = min(max((t - o.warmup_epochs) / span, 0.0), 1.0)
        return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return o.lr


def make_optimizer(
    params: list[torch.nn.Parameter], o: OptimConfig, device: torch.device
) -> torch.optim.Optimizer:
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, **fast)
    return torch.optim.SGD(
        params,
        lr=o.lr,
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay,
        **fast,
    )


# ---------------------------------------------------------------- members
@dataclass
class Member:
    """One run inside `fit`."""

    name: str  # run id or a label, for messages
    cfg: Experiment
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    dir: Path
    scaler: Any = None
    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken
    best_top1: float = -1.0
    best_epoch: int = -1
    last: dict = field(default_factory=dict)
    status: str = "running"  # running | done | failed | cancelled
    error: str | None = None
    train_fn: Callable | None = None
    compiled: bool = False  # train_fn is torch.compile'd: partial batches run eagerly
    pending_commit: dict | None = None  # the finished epoch's metrics, saved with checkpoints
    world_size: int = 1  # processes that train this member together (its checkpoint says)

    @property
    def head(self) -> str:
        return self.cfg.method.head

    @property
    def active(self) -> bool:
        return self.status == "running"

    def checkpoint_state(self) -> dict:
        d = self.distiller
        return {
            "model": d.student.state_dict(),  # RepDistiller/SimKD layout: loads as a teacher
            "distiller": {
                k: v for k, v in d.trainable_state().items() if not k.startswith("student.")
            },
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": self.epoch,
            "step": self.step,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "arch": self.cfg.student.arch,
            "method": self.cfg.distill.method,
            "head": self.head,
            "world_size": self.world_size,
            **rng_state(),
        }

    def save(self, tag: str) -> Path:
        """Sealed, atomic, never through a symlink; `last` keeps the one before as prev.pth
        (engine.core.checkpoint). Carries the epoch's metrics (`commit_state`)."""
        state = {**self.checkpoint_state(), **commit_state(self)}
        return ckptmod.write(
            self.dir / f"{tag}.pth",
            lambda f: torch.save(state, f),
            epoch=self.epoch,
            keep_prev=tag == "last",
        )

    def restore(self, path: Path) -> dict:
        """Load a checkpoint into this member; returns the whole saved state."""
        ckptmod.verify(path)  # a damaged file is named before torch reads it
        with os.fdopen(safefs.open_fd(path, os.O_RDONLY), "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
        d = self.distiller
        trainable = {f"student.{k}": v for k, v in state["model"].items()}
        trainable.update(state.get("distiller", {}))
        d.load_trainable_state(trainable)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        set_rng_state(state)
        return state


# ---------------------------------------------------------------- the epoch commit
# An epoch commits in this order (fit): best.pth, last.pth (each carrying the epoch's metrics),
# then the metrics and run row in one store transaction, then the log line. A kill anywhere
# leaves a checkpoint that either predates the epoch (which is then trained again) or holds
# its metrics, which a resume records when the store lacks them (engine.worker.resume_member).


def commit_state(m: Member) -> dict:
    """The part of a checkpoint that lets a resume record its epoch's metrics."""
    return {"commit": m.pending_commit} if m.pending_commit else {}


def commit_of(state: dict | None) -> dict | None:
    """The epoch metrics a checkpoint carries ({"epoch", "step", "time", "metrics"}), if any."""
    return (state or {}).get("commit") or None


def rng_state() -> dict[str, Any]:
    """The global RNG streams a checkpoint keeps: the CPU generator ("rng") and, once this
    process uses CUDA, every visible GPU's generator ("cuda_rng"; torch.get_rng_state is the
    CPU's only). A CPU run on a GPU box leaves CUDA alone (no context for a checkpoint)."""
    state: dict[str, Any] = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved. A checkpoint from a box with more visible GPUs (a
    worker under the engine sees one) restores the generators this process has."""
    torch.set_rng_state(state["rng"])
    cuda = state.get("cuda_rng") or []
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


class Callbacks(Protocol):
    """What the loop tells the outside world (store, progress bar, log file)."""

    def on_start(self, m: Member, info: dict) -> None: ...
    def on_step(
        self, m: Member, epoch: int, step: int, losses: dict[str, float], lr: float
    ) -> None: ...
    def on_epoch(self, m: Member, epoch: int, metrics: dict[str, float]) -> None: ...
    def on_end(self, m: Member) -> None: ...
    def should_stop(self, m: Member) -> bool: ...
    def log(self, m: Member, message: str) -> None: ...


class NullCallbacks:
    def on_start(self, m, info):
        pass

    def on_step(self, m, epoch, step, losses, lr):
        pass

    def on_epoch(self, m, epoch, metrics):
        pass

    def on_end(self, m):
        pass

    def should_stop(self, m):
        return False

    def log(self, m, message):
        pass


# ---------------------------------------------------------------- building
def load_teacher(arch: str, checkpoint: str | Path, num_classes: int) -> FeatureModel:
    teacher = build_model(arch, num_classes=num_classes)
    load_checkpoint_file(checkpoint, teacher)
    return teacher


def build_member(
    name: str,
    cfg: Experiment,
    teacher: FeatureModel | None,
    num_classes: int,
    runtime: Runtime,
    run_dir: Path,
    input_shape=(1, 3, 32, 32),
    train_labels: torch.Tensor | None = None,
    *,
    backend: Any = None,
) -> Member:
    """Seeded exactly as a standalone run, whatever else shares the process.

    train_labels: the training set's labels, for methods that keep a row per sample (CRD).
    backend: the Dynamo backend when `[run] compile` is on (None: Inductor; see compile_step).
    """
    torch.manual_seed(cfg.seeds[0])
    student = build_model(cfg.student.arch, num_classes=num_classes)
    if cfg.student.checkpoint:
        load_checkpoint_file(cfg.student.checkpoint, student)
    distiller = build_distiller(
        cfg.distill.method,
        student,
        teacher,
        cfg.distill.options,
        num_classes=num_classes,
        input_shape=input_shape,
        train_labels=train_labels,
    )
    if runtime.group.parallel and cfg.run.sync_bn:
        convert_sync_batchnorm(distiller)
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    distiller.to(runtime.device, memory_format=memory_format)
    optimizer = make_optimizer(distiller.trainable_parameters(), cfg.optim, runtime.device)
    scaler = (
        torch.amp.GradScaler(runtime.device.type) if runtime.amp_dtype == torch.float16 else None
    )
    member = Member(name, cfg, distiller, optimizer, Path(run_dir), scaler=scaler)
    member.world_size = runtime.group.world
    member.train_fn = distiller.forward_train
    if cfg.run.compile:
        member.train_fn = compile_step(distiller, compile_mode(cfg.run, runtime), backend)
        member.compiled = True
    return member


def trained_modules(distiller: Distiller) -> list[tuple[str, torch.nn.Module]]:
    """The distiller's submodules that train: the student, projectors, heads (not the
    frozen teacher, which every rank holds unchanged)."""
    return [(n, c) for n, c in distiller.named_children() if n != "teacher"]


def convert_sync_batchnorm(distiller: Distiller) -> None:
    """`[run] sync_bn`: BatchNorm of the trained modules normalises over every rank's batch.

    torch's converter keeps the same parameter and buffer tensors (and names, so a
    checkpoint loads into plain BatchNorm, e.g. as a teacher later); the teacher keeps
    its eval-mode BatchNorm."""
    for name, child in trained_modules(distiller):
        setattr(distiller, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))


class TrainStep(torch.nn.Module):
    """A member's training step as a module's forward: DistributedDataParallel hooks
    `forward`, and a distiller trains through `forward_train(batch, teacher)`."""

    def __init__(self, distiller: Distiller):
        super().__init__()
        self.distiller = distiller

    def forward(self, batch, teacher: TeacherOut | None):
        return self.distiller.forward_train(batch, teacher)


def data_parallel(m: Member) -> None:
    """Train `m` through DistributedDataParallel: gradients averaged over the ranks.

    What DDP wraps is what trains (student, projectors, heads); the frozen teacher's
    parameters and buffers are left out of it. `static_graph`: every method's step uses
    the same parameters at every step, but some leave trained parameters unused (SimKD
    never reads the student's own classifier): a static graph lets DDP learn that once,
    instead of searching the autograd graph every step (find_unused_parameters).
    Buffers are not broadcast every step (`sync_buffers` makes them equal before each
    evaluation; CRD keeps its memory banks equal itself).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    step = TrainStep(m.distiller)
    teacher = m.distiller.teacher
    if teacher is not None:
        frozen = [f"distiller.teacher.{n}" for n, _ in teacher.named_parameters()]
        frozen += [f"distiller.teacher.{n}" for n, _ in teacher.named_buffers()]
        DDP._set_params_and_buffers_to_ignore_for_model(step, frozen)
    # torch 2.14 renamed broadcast_buffers (deprecated) to forward_sync_buffers
    params = inspect.signature(DDP.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    m.train_fn = DDP(step, static_graph=True, **{no_sync: False})


def sync_buffers(m: Member, group: Group) -> None:
    """Rank 0's running statistics (and other buffers) in every rank's trained modules."""
    for _, module in trained_modules(m.distiller):
        distributed.sync_buffers(group, module)


def compile_step(distiller: Distiller, mode: str | None, backend: Any = None) -> Callable:
    """`torch.compile` of a member's `forward_train`.

    Members of a fused group share one compiled graph. Dynamo caches per code object, and
    every member's `forward_train` is the same code; with inlined nn modules (torch's
    default) parameters and buffers are graph inputs guarded by shape and dtype, not by
    identity, and the options that differ inside a sweep (weights, temperatures) are 0-d
    buffers (`Distiller.hp`), so member 2..N pass member 1's guards: one compile per group,
    no recompile (a Python float would recompile member 2 and become a CPU scalar input,
    which keeps Inductor from using CUDA graphs). With CUDA graphs (reduce-overhead) each
    member's parameters are other static inputs of that graph: in torch 2.14's
    cudagraph_trees a static-input address mismatch records a new graph next to the
    existing ones under the same function (not counted toward the re-record limit), and
    every later call replays whichever recorded graph's addresses match, so N members
    record N graphs once and then only replay (`kdtui bench --gpu-check` counts the
    recordings on a GPU). `backend` (tests, probes): a Dynamo backend such as
    torch._dynamo.testing.CompileCounter instead of Inductor.
    """
    if backend is not None:
        return torch.compile(distiller.forward_train, backend=backend)
    return torch.compile(distiller.forward_train, mode=mode)


# ---------------------------------------------------------------- evaluation
@torch.inference_mode()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], loader, runtime: Runtime) -> dict:
    """top-1, top-5 (%) and mean CE loss over a test loader.

    Always in fp32, whatever `runtime.amp` trains in: papers report fp32 accuracy, and
    `best.pth` is chosen by it (about 1 % of an epoch's time). The counts stay on the
    device until the end: one host sync per evaluation, not two per batch. On several
    processes each rank scores its shard of the test split (no sample twice, none left
    out) and the sums are added over the ranks before dividing.
    """
    dev = runtime.device
    correct1 = torch.zeros((), dtype=torch.int64, device=dev)
    correct5 = torch.zeros((), dtype=torch.int64, device=dev)
    loss_sum, n = torch.zeros((), device=dev), 0
    for batch in loader.batches(0):
        with torch.autocast(device_type=dev.type, enabled=False):
            logits = forward(batch.x).float()
        loss_sum += F.cross_entropy(logits, batch.y, reduction="sum")
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(batch.y[:, None])
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
        n += batch.y.shape[0]
    sums = torch.stack([correct1.double(), correct5.double(), loss_sum.double()])
    sums = torch.cat([sums, torch.tensor([float(n)], dtype=torch.float64, device=dev)])
    c1, c5, loss, n = distributed.all_sum(runtime.group, sums).tolist()
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n}


# ---------------------------------------------------------------- the loop
def train_step(m: Member, batch, t_out: TeacherOut | None, epoch: int, runtime: Runtime):
    fn = m.train_fn
    if m.compiled:
        if batch.x.shape[0] != m.cfg.data.batch_size:
            # the last, partial batch: eager, rather than a recompile and a second CUDA graph
            fn = m.distiller.forward_train
        elif runtime.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
    with runtime.autocast():
        logits, losses = fn(batch, t_out)
    scales = m.distiller.loss_scales(epoch)  # epoch-dependent factors stay out of the graph
    if scales:
        losses = {k: v * scales[k] if k in scales else v for k, v in losses.items()}
    loss = sum(losses.values())
    m.optimizer.zero_grad(set_to_none=True)
    if m.scaler is not None:
        m.scaler.scale(loss).backward()
        m.scaler.step(m.optimizer)
        m.scaler.update()
    else:
        loss.backward()
        m.optimizer.step()
    m.step += 1
    return loss.detach(), {k: v.detach() for k, v in losses.items()}, logits.detach()


def fit(
    members: list[Member],
    data,
    teacher_source: Callable | None,
    runtime: Runtime,
    callbacks: Callbacks | None = None,
) -> list[Member]:
    """Train every member to its configured number of epochs over shared batches.

    teacher_source(batch) -> TeacherOut, called once per batch when any member
    needs the teacher. All members must be at the same epoch (fresh or resumed
    from checkpoints written by the same group). On several processes each rank calls
    it with its own shard (`data`) and callbacks; rank 0 alone saves checkpoints.
    """
    cb = callbacks or NullCallbacks()
    group, dev = runtime.group, runtime.device
    if len({m.epoch for m in members}) > 1:
        raise ValueError("members of one fit() must resume from the same epoch")
    epochs = max(m.cfg.optim.epochs for m in members)
    start = members[0].epoch
    steps_per_epoch = len(data.train)
    max_steps = members[0].cfg.run.max_steps
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    needs_teacher = teacher_source is not None and any(m.cfg.method.needs_teacher for m in members)
    for m in members:
        cb.on_start(
            m,
            {
                "steps_per_epoch": steps_per_epoch,
                "epochs": m.cfg.optim.epochs,
                "params": count_params(m.distiller.student),
                "trainable_params": sum(p.numel() for p in m.distiller.trainable_parameters()),
            },
        )

    for epoch in range(start, epochs):
        running = [m for m in members if m.active and m.epoch < m.cfg.optim.epochs]
        if not running:
            break
        for m in running:
            m.distiller.train()
        sums = {m.name: {} for m in running}  # per log window, on device
        epoch_sums = {m.name: [torch.zeros((), device=runtime.device), 0, 0] for m in running}
        seen, t0 = 0, time.perf_counter()
        for i, batch in enumerate(data.train.batches(epoch)):
            if i >= steps_per_epoch:
                break
            if not any(m.active for m in running):
                break  # every member stopped (cancel, NaN): free the slot now
            t_out = teacher_source(batch) if needs_teacher else None
            bs = batch.y.shape[0]
            seen += bs
            for m in running:
                if not m.active:
                    continue
                lr = lr_at(m.cfg.optim, epoch, i / steps_per_epoch)
                for g in m.optimizer.param_groups:
                    g["lr"] = lr
                loss, parts, logits = train_step(m, batch, t_out, epoch, runtime)
                window = sums[m.name]
                window["loss"] = window.get("loss", 0.0) + loss
                for k, v in parts.items():
                    window[k] = window.get(k, 0.0) + v
                es = epoch_sums[m.name]
                es[0] += logits.argmax(1).eq(batch.y).sum()
                es[1] += bs
                es[2] += 1
                last_step = i + 1 == steps_per_epoch
                if (i + 1) % m.cfg.run.log_every == 0 or last_step:
                    n = (i % m.cfg.run.log_every) + 1
                    values = {k: float(v) / n for k, v in window.items()}
                    values = distributed.mean_dict(group, values, dev)  # every rank alike
                    window.clear()
                    bad = [k for k, v in values.items() if not math.isfinite(v)]
                    if bad:
                        _stop(m, cb, "failed", _diverged_message(m, epoch, i, values, lr))
                        continue
                    cb.on_step(m, epoch, i + 1, values, lr)
                    if distributed.decide(group, cb.should_stop(m), dev):
                        _stop(m, cb, "cancelled", f"cancelled during epoch {epoch + 1}")
        train_time = time.perf_counter() - t0
        source_metrics = getattr(teacher_source, "epoch_metrics", None) if needs_teacher else None
        extra = source_metrics() if source_metrics else {}

        for m in running:
            if not m.active:
                continue
            m.epoch = epoch + 1
            es = epoch_sums[m.name]
            # every rank's images: accuracy over the whole epoch, speed of the whole group
            correct, count, seen_all = distributed.sum_numbers(
                group, [float(es[0]), float(es[1]), float(seen)], dev
            )
            metrics = {
                M.TRAIN_TOP1: 100.0 * correct / max(count, 1),
                M.EPOCH_LR: lr_at(m.cfg.optim, epoch),
                M.IMAGES_PER_S: seen_all / max(train_time, 1e-9),
                M.EPOCH_TIME: train_time,
                **extra,
            }
            last_epoch = m.epoch == m.cfg.optim.epochs
            improved = False
            if m.epoch % m.cfg.run.eval_every == 0 or last_epoch:
                sync_buffers(m, group)  # every rank scores the model rank 0 saves
                m.distiller.eval()
                ev = evaluate(m.distiller.forward_test, data.test, runtime)
                metrics.update({M.test_name(k): v for k, v in ev.items()})
                m.last = ev
                if ev["top1"] > m.best_top1:
                    m.best_top1, m.best_epoch = ev["top1"], epoch
                    improved = True
            # the epoch's commit, in order: see commit_state
            m.pending_commit = {
                "epoch": epoch,
                "step": m.step,
                "time": time.time(),
                "metrics": {k: float(v) for k, v in metrics.items()},
            }
            if improved and group.main:
                m.save("best")
                faults.point("best", m.epoch)
            if (m.epoch % m.cfg.run.checkpoint_every == 0 or last_epoch) and group.main:
                m.save("last")
                faults.point("checkpoint", m.epoch)
            cb.on_epoch(m, epoch, metrics)
            cb.log(m, _epoch_line(m, metrics))
            faults.point("log", m.epoch)
            if last_epoch:
                m.status = "done"
                cb.on_end(m)
    for m in members:  # members that had finished before a resume
        if m.active and m.epoch >= m.cfg.optim.epochs:
            m.status = "done"
            cb.on_end(m)
    return members


def _stop(m: Member, cb: Callbacks, status: str, message: str) -> None:
    m.status, m.error = status, message
    cb.log(m, message)
    cb.on_end(m)


def _diverged_message(m: Member, epoch: int, i: int, values: dict, lr: float) -> str:
    parts = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    return (
        f"loss is not finite at epoch {epoch + 1}, step {i + 1} ({parts}; lr={lr:.4g}); "
        f"stopped. Checkpoints up to epoch {m.epoch} are kept: lower optim.lr or check "
        f"the data, then resume or restart."
    )


def _epoch_line(m: Member, metrics: dict) -> str:
    test = (
        f" test top1 {metrics[M.TEST_TOP1]:.2f} top5 {metrics[M.TEST_TOP5]:.2f} (head: {m.head})"
        if M.TEST_TOP1 in metrics
        else ""
    )
    cache = (
        f" teacher cache {100 * metrics[M.CACHE_HIT_RATE]:.0f}% hits"
        if M.CACHE_HIT_RATE in metrics
        else ""
    )
    return (
        f"epoch {m.epoch}/{m.cfg.optim.epochs} train top1 {metrics[M.TRAIN_TOP1]:.2f} "
        f"lr {metrics[M.EPOCH_LR]:.4g} {metrics[M.IMAGES_PER_S]:.0f} img/s{cache}{test}"
    )


def plain_teacher_source(
    teacher: FeatureModel,
    runtime: Runtime,
    *,
    compile: bool = False,
    logits_only: bool = False,
    batch_size: int = 0,
    strong: bool = False,
    preact: bool = False,
) -> Callable:
    """The teacher's forward pass for every batch (under no_grad, autocast on CUDA).

    logits_only: no member reads the ordinary stage maps, so none are kept.
    compile: torch.compile the forward for batches of `batch_size` (no CUDA
    graphs: several students read its outputs); other sizes run eagerly.
    strong: a member reads the teacher's logits on the batch's strong view (MLKD):
    a second pass over `Batch.strong` fills `TeacherOut.strong_logits`.
    preact: a member reads pre-activation stage maps (ReviewKD's teacher side):
    `TeacherOut.preact_feats`. Without ordinary-map readers one pass gives them; a group
    that reads both kinds pays a second pass for the pre-activation maps.
    """

    def forward(x: torch.Tensor):
        """(ordinary Features or None, pre-activation Features or None, logits)."""
        if logits_only and not preact:
            return None, None, teacher.forward(x)
        if logits_only:
            pre, out = teacher.forward_all(x, preact=True)
            return None, pre, out
        feats, out = teacher.forward_all(x)
        pre = teacher.forward_features(x, preact=True) if preact else None
        return feats, pre, out

    fast = torch.compile(forward) if compile else forward

    @torch.no_grad()
    def run(x: torch.Tensor):
        fn = fast if x.shape[0] == batch_size else forward
        with runtime.autocast():
            return fn(x)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return run(x)[2]

    def strong_logits(batch) -> torch.Tensor | None:
        if not strong or batch.strong is None:
            return None
        with torch.no_grad(), runtime.autocast():
            return teacher.forward(batch.strong)

    def source(batch) -> TeacherOut:
        feats, pre, out = run(batch.x)
        return TeacherOut(feats, out, strong_logits=strong_logits(batch), preact_feats=pre)

    source.logits = logits  # type: ignore[attr-defined]
    source.strong_logits = strong_logits  # type: ignore[attr-defined]
    return source


class CachedTeacherSource:
    """Teacher logits through the exact cache (engine.cache): only misses run the teacher."""

    def __init__(
        self,
        teacher: FeatureModel,
        runtime: Runtime,
        cache,
        *,
        compile: bool = False,
        batch_size: int = 0,
        strong: bool = False,
    ):
        self.cache = cache
        self.plain = plain_teacher_source(
            teacher,
            runtime,
            compile=compile,
            logits_only=True,
            batch_size=batch_size,
            strong=strong,
        )

    def __call__(self, batch) -> TeacherOut:
        from engine.cache import cached_logits

        if batch.view is None:  # a loader without view ids (DataLoader path): no caching
            return self.plain(batch)
        if batch.index_cpu is not None and batch.view_cpu is not None:
            index, view = batch.index_cpu, batch.view_cpu  # the plan: no host sync
        else:
            index, view = batch.index, batch.view
        logits = cached_logits(self.cache, self.plain.logits, batch.x, index, view)
        # a strong view is a fresh RandAugment draw, never seen again: always the teacher
        return TeacherOut(None, logits, strong_logits=self.plain.strong_logits(batch))

    def epoch_metrics(self) -> dict[str, float]:
        self.cache.flush(wait=True)  # a disk cache fed from a GPU: store the last misses
        st = self.cache.stats
        out = {
            M.CACHE_HIT_RATE: st.hit_rate,
            M.CACHE_FILL: self.cache.fill,
            M.CACHE_TEACHER_ROWS: float(st.teacher_rows),
        }
        st.history.append(st.hit_rate)
        st.reset()
        return out
