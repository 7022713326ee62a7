"""Engine backends without a cluster: the registry, the Slurm options and their errors, how a
run with a Slurm job reads. The Slurm backend at work is tests/test_slurm_backend.py."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.core import liveness, reading
from engine.core.store import Store
from engine.daemon import backends
from engine.daemon.backends.slurm import SlurmJob
from engine.daemon.options import Options, add_arguments, from_namespace, time_minutes
from tests.test_engine import ROOT, tiny


def kdtui(*args: str, home) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdtui.cli", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_local_stays_the_default_backend_and_a_new_one_is_one_line_in_the_registry():
    assert Options().backend == "local"
    assert backends.NAMES == ("local", "slurm")
    backend = backends.create(Options(gpus="none", cpu_slots=2), "/nonexistent")
    assert backend.name == "local"
    assert [s.name for s in backend.slots] == ["cpu0", "cpu1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "slurmm"], "--backend slurmm: unknown backend; use one of local, slurm"),
        (["--backend", "slurm", "--time", "90"], "--time 90: not a time limit; write [D-]HH:MM:SS"),
        (["--backend", "slurm", "--time", "1:75:00"], "--time 1:75:00: not a time limit"),
        (["--backend", "slurm", "--slurm-option", "qos"], "--slurm-option qos: write KEY=VALUE"),
        (
            ["--backend", "slurm", "--slurm-option", "nodes=2"],
            "--slurm-option nodes: each run's config decides its nodes and tasks ([run] nnodes",
        ),
    ],
)
def test_bad_engine_options_are_one_clear_error_and_nothing_is_saved(tmp_path, args, message):
    out = kdtui("engine", "start", *args, home=tmp_path / "home")

    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "home" / "engine-options.json").exists()


def test_slurm_options_survive_the_engine_command_line_it_is_started_with():
    options = Options(
        backend="slurm",
        partition="gpu",
        account="lab",
        time="2-00:00:00",
        gpus_per_job=1,
        max_parallel=4,
        slurm_option=["cpus_per_task=8", "qos=high"],
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    assert from_namespace(parser.parse_args(options.argv())) == options


def test_time_limits_become_whole_minutes_for_sbatch():
    assert time_minutes("24:00:00") == 1440
    assert time_minutes("2-00:00:30") == 2 * 1440 + 1  # rounded up: never shorter than asked
    assert time_minutes(None) == 1440  # the default


def test_a_job_may_train_until_slurm_says_it_ended():
    job = SlurmJob("7_1", [3], (), 0.0)
    for state in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED"):
        job.state = state
        assert job.exit_code() is None, state
    job.state = "COMPLETED"
    assert job.exit_code() == 0
    job.state, job.reason = "TIMEOUT", "None"
    assert job.exit_code() == 1 and job.exit_text(1) == "Slurm job 7_1 TIMEOUT"
    job.folder = Path("runs/.slurm/7_1")
    assert job.exit_text(1) == "Slurm job 7_1 TIMEOUT; submitit's logs: runs/.slurm/7_1"
    job.state, job.reason = "PENDING", "Priority"
    assert job.shown_state() == "PENDING (Priority)"


def test_a_run_whose_job_waits_in_slurm_shows_queued_and_is_never_dead(tmp_path):
    store = Store(tmp_path / "home")
    (run,) = store.submit(reading.loads(tiny("q")))
    store.claim(run.id)
    store.update(run.id, job_id="41_0", job_state="PENDING (Resources)", pid=None)
    run = store.run(run.id)
    run.heartbeat = run.created = run.started = 0.0  # long ago: a bare claim would be dead

    assert liveness.shown_status(run) == "queued"
    assert liveness.job_text(run) == "41_0 PENDING (Resources)"
    store.update(run.id, job_state="RUNNING", job_node="node7")
    run = store.run(run.id)
    assert liveness.shown_status(run) == "running"
    assert liveness.job_text(run) == "41_0 node7 RUNNING"


def test_slurm_jobs_take_runs_by_device_and_refuse_a_gpu_they_will_not_have(tmp_path):
    from engine.daemon.scheduling import place

    cpu_only = backends.create(Options(backend="slurm"), tmp_path)
    assert cpu_only.unplaceable("auto", 1) is None and cpu_only.unplaceable("cpu", 1) is None
    assert "restart it with --gpus-per-job N" in cpu_only.unplaceable("cuda", 1)
    gpus = backends.create(Options(backend="slurm", gpus_per_job=2), tmp_path)
    assert gpus.unplaceable("cuda:1", 1) is None
    assert "each Slurm job has 2 GPU(s)" in gpus.unplaceable("cuda:2", 1)
    assert gpus.unplaceable("cuda", 4, 2) is None  # a job of 2 nodes, 4 GPUs each
    assert cpu_only.unplaceable("cpu", 2, 2) is None

    free = gpus.free_slots(set(), 2)
    runs = [SimpleNamespace(id=i, priority=0, fuse_key=None, resume=0) for i in (1, 2)]
    placed = place(runs, free, {1: "auto", 2: "cpu"}, gpu_slots_exist=True)
    assert [(slots[0].gpu is not None, ids) for slots, ids in placed] == [(True, [1]), (False, [2])]


def test_a_run_of_several_processes_asks_slurm_for_its_nodes_gpus_and_cpus(tmp_path):
    options = Options(backend="slurm", gpus_per_job=1, slurm_option=["cpus_per_task=8"])
    backend = backends.create(options, tmp_path)

    one = backend.executor(1, gpus=True).parameters
    assert (one["gpus_per_node"], one["cpus_per_task"]) == (1, 8)
    assert "nodes" not in one and "ntasks_per_node" not in one  # submitit's defaults: 1 and 1
    # 4 processes on each of 2 nodes: one task per node (its launcher), a GPU per process, and
    # --slurm-option cpus_per_task counts per process
    wide = backend.executor(1, gpus=True, nproc=4, nnodes=2).parameters
    assert (wide["nodes"], wide["ntasks_per_node"]) == (2, 1)
    assert (wide["gpus_per_node"], wide["cpus_per_task"]) == (4, 32)
    cpus = backend.executor(3, gpus=False, nproc=2).parameters
    assert (cpus["nodes"], cpus["cpus_per_task"], cpus["array_parallelism"]) == (1, 16, 3)
    assert "gpus_per_node" not in cpus


def test_the_local_engine_refuses_a_run_across_nodes_with_the_fix(tmp_path):
    local = backends.create(Options(gpus="none", cpu_slots=2), tmp_path)
    why = local.unplaceable("cpu", 1, 2)
    assert "[run] nnodes = 2: a run across several nodes needs the Slurm backend" in why
    assert "kdtui engine start --backend slurm" in why
    assert local.unplaceable("cpu", 2, 1) is None


def test_the_launchers_of_a_run_across_nodes_meet_at_the_first_node():
    from engine import launch
    from engine.daemon.backends.slurm import rendezvous_port

    meet = launch.Rendezvous.parse("10.0.0.7:29517", 1)
    argv = launch.torchrun_args([Path("/s/runs/7-a")], None, 4, 2, meet)
    assert "--standalone" not in argv
    for flag, value in [("--nnodes", "2"), ("--node-rank", "1"), ("--nproc-per-node", "4")]:
        assert argv[argv.index(flag) + 1] == value
    assert argv[argv.index("--master-addr") + 1 : argv.index("--master-port") + 2] == [
        "10.0.0.7",
        "--master-port",
        "29517",
    ]
    with pytest.raises(ValueError, match="needs a rendezvous"):
        launch.torchrun_args([Path("/s/runs/7-a")], None, 4, 2)
    for bad in ("node17", ":29500", "node17:port", "node17:70000"):
        with pytest.raises(ValueError, match="write HOST:PORT"):
            launch.Rendezvous.parse(bad, 0)
    # the port: the same on every node of a job, different for the next job, in range
    assert rendezvous_port("123") == rendezvous_port("123") != rendezvous_port("124")
    assert all(29500 <= rendezvous_port(str(j)) < 49500 for j in (0, 19999, 20000, 987654))
