"""Test-only crash points: `KDTUI_FAULT=POINT@EPOCH` makes the process SIGKILL itself there;
`KDTUI_HOLD=POINT@EPOCH:PATH` makes it wait there while PATH exists (so a test can requeue or
cancel a Slurm job at a known point of a run, then let a restarted worker through).

The fault-injection tests name each point of an epoch's commit (checkpoint
written, metrics committed, ...) and check that a resume afterwards records
every epoch exactly once. Unset (always, outside those tests) this costs
one dictionary lookup per point.

Points, in the order an epoch commits (EPOCH counts finished epochs, from 1):
  step          a training step's metrics are appended to metrics.jsonl (mid-epoch)
  best          best.pth written (only in an epoch that improved)
  prev          prev.pth linked to the old last.pth, the new one not yet in place
  checkpoint    last.pth replaced
  metrics-open  the epoch's metrics appended and fsynced, its `epoch` event (the run row's
                values) not yet
  metrics       the `epoch` event appended too
  log           the epoch's line appended to log.txt

On a run of several processes every rank reaches `step` (and rank 0 the others);
`KDTUI_FAULT_RANK=R` arms the fault in rank R alone (torchrun's RANK), so one rank dies.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "KDTUI_FAULT"
RANK_ENV = "KDTUI_FAULT_RANK"
HOLD_ENV = "KDTUI_HOLD"
POINTS = ("step", "best", "prev", "checkpoint", "metrics-open", "metrics", "log")


def point(name: str, epoch: int) -> None:
    spec = os.environ.get(ENV)
    if spec and spec == f"{name}@{epoch}":
        rank = os.environ.get(RANK_ENV)
        if rank is None or rank == os.environ.get("RANK", "0"):
            os.kill(os.getpid(), signal.SIGKILL)
    hold = os.environ.get(HOLD_ENV)
    if hold:
        where, _, path = hold.partition(":")
        while where == f"{name}@{epoch}" and os.path.exists(path):
            time.sleep(0.1)
