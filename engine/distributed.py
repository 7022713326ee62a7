"""One run on several processes: torch.distributed as the training loop uses it.

A run with `[run] nproc_per_node = N > 1` is started by `engine.worker` under
torchrun (`engine.launch`); each of the N processes is a *rank* and runs the same
loop on its own shard of every epoch (`engine.data.shard_positions`). This module is
the little the loop needs on top of torch.distributed: which rank this process is
(`Group`, from torchrun's environment), the process group (gloo on CPUs, NCCL on CUDA,
with a timeout on every collective so a dead peer fails the run instead of hanging
it), and a few reductions: sums of counters across ranks, one decision taken by rank
0 (cancel) broadcast to all, buffers made equal before evaluation, and a gather of
the rows a method keeps per training sample (CRD's memory banks).

Rank 0 alone writes the run folder, the logs and the checkpoints; every rank computes,
and every rank takes the same decisions from the same reduced numbers, so no rank
waits in a collective that the others skipped.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT_ENV = "KDTUI_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
TIMEOUT_S = 600.0  # rank 0 writes checkpoints while the others wait at the next collective


@dataclass(frozen=True)
class Group:
    """This process's place in a run's process group (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder, logs and checkpoints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


SINGLE = Group()


def from_env(env: dict[str, str] | None = None) -> Group | None:
    """The group torchrun started this process in (RANK, WORLD_SIZE, LOCAL_RANK), or None."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env or "RANK" not in env:
        return None
    return Group(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))


def timeout() -> datetime.timedelta:
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, TIMEOUT_S))
    except ValueError:
        seconds = TIMEOUT_S
    return datetime.timedelta(seconds=max(seconds, 1.0))


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(group: Group, device: torch.device) -> None:
    """Join the process group (torchrun's rendezvous is in MASTER_ADDR/MASTER_PORT).

    NCCL reports a collective that times out or a peer that died as an error (async error
    handling, torch's default), gloo as a failed send or receive; either way the rank
    raises instead of waiting forever, and torchrun tears the others down.
    """
    if not group.parallel or dist.is_initialized():
        return
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(
        backend(device), rank=group.rank, world_size=group.world, timeout=timeout(), **kwargs
    )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def die_with_parent() -> None:
    """SIGTERM this rank if torchrun's agent (its parent) dies, even by SIGKILL (Linux):
    an orphaned rank would train on and write a run that its launcher has given up."""
    if not hasattr(os, "getppid"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _on(group: Group) -> bool:
    return group.parallel and dist.is_initialized()


def all_sum(group: Group, values: torch.Tensor) -> torch.Tensor:
    """`values` summed over the ranks (in place; every rank gets the sum)."""
    if _on(group):
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def sum_numbers(group: Group, numbers: list[float], device: torch.device) -> list[float]:
    """Python numbers summed over the ranks, in float64 (exact for counts below 2^53)."""
    if not _on(group):
        return list(numbers)
    t = torch.tensor(numbers, dtype=torch.float64, device=device)
    return all_sum(group, t).tolist()


def mean_dict(group: Group, values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Per-rank means (a log window's losses) averaged over the ranks, key by key.

    Every rank gets the same numbers, so every rank sees the same NaN and stops together."""
    if not _on(group):
        return values
    keys = list(values)
    sums = sum_numbers(group, [values[k] for k in keys], device)
    return {k: v / group.world for k, v in zip(keys, sums)}


def decide(group: Group, flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (a cancel read from the run folder), the same on every rank."""
    if not _on(group):
        return flag
    t = torch.tensor([1.0 if (flag and group.main) else 0.0], device=device)
    return bool(all_sum(group, t).item() > 0)


def broadcast_object(group: Group, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (small picklable values: a checkpoint path, an error)."""
    if not _on(group):
        return obj
    box = [obj if group.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def sync_buffers(group: Group, module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP averages gradients, so parameters agree; running statistics are updated from each
    rank's own shard. Before evaluating (every rank scores its shard of the test set with
    the model rank 0 checkpoints) they are made equal.
    """
    if not _on(group):
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def all_gather_rows(group: Group, t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `t`, concatenated in rank order (same shape on every rank)."""
    if not _on(group):
        return t
    parts = [torch.empty_like(t) for _ in range(group.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def current() -> Group:
    """The group of the initialised process group (SINGLE when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return SINGLE


def peer_failure(e: BaseException) -> bool:
    """Whether `e` is a collective that failed because another rank died or hung: the
    launcher then names that rank as the cause (engine.launch.failure_reason)."""
    from engine.launch import peer_error

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and peer_error(str(e))
