"""Scheduling policy: the engine's slots, where a run may go, and when it is ready.

Pure functions of their inputs (no store, no processes), so the policy is tested
without starting anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.core.devices import ENGINE_GPU_ENV, HOST_DEVICES, cuda_index
from engine.core.store import Run
from engine.daemon.options import Options


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: str | None  # the CUDA_VISIBLE_DEVICES value of its workers; None: CPU
    name: str


class Placeable(Protocol):
    id: int
    priority: int
    fuse_key: str | None
    resume: int


def discover_gpus(env: dict[str, str] | None = None) -> list[str]:
    """GPU ids this process may use, torch-free: CUDA_VISIBLE_DEVICES if set, else NVML."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for item in visible.split(","):
            item = item.strip()
            if not item or item.startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on
            ids.append(item)
        return ids
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, no GPU: a CPU box
        return []


def parse_gpus(spec: str | None, visible: Sequence[str]) -> list[str]:
    """`--gpus`: None means all visible; "none"/"cpu"/"" means CPU only."""
    if spec is None:
        return list(visible)
    spec = spec.strip()
    if spec.lower() in ("", "none", "cpu"):
        return []
    ids = [s.strip() for s in spec.split(",") if s.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {spec}: a GPU is listed twice")
    if visible:
        unknown = [i for i in ids if i not in visible]
        if unknown:
            raise ValueError(
                f"--gpus {spec}: GPU {', '.join(unknown)} is not visible here "
                f"(visible: {', '.join(visible)})"
            )
    return ids


def build_slots(gpus: Sequence[str], slots_per_gpu: int = 1, cpu_slots: int = 1) -> list[Slot]:
    """GPU slots interleaved across GPUs (gpu0, gpu1, gpu0.1, ...) so work spreads before it
    packs, then `cpu_slots` CPU slots: every run's home on a CPU box, and on a GPU box the
    home of runs with `device = "cpu"` (which never take a GPU slot)."""
    if slots_per_gpu < 1 or cpu_slots < 1:
        raise ValueError("slots per GPU and CPU slots must be at least 1")
    slots: list[Slot] = []
    for k in range(slots_per_gpu if gpus else 0):
        for g in gpus:
            name = f"gpu{g}" if slots_per_gpu == 1 else f"gpu{g}.{k}"
            slots.append(Slot(len(slots), g, name))
    for k in range(cpu_slots):
        slots.append(Slot(len(slots), None, f"cpu{k}"))
    return slots


def slots_for(options: Options, visible: Sequence[str] | None = None) -> list[Slot]:
    """The slots an engine with these options has on this machine (ValueError: bad --gpus)."""
    visible = discover_gpus() if visible is None else visible
    return build_slots(parse_gpus(options.gpus, visible), options.slots_per_gpu, options.cpu_slots)


def slot_fits(device: str, slot: Slot, gpu_slots_exist: bool) -> bool:
    """Whether a run with `[run] device = device` may train on `slot`.

    cpu, mps, xpu: CPU slots only (the engine's GPU slots are NVIDIA GPUs, shown to a
    worker through CUDA_VISIBLE_DEVICES; an Apple or Intel GPU belongs to the host). cuda: any
    GPU slot. cuda:N: the slots of GPU N, numbered as the
    engine numbers them (`--gpus`, i.e. CUDA_VISIBLE_DEVICES of the engine). auto: GPU
    slots when the engine has any (a GPU run never lands on a CPU slot), else CPU slots.
    """
    device = (device or "auto").strip()
    if device in HOST_DEVICES:
        return slot.gpu is None
    if device == "auto":
        return (slot.gpu is not None) == gpu_slots_exist
    index = cuda_index(device)
    if index is not None:
        return slot.gpu == index
    return slot.gpu is not None  # "cuda"


def unplaceable(device: str, slots: Sequence[Slot], nproc: int = 1) -> str | None:
    """Why no set of this engine's slots can ever take a run with this device and
    `[run] nproc_per_node = nproc` (None: one can)."""
    gpus = sorted({s.gpu for s in slots if s.gpu is not None})
    if not any(slot_fits(device, s, bool(gpus)) for s in slots):
        if not gpus:
            return (
                f"run.device = {device!r} but this engine has no GPU (slots: "
                f'{", ".join(s.name for s in slots)}); set [run] device = "auto" or "cpu", or '
                "start the engine on a GPU box (`kdtui engine start --gpus 0`)"
            )
        return (
            f"run.device = {device!r} but this engine uses GPU {', '.join(gpus)} (cuda:N names "
            f'GPU N as `kdtui engine start --gpus` does); set [run] device = "cuda" for any GPU '
            "or restart the engine with that GPU in --gpus"
        )
    if nproc <= 1:
        return None
    fitting = [s for s in slots if slot_fits(device, s, bool(gpus))]
    if fitting[0].gpu is not None:
        have = sorted({s.gpu for s in fitting})
        if len(have) >= nproc:
            return None
        return (
            f"[run] nproc_per_node = {nproc} trains on {nproc} GPUs (one process each) but this "
            f"engine has {len(have)} GPU slot{'s' * (len(have) != 1)} on distinct GPUs "
            f"(GPU {', '.join(have)}); set nproc_per_node = {len(have)} or less, or restart the "
            f"engine with {nproc} GPUs (`kdtui engine stop`, then `kdtui engine start --gpus` "
            "with them)"
        )
    if len(fitting) >= nproc:
        return None
    return (
        f"[run] nproc_per_node = {nproc} trains on {nproc} CPU slots (one process each) but "
        f"this engine has {len(fitting)} CPU slot{'s' * (len(fitting) != 1)} "
        f"({', '.join(s.name for s in fitting)}); set nproc_per_node = {len(fitting)} or less, "
        f"or restart the engine with more (`kdtui engine stop`, then `kdtui engine start "
        f"--cpu-slots {nproc}`)"
    )


def slots_for_group(
    device: str, nproc: int, free: Sequence[Slot], gpu_slots_exist: bool
) -> tuple[Slot, ...]:
    """The free slots a worker of `nproc` processes takes (empty: not enough are free).

    One process per slot: on GPUs one slot on each of `nproc` distinct GPUs (a process
    owns its GPU; two ranks never share one), else `nproc` CPU slots."""
    chosen: list[Slot] = []
    gpus: set[str] = set()
    for s in free:
        if not slot_fits(device, s, gpu_slots_exist) or s.gpu in gpus:
            continue
        if s.gpu is not None:
            gpus.add(s.gpu)
        chosen.append(s)
        if len(chosen) == nproc:
            return tuple(chosen)
    return ()


def place(
    ready: Iterable[Placeable],
    free_slots: Sequence[Slot],
    devices: dict[int, str] | None = None,
    *,
    gpu_slots_exist: bool | None = None,
    nprocs: dict[int, int] | None = None,
) -> list[tuple[tuple[Slot, ...], list[int]]]:
    """Assign ready runs to free slots: higher priority first, then FIFO.

    Runs sharing a fuse key go to one worker together (one teacher pass for
    the group). Resumed runs go alone: a fused group must start from one epoch.
    `devices` (run id -> `[run] device`, "auto" when absent) keeps CPU runs on CPU slots
    and cuda:N runs on GPU N (`slot_fits`); a run that fits no free slot waits without
    holding up the runs behind it. `gpu_slots_exist`: whether the engine has GPU slots
    at all (default: whether a free one is GPU), which decides where "auto" runs go.

    `nprocs` (run id -> `[run] nproc_per_node`, 1 when absent): a run of N processes
    takes N slots at once (`slots_for_group`). When too few are free it keeps the ones
    that are: runs behind it do not take them, so a steady stream of one-slot runs never
    starves it (those slots idle until the rest frees up; runs of the other kind of slot
    go on).
    """
    devices = devices or {}
    nprocs = nprocs or {}
    if gpu_slots_exist is None:
        gpu_slots_exist = any(s.gpu is not None for s in free_slots)
    order = sorted(ready, key=lambda r: (-r.priority, r.id))
    slots = list(free_slots)
    placed: list[tuple[tuple[Slot, ...], list[int]]] = []
    taken: set[int] = set()
    for run in order:
        if not slots:
            break
        if run.id in taken:
            continue
        device = devices.get(run.id, "auto")
        nproc = nprocs.get(run.id, 1)
        chosen = slots_for_group(device, nproc, slots, gpu_slots_exist)
        if not chosen:
            if nproc > 1:  # hold what fits it now, so the runs behind do not take it
                slots = [s for s in slots if not slot_fits(device, s, gpu_slots_exist)]
            continue
        group = [run]
        if run.fuse_key and not run.resume:
            group = [
                r
                for r in order
                if r.id not in taken and r.fuse_key == run.fuse_key and not r.resume
            ]
        taken.update(r.id for r in group)
        for s in chosen:
            slots.remove(s)
        placed.append((chosen, [r.id for r in group]))
    return placed


def group_gpus(slots: Sequence[Slot]) -> str | None:
    """The GPUs of a worker's slots as CUDA_VISIBLE_DEVICES lists them ("0,2"); None: CPU."""
    return ",".join(s.gpu for s in slots if s.gpu is not None) or None


def worker_env(
    slots: Sequence[Slot], slot_count: int, environ: dict[str, str], cpus: int
) -> dict[str, str]:
    """What the engine adds to a worker's environment on `slots` (of `slot_count` in all).

    Its GPUs, and only them (CUDA_VISIBLE_DEVICES: the N GPUs of a run of N processes,
    rank r on the r-th; "" hides every GPU from a CPU worker); on CPU slots each process
    gets a slot's share of the cores (OMP_NUM_THREADS, unless the engine's own is set)."""
    gpu = group_gpus(slots)
    extra = {"CUDA_VISIBLE_DEVICES": gpu or "", ENGINE_GPU_ENV: gpu or ""}
    if gpu is None and "OMP_NUM_THREADS" not in environ:
        extra["OMP_NUM_THREADS"] = str(max(1, cpus // max(slot_count, 1)))
    if gpu is not None:
        extra["CUDA_DEVICE_ORDER"] = environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return extra


def dependency(run: Run, teacher: Run | None) -> tuple[str, str]:
    """("ready" | "wait" | "fail", reason) for a queued run whose teacher is another run."""
    if run.depends_on is None:
        return "ready", ""
    if teacher is None:
        return "fail", f"teacher run {run.depends_on} no longer exists"
    if teacher.status == "done":
        return "ready", ""
    if teacher.status in ("queued", "running"):
        return "wait", f"waiting for teacher run {teacher.id}"
    why = f": {teacher.error}" if teacher.error else ""
    return "fail", (
        f"teacher run {teacher.id} ({teacher.experiment}) {teacher.status}{why}; "
        f"`kdtui resume {teacher.id}`, then `kdtui resume {run.id}`"
    )
