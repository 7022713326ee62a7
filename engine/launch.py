"""Start the processes of a run on several processes, with torchrun's own machinery. Torch-free.

The worker (`engine.daemon.processes.worker_command`: `python -m engine.worker --home
HOME RUN_DIR ...`, what the engine and `kdtui run` start) of runs whose config asks for
`nproc_per_node = N > 1` becomes their launcher: it calls `torch.distributed.run`
(torchrun) in-process with the same module and arguments (engine.core.runfolder's
WORKER_MODULE and worker_args) wrapped,

    --standalone --nnodes 1 --nproc-per-node N --max-restarts 0 -m engine.worker --home HOME RUN_DIR ...

so torchrun's agent starts N ranks of the same worker (a c10d rendezvous on a free local
port: several runs on one box never collide), watches them, and when one fails (an
exception, a SIGKILL) stops the others (SIGTERM, then SIGKILL) and raises. The launcher
then records the failure that caused it as the error of every run still running, naming
the rank: "rank 1 of 2 was killed by SIGKILL". A signal to the launcher itself (the engine
stopping it, ctrl+c of `kdtui run`) stops the ranks the same way; whoever sent it settles
the runs, as for a one-process worker.

A run across `nnodes = M > 1` nodes (the Slurm backend: one job of M nodes, one task each)
has one launcher per node, each given the rendezvous on the job's first node and its node
rank (`--rendezvous HOST:PORT --node-rank R`, `Rendezvous`); torchrun's static rendezvous
then makes one group of M x N ranks, global rank 0 on node 0. Only node 0's launcher writes
the run folders (its `launcher` event, the failure that stopped the group); a launcher on
another node prints what stopped its ranks to the job's output.

The launcher's pid is the one the runs record (the ranks record their parent's), so the
engine, `kdtui ls` and `kdtui run` watch one process per run group. Like every worker,
the launcher and its ranks write only the run folders (rank 0 alone), never the database.
This module holds the launcher's rules; `engine.worker.launch` calls torchrun with them.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from engine.core import layout, runfolder, runlog

RESTARTS = 0  # a failed rank fails the run; `kdtui resume` continues it from its checkpoint
MONITOR_S = 0.5  # how often torchrun's agent looks at its ranks


@dataclass(frozen=True)
class Rendezvous:
    """Where the launchers of a run across several nodes meet: the first node's address and a
    port there, and this launcher's node rank (0 on the first node)."""

    host: str
    port: int
    node_rank: int

    @classmethod
    def parse(cls, endpoint: str, node_rank: int) -> Rendezvous:
        """From `--rendezvous HOST:PORT --node-rank R` (ValueError: which is wrong)."""
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--rendezvous {endpoint!r}: write HOST:PORT, e.g. node17:29500")
        if node_rank < 0:
            raise ValueError(f"--node-rank {node_rank}: must be 0 or more")
        return cls(host, int(port), node_rank)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def torchrun_args(
    run_dirs: list[Path],
    home: str | os.PathLike | None,
    nproc: int,
    nnodes: int = 1,
    rendezvous: Rendezvous | None = None,
) -> list[str]:
    """torchrun's command line for one group of runs: the worker's own module and arguments
    (engine.core.runfolder.worker_args, as worker_command runs them) wrapped. One node: a
    standalone rendezvous on a free local port; several: the static rendezvous (node rank 0
    hosts torch's TCP store at `rendezvous`), one call per node."""
    if nnodes > 1:
        if rendezvous is None:
            raise ValueError(f"a run on {nnodes} nodes needs a rendezvous (HOST:PORT, node rank)")
        meet = [
            "--nnodes",
            str(nnodes),
            "--node-rank",
            str(rendezvous.node_rank),
            "--master-addr",
            rendezvous.host,
            "--master-port",
            str(rendezvous.port),
        ]
    else:
        meet = ["--standalone", "--nnodes", "1"]
    return [
        *meet,
        "--nproc-per-node",
        str(nproc),
        "--max-restarts",
        str(RESTARTS),
        "--monitor-interval",
        str(MONITOR_S),
        "--module",
        runfolder.WORKER_MODULE,
        *runfolder.worker_args(home, run_dirs),
    ]


def failure_reason(failures: dict, first: tuple, world: int) -> str:
    """The failure that brought the group down, in a line.

    failures: torchrun's ChildFailedError.failures (rank -> ProcessFailure); first: its
    "first observed failure" (rank, failure), the first by time. A rank that saw its peer
    die may report before the peer is seen dead, so the cause is, in this order: a rank
    killed by a signal other than torchrun's own SIGTERM, a rank whose error is not a
    collective's failure, torchrun's first failure."""
    ordered = sorted(failures.items())
    rank, f = next(
        (x for x in ordered if _killed(x[1])),
        next((x for x in ordered if _own_error(x[1])), first),
    )
    who = f"rank {rank} of {world}"
    if f.exitcode < 0:
        return f"{who} was killed by {f.signal_name()} (pid {f.pid}); the others were stopped"
    text = _message(f)
    return f"{who} failed (exit code {f.exitcode})" + (f": {text}" if text else "")


def _killed(f) -> bool:
    """A rank killed by a signal other than torchrun's own SIGTERM: a cause."""
    return f.exitcode < 0 and -f.exitcode != signal.SIGTERM


def _own_error(f) -> bool:
    """A rank whose error is not a collective's failure: a cause."""
    return f.exitcode > 0 and not peer_error(_message(f))


def _message(f) -> str:
    """A ProcessFailure's error, its last line."""
    m = f.message
    if isinstance(m, dict):
        m = m.get("message", "")
    lines = str(m).strip().splitlines()
    return lines[-1] if lines else ""


def elsewhere_reason(failures: dict, world: int, nnodes: int) -> str | None:
    """On node 0 of a run across nodes: when every rank here failed only because a collective
    did (or was stopped by torchrun), the cause is on another node; the line that says so (its
    launcher printed the cause to the job's output). None: the cause is here."""
    if not failures or any(_killed(f) or _own_error(f) for f in failures.values()):
        return None
    rank = min(failures)
    return (
        f"a process on another node of this run stopped (rank {rank} of {world}, on node 0 of "
        f"{nnodes}, saw its collective fail); which one and why: the `launcher:` lines of "
        f"{layout.WORKER_OUTPUT}"
    )


def peer_error(text: str) -> bool:
    """Whether an error's text is a collective that failed because another rank died or hung
    (gloo's "Connection reset by peer", an NCCL abort, a collective's timeout)."""
    return any(
        word in text for word in ("gloo", "NCCL", "ProcessGroup", "Connection reset by peer")
    )


def settle(run_dirs: list[Path], reason: str) -> None:
    """The error of every run still running: what stopped its processes (a `failed` event
    in its folder, which the store ingests)."""
    for d in run_dirs:
        if runfolder.read_state(d).get("status") != "running":
            continue  # rank 0 recorded how it ended
        run_id = runfolder.read_meta(d)["id"]
        why = f"{reason}; `kdtui resume {run_id}` continues it"
        runfolder.append_finish(d, "failed", why)
        runlog.note(d, f"failed: {why}")  # the row says it; a full disk must not hide it
