"""What the engine asks of a backend, and what it gets back for each run or fused group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.core.store import Run
from engine.daemon.scheduling import Slot


@dataclass
class Launch:
    """One placed group: its slots (one, or one per process of a run of several), its claimed
    runs (one, or a fused group) and the worker's command line arguments
    (`engine.core.runfolder.worker_args`: the same for every
    backend)."""

    slots: tuple[Slot, ...]
    runs: list[Run]
    argv: list[str]
    nproc: int = 1  # `[run] nproc_per_node`: processes per node (a Slurm job asks for them)
    nnodes: int = 1  # `[run] nnodes`: nodes (only a backend that places several takes > 1)

    @property
    def output(self) -> Path:
        """Where the worker's stdout/stderr go: worker.log of the group's first run."""
        from engine.core import layout

        return self.runs[0].path / layout.WORKER_OUTPUT


class Handle(Protocol):
    """A started group as the engine tracks it (a worker process, a Slurm job)."""

    key: Any  # unique among the engine's handles: a pid, a job id
    pid: int | None  # a process of this machine the engine may signal; None: a remote job
    adopted: bool  # taken over from an earlier engine
    run_ids: list[int]
    slots: tuple[Slot, ...]  # empty: adopted, and no free slot matched
    started: float
    output: Path | None
    cancel_seen: float | None

    def exit_code(self) -> int | None:
        """None while it may still train; once over, 0 for a clean end, else non-zero."""

    def exit_text(self, code: int) -> str:
        """How it ended, for a run's error ("exited with code 1", "Slurm job 12 FAILED")."""

    def describe(self) -> dict[str, Any]:
        """Its entry in engine.json's "workers"."""


class Backend(Protocol):
    name: str
    slots: list[Slot]  # every slot there is (a Slurm backend: one template per kind)
    fixed_slots: bool  # engine status lists `slots`, idle ones too (else: each handle's slot)
    process_slots: bool  # a run of N processes takes N slots (local); else one (a Slurm job)

    def preflight(self) -> None:
        """Check with the real scheduler that it takes such jobs (ValueError: why, the fix);
        `kdtui engine start` calls it once, before the options are saved."""

    def unplaceable(self, device: str, nproc: int, nnodes: int = 1) -> str | None:
        """Why this backend can never train a run with `[run] device = device` on `nproc`
        processes per node and `nnodes` nodes (None: it can)."""

    def free_slots(self, busy: set[Slot], wanted: int) -> list[Slot]:
        """Slots a placement may use now, `wanted` of them at most where capacity is unbounded."""

    def start(self, launches: list[Launch]) -> list[Handle | Exception]:
        """Start each launch (all of one engine pass together: a Slurm job array); the handle,
        or the error that kept it from starting, in the same order."""

    def row_values(self, handle: Handle) -> dict[str, Any]:
        """Columns to record on each run of a started handle (its pid, its job id)."""

    def poll(self, handles: list[Handle]) -> dict[int, dict[str, Any]]:
        """Refresh the handles' states; run id -> changed columns to record (node, state)."""

    def cancel(self, handle: Handle, now: float, grace: float, *, ended: bool) -> None:
        """Stop a handle whose runs were all cancelled, or all `ended` while it still runs
        (called every pass until it is over; `grace`: --cancel-grace)."""

    def adopt(self, runs: list[Run]) -> list[Handle]:
        """After an engine restart: handles for running runs this backend still trains."""
