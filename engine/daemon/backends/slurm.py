"""The Slurm backend: the engine on a login node turns each run or fused group into a Slurm
job through submitit, and watches the jobs with squeue.

- One engine pass submits what it placed together: one group is one job, several are one job
  array (`--max-parallel`: how many of its tasks run at once).
- Teacher dependencies (`from_run`) stay the engine's: a student is submitted only once its
  teacher run is done (no Slurm --dependency, so a failed teacher fails its students with the
  same message as on the local backend).
- Each job runs the engine's worker arguments (engine.core.runfolder.worker_args) in submitit's own
  process (`WorkerJob`), so submitit's signal handlers see preemption and timeout: it requeues
  the job, and the restarted worker resumes every run from its last checkpoint (`--resume`).
  A worker subprocess would die of Slurm's SIGTERM before submitit's USR2 could requeue it.
- A run of several processes (`[run] nproc_per_node = N`, `nnodes = M`) is one job of M nodes
  with one task per node, N GPUs per node (`--gres`-style `gpus_per_node`; N times the CPUs
  of `--slurm-option cpus_per_task` per node on CPUs): each task is that node's launcher
  (engine.launch, torchrun), and the launchers meet at the job's first node (its Slurm
  NodeAddr, a port derived from the job id: `rendezvous_port`).
- The worker's stdout/stderr go to worker.log in the run folder (as on the local backend);
  submitit's own files go to runs/.slurm/<job id>/, on the same shared file system.
- squeue (every `--slurm-poll` seconds, default 5) gives each run its job's node and state;
  Slurm keeps finished jobs visible for MinJobAge (300 s by default), and a job squeue has
  not known for 60 s is taken as gone. Job ids are stored on the runs: a restarted engine
  adopts its jobs.
"""

from __future__ import annotations

import getpass
import importlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from engine.core import layout, runfolder
from engine.core.devices import HOST_DEVICES, cuda_index
from engine.core.store import Run
from engine.daemon.backends.base import Launch
from engine.daemon.options import Options, slurm_options, time_minutes
from engine.daemon.processes import source_root
from engine.daemon.scheduling import Slot

log = logging.getLogger("kdtui.engine")

# Slurm job states in which a job may still train (everything else is an end)
ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
}
# submitit's own parameters, not sbatch options (`--slurm-option` passes them to submitit)
SUBMITIT_ONLY = {"signal_delay_s", "stderr_to_stdout", "use_srun", "wckey", "array_parallelism"}
# placement options the run's own config decides ([run] nnodes and nproc_per_node)
RUN_DECIDES = {"nodes", "ntasks", "ntasks_per_node", "tasks_per_node", "gpus_per_task"}
RENDEZVOUS_PORTS = (29500, 20000)  # a multi-node job's port: 29500 + job id mod 20000
GONE_AFTER_S = 60.0  # unknown to squeue this long (after submission): the job is gone
MAX_TIMEOUT_REQUEUES = 100  # submitit's count of time-limit requeues (preemptions are free)


class WorkerJob(submitit.helpers.Checkpointable):
    """What a Slurm job runs: the worker's main with `runfolder.worker_args` (the local
    backend's command line) in this (submitit's) process; it only touches run folders.

    Checkpointable: on preemption or timeout submitit requeues the same call; the worker has
    its checkpoints on disk, so a restarted job (SLURM_RESTART_COUNT > 0) resumes its runs.
    """

    def __init__(self, home: str, run_dirs: list[str], output: str, nproc: int = 1):
        self.home = home
        self.run_dirs = list(run_dirs)
        self.output = output
        self.nproc = nproc

    def __call__(self) -> int:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        env = submitit.JobEnvironment()
        meet: dict[str, Any] = {}
        if env.num_nodes > 1:  # this task is one node's launcher; they meet on the first
            host = node_address(env.hostnames[0])
            port = rendezvous_port(os.environ["SLURM_JOB_ID"])  # an array task's own id
            meet = dict(rendezvous=f"{host}:{port}", node_rank=env.node)
        argv = runfolder.worker_args(self.home, self.run_dirs, resume=restarts > 0, **meet)
        fd = os.open(self.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)  # the worker's output, and submitit's notes about signals, in the
        os.dup2(fd, 2)  # run folder's worker.log
        os.close(fd)
        job = os.environ.get("SLURM_JOB_ID", "?")
        node = f" (node rank {env.node} of {env.num_nodes})" if meet else ""
        task = os.environ.get("SLURM_ARRAY_JOB_ID")
        if task:
            job = f"{task}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
        print(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} slurm job {job} on "
            f"{os.environ.get('SLURMD_NODENAME', '?')}{node}"
            + (f" (restart {restarts}: resuming)" if restarts else "")
            + f": engine.worker {' '.join(argv)}",
            flush=True,
        )
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.nproc)  # this node's share
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpus // self.nproc)))
        worker = importlib.import_module(runfolder.WORKER_MODULE)  # torch: on the compute node only
        return worker.main(argv)


def rendezvous_port(job_id: str) -> int:
    """The port on a job's first node where its launchers meet: derived from the job id, so
    every node knows it without talking, and two jobs sharing a first node differ (unless
    their ids differ by a multiple of 20000). `job_id`: SLURM_JOB_ID, unique per array task."""
    base, span = RENDEZVOUS_PORTS
    return base + int(job_id) % span


def node_address(node: str) -> str:
    """How the other nodes reach `node`: its NodeAddr in Slurm (what slurmd itself is reached
    at), else the node name."""
    try:
        done = subprocess.run(
            ["scontrol", "show", "node", node, "--oneliner"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return node
    for field in done.stdout.split():
        if field.startswith("NodeAddr="):
            return field.partition("=")[2] or node
    return node


@dataclass
class SlurmJob:
    """A submitted group as the engine tracks it, from squeue."""

    job_id: str
    run_ids: list[int]
    slots: tuple[Slot, ...]
    started: float
    output: Path | None = None
    state: str = "PENDING"
    reason: str = ""
    node: str = ""
    seen: float | None = None  # the last time squeue listed it
    cancel_seen: float | None = None
    cancel_sent: bool = False
    adopted: bool = False
    folder: Path | None = None  # submitit's files of the job (its own stdout/stderr)
    pid = None  # its worker's pid is on a compute node: Slurm signals it, never the engine

    @property
    def key(self) -> str:
        return self.job_id

    def exit_code(self) -> int | None:
        if self.state in ACTIVE:
            return None
        return 0 if self.state == "COMPLETED" else 1

    def exit_text(self, code: int) -> str:
        text = f"Slurm job {self.job_id} {self.state}"
        if self.reason and self.reason != "None":
            text += f" ({self.reason})"
        if code and self.folder is not None:
            text += f"; submitit's logs: {self.folder}"
        return text

    def shown_state(self) -> str:
        if self.state == "PENDING" and self.reason and self.reason != "None":
            return f"PENDING ({self.reason})"
        return self.state

    def describe(self) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "state": self.shown_state(),
            "node": self.node or None,
            "adopted": self.adopted,
        }


class Backend:
    name = "slurm"

    def __init__(self, options: Options, home: Path):
        missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
        if missing:
            raise ValueError(
                f"--backend slurm: {', '.join(missing)} not found on this machine; start the "
                "engine on the cluster's login node (where sbatch works), or install Slurm's "
                "client commands and its configuration here"
            )
        self.options = options
        self.home = Path(home)
        self.minutes = time_minutes(options.time)
        self.extra = slurm_options(options.slurm_option)
        decided = sorted(RUN_DECIDES & set(self.extra))
        if decided:
            raise ValueError(
                f"--slurm-option {decided[0]}: each run's config decides its nodes and tasks "
                "([run] nnodes, one task per node, nproc_per_node GPUs per node); drop it"
            )
        gpu = "slurm" if options.gpus_per_job else None
        self.slots = [Slot(0, gpu, "slurm")]  # the kind of slot its jobs have; not listed
        self.fixed_slots = False
        self.process_slots = False  # a run of several processes is one job
        self._next_poll = 0.0
        self._poll_failing = False
        self._user = getpass.getuser()

    def preflight(self) -> None:
        """Ask Slurm whether it would take such a job (`sbatch --test-only`, nothing is
        submitted): a bad partition, account or option is an error at `kdtui engine start`."""
        args = [f"--time={self.minutes}", "--output=/dev/null", "--job-name=kdtui"]
        if self.options.partition:
            args.append(f"--partition={self.options.partition}")
        if self.options.account:
            args.append(f"--account={self.options.account}")
        if self.options.gpus_per_job:
            args.append(f"--gpus-per-node={self.options.gpus_per_job}")
        for key, value in self.extra.items():
            if key not in SUBMITIT_ONLY:
                args.append(f"--{key.replace('_', '-')}={value}")
        try:
            done = subprocess.run(
                ["sbatch", "--test-only", *args, "--wrap=true"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ValueError(f"--backend slurm: sbatch --test-only did not answer: {e}") from None
        if done.returncode:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            why = lines[0] if lines else f"exit status {done.returncode}"
            raise ValueError(
                f"--backend slurm: Slurm would refuse these jobs ({why}); check --partition, "
                "--account, --time and --slurm-option"
            )

    # ------------------------------------------------------------ submitting
    def unplaceable(self, device: str, nproc: int, nnodes: int = 1) -> str | None:
        """Any run fits a job (a run of N processes per node asks for N GPUs per node); only a
        GPU the jobs will not have is refused."""
        device = (device or "auto").strip()
        if device in HOST_DEVICES or device == "auto":
            return None  # auto: on the GPUs a job asks for, else on its CPUs
        gpus = self.options.gpus_per_job
        index = cuda_index(device)
        if gpus and (index is None or int(index) < gpus):
            return None
        if not gpus:
            return (
                f"run.device = {device!r} but this engine's Slurm jobs ask for no GPU; restart "
                'it with --gpus-per-job N, or set [run] device = "auto" or "cpu"'
            )
        return (
            f"run.device = {device!r} but each Slurm job has {gpus} GPU(s), numbered from 0; "
            'set [run] device = "cuda" or restart the engine with a larger --gpus-per-job'
        )

    def free_slots(self, busy: set[Slot], wanted: int) -> list[Slot]:
        """Slurm queues: as many slots as there are groups to place; with --gpus-per-job, GPU
        ones and, for runs with device = "cpu", as many CPU ones. A started job's slot is named
        after it (`slurm:123_0`)."""
        kinds = ["slurm", None] if self.options.gpus_per_job else [None]
        return [
            Slot(len(kinds) * i + k, gpu, "slurm")
            for i in range(wanted)
            for k, gpu in enumerate(kinds)
        ]

    def folder(self, job_id: str) -> Path:
        return self.home / layout.RUNS / layout.SLURM_JOBS / job_id

    def executor(
        self, count: int, gpus: bool, nproc: int = 1, nnodes: int = 1
    ) -> submitit.SlurmExecutor:
        """An executor for `count` jobs of this shape: GPU or CPU, `nproc` processes on each of
        `nnodes` nodes (one task per node: its launcher)."""
        ex = submitit.SlurmExecutor(folder=self.folder("%j"), max_num_timeout=MAX_TIMEOUT_REQUEUES)
        known = ex._valid_parameters()
        params: dict[str, Any] = {"time": self.minutes, "job_name": "kdtui"}
        if self.options.partition:
            params["partition"] = self.options.partition
        if self.options.account:
            params["account"] = self.options.account
        if nnodes > 1 or nproc > 1:
            params["nodes"] = nnodes
            params["ntasks_per_node"] = 1
        if gpus:
            params["gpus_per_node"] = nproc if nproc > 1 else self.options.gpus_per_job
        if count > 1:
            params["array_parallelism"] = self.options.max_parallel or count
        additional: dict[str, Any] = {}
        for key, value in self.extra.items():
            parsed: Any = int(value) if value.isdigit() else value
            if key in known and key not in ("additional_parameters", "setup", "srun_args"):
                params[key] = parsed
            else:
                additional[key] = parsed
        if nproc > 1:  # --slurm-option cpus_per_task is per process: the node's launcher's N
            per = params.get("cpus_per_task")
            params["cpus_per_task"] = nproc * (per if isinstance(per, int) else 1)
        if additional:
            params["additional_parameters"] = additional
        ex.update_parameters(**params)
        return ex

    def start(self, launches: list[Launch]) -> list[SlurmJob | Exception]:
        """Groups of one shape (GPU or CPU, processes per node, nodes) go out as one job
        (array)."""
        shapes: dict[tuple[bool, int, int], list[int]] = {}
        for i, x in enumerate(launches):
            shapes.setdefault((x.slots[0].gpu is not None, x.nproc, x.nnodes), []).append(i)
        out: dict[int, SlurmJob | Exception] = {}
        for shape, indices in sorted(shapes.items(), reverse=True):
            started = self._submit([launches[i] for i in indices], *shape)
            out.update(zip(indices, started))
        return [out[i] for i in range(len(launches))]

    def _submit(
        self, launches: list[Launch], gpus: bool, nproc: int = 1, nnodes: int = 1
    ) -> list[SlurmJob | Exception]:
        # the jobs inherit this environment (sbatch exports it): the same engine code
        path = os.environ.get("PYTHONPATH", "")
        root = source_root()
        if root not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
        os.environ["PYTHONUNBUFFERED"] = "1"
        try:
            ex = self.executor(len(launches), gpus, nproc, nnodes)
            calls = [
                WorkerJob(
                    str(self.home), [str(r.path) for r in launch.runs], str(launch.output), nproc
                )
                for launch in launches
            ]
            if len(calls) == 1:
                jobs = [ex.submit(calls[0])]
            else:
                with ex.batch():
                    jobs = [ex.submit(call) for call in calls]
        except Exception as e:  # sbatch refused (bad partition, account, option): say why
            error = RuntimeError(_one_line(e))
            return [error for _ in launches]
        now = time.time()
        handles = []
        for launch, job in zip(launches, jobs):
            ids = [r.id for r in launch.runs]
            job_id = str(job.job_id)
            slot = Slot(launch.slots[0].index, launch.slots[0].gpu, f"slurm:{job_id}")
            handles.append(
                SlurmJob(job_id, ids, (slot,), now, launch.output, folder=self.folder(job_id))
            )
        self._next_poll = 0.0  # show the new jobs' state at once
        return handles

    def row_values(self, handle: SlurmJob) -> dict[str, Any]:
        # the GPU column is the slot's CUDA_VISIBLE_DEVICES on the local backend; Slurm picks
        return {
            "job_id": handle.job_id,
            "job_state": handle.shown_state(),
            "job_node": None,
            "gpu": None,
        }

    # ------------------------------------------------------------ watching
    def squeue(self) -> dict[str, tuple[str, str, str]] | None:
        """Job id -> (state, reason, node) for this user's jobs, finished ones included."""
        cmd = [
            "squeue",
            "--noheader",
            "--array",
            "--states=all",
            f"--user={self._user}",
            "--format=%i|%T|%r|%N",
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            done = subprocess.CompletedProcess(cmd, 1, "", str(e))
        if done.returncode:
            if not self._poll_failing:
                log.warning("squeue failed (jobs keep their last state): %s", done.stderr.strip())
            self._poll_failing = True
            return None
        if self._poll_failing:
            log.info("squeue answers again")
        self._poll_failing = False
        out = {}
        for line in done.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                out[parts[0]] = (parts[1], parts[2], parts[3])
        return out

    def poll(self, handles: list[SlurmJob]) -> dict[int, dict[str, Any]]:
        now = time.monotonic()
        if not handles or now < self._next_poll:
            return {}
        self._next_poll = now + self.options.slurm_poll
        queue = self.squeue()
        if queue is None:
            return {}
        changed: dict[int, dict[str, Any]] = {}
        wall = time.time()
        for h in handles:
            before = (h.shown_state(), h.node)
            if h.job_id in queue:
                h.state, h.reason, h.node = queue[h.job_id]
                h.seen = wall
            elif wall - (h.seen or h.started) > GONE_AFTER_S:
                h.state, h.reason = "GONE", "no longer known to squeue"
            if (h.shown_state(), h.node) != before:
                log.info("Slurm job %s (runs %s): %s", h.job_id, h.run_ids, h.shown_state())
                for rid in h.run_ids:
                    changed[rid] = {"job_state": h.shown_state(), "job_node": h.node or None}
        return changed

    def cancel(self, h: SlurmJob, now: float, grace: float, *, ended: bool) -> None:
        """scancel at once when its runs were cancelled (a pending job leaves the queue, a
        running one is killed); a job whose runs all ended gets the grace period to exit."""
        if h.cancel_sent:
            return
        if h.cancel_seen is None:
            h.cancel_seen = now
        if ended and now - h.cancel_seen <= grace:
            return
        error = scancel([h.job_id])
        if error:
            log.warning("scancel %s failed: %s", h.job_id, error)
            return
        h.cancel_sent = True
        self._next_poll = 0.0
        log.info("Slurm job %s (runs %s) cancelled: scancel", h.job_id, h.run_ids)

    def adopt(self, runs: list[Run]) -> list[SlurmJob]:
        """The jobs recorded on running runs: watched again (squeue tells if they are over)."""
        jobs: dict[str, SlurmJob] = {}
        for run in runs:
            if not run.job_id:
                continue
            if run.job_id not in jobs:
                jobs[run.job_id] = SlurmJob(
                    run.job_id,
                    [],
                    (Slot(len(jobs), self.slots[0].gpu, f"slurm:{run.job_id}"),),
                    time.time(),
                    run.path / layout.WORKER_OUTPUT,
                    state=(run.job_state or "PENDING").split(" ")[0],
                    node=run.job_node or "",
                    adopted=True,
                    folder=self.folder(run.job_id),
                )
            jobs[run.job_id].run_ids.append(run.id)
        self._next_poll = 0.0
        return list(jobs.values())


def scancel(job_ids: list[str]) -> str | None:
    """Cancel these jobs (pending ones leave the queue, running ones are killed); the error."""
    try:
        done = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return done.stderr.strip() or f"exit status {done.returncode}" if done.returncode else None


def scancel_and_wait(job_ids: list[str], timeout: float) -> None:
    """scancel, then wait (at most `timeout` s) until squeue no longer lists them running: their
    workers are gone before their runs are touched."""
    scancel(job_ids)
    wanted = set(job_ids)

    def gone() -> bool:
        try:
            done = subprocess.run(
                ["squeue", "--noheader", "--array", "--format=%i"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return True  # nothing more to learn
        return done.returncode != 0 or not wanted & set(done.stdout.split())

    deadline = time.monotonic() + timeout
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.2)


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
