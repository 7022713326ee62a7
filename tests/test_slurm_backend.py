"""The Slurm backend end to end, on the local one-node cluster (tests/slurm/cluster.sh).

A real engine (`kdtui engine start --backend slurm`) submits real jobs through submitit; the
jobs train tiny digits runs and write their run folders (never the database), which the engine
ingests; the tests read what a user would: the store's
rows and metrics, `kdtui ls`, the leaderboard, Slurm's own view of the job (scontrol). Runs are
held at a known step by `KDTUI_HOLD` (engine.core.faults) while a hold file exists, so a requeue
or a cancel hits a run mid-epoch, never a race.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from engine.core import layout
from engine.daemon import client
from tests.test_engine import ROOT, Box, tiny
from tests.test_runfolders import dump

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

POLL = "1"  # seconds between the engine's squeue calls (5 by default)


def job_field(slurm, job_id: str, field: str) -> str:
    """One field of `scontrol show job` (finished jobs stay there for MinJobAge = 5 min)."""
    text = slurm.run("scontrol", "show", "job", job_id)
    return re.search(rf"\b{field}=(\S*)", text).group(1)


def in_queue(slurm, job_id: str) -> bool:
    listed = slurm.run("squeue", "--noheader", "--array", "--format=%i", check=False).split()
    return job_id in listed


def slurm_box(cluster, tmp_path, monkeypatch):
    """A store whose engine submits to `cluster`; stopped, with its jobs, afterwards."""
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    box = Box(tmp_path)
    monkeypatch.setenv("KDTUI_HOME", str(box.home))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    yield box
    box.cli("engine", "stop", check=False)
    cluster.run("scancel", "--user=root", check=False)
    box.store.close()


@pytest.fixture
def box(slurm, tmp_path, monkeypatch):
    """A store whose engine submits to the local one-node cluster."""
    yield from slurm_box(slurm, tmp_path, monkeypatch)


def held_in_second_epoch(box: Box, run_id: int) -> bool:
    return any(m.epoch == 1 for m in box.store.metrics(run_id, names=["train/lr"]))


def start_engine(box: Box, *more: str, **env: str) -> None:
    """`kdtui engine start --backend slurm`, with `env` added to its (and its jobs') environment."""
    out = box.cli(
        "engine",
        "start",
        "--backend",
        "slurm",
        "--slurm-poll",
        POLL,
        *more,
        env={**os.environ, **env},
    )
    assert "runs go to Slurm" in out.stdout


def test_a_two_point_sweep_is_one_job_array_and_both_runs_land_on_the_leaderboard(box, slurm):
    start_engine(box, "--max-parallel", "2", "--time", "00:20:00")
    exp = box.write("sweep.toml", tiny("sweep", lr="[0.05, 0.1]", epochs=2, steps=2))

    box.cli("submit", exp)

    a, b = box.store.runs()
    for run in (a, b):
        box.wait_status(run.id, "done", "failed", "cancelled", timeout=240)
        box.wait(lambda r=run: box.run(r.id).job_state == "COMPLETED", "the job to end", 60)
    a, b = box.store.runs()
    assert (a.status, b.status) == ("done", "done"), (a.error, b.error)
    array = a.job_id.split("_")[0]
    assert {a.job_id, b.job_id} == {f"{array}_0", f"{array}_1"}  # one array, two tasks
    assert job_field(slurm, array, "ArrayTaskThrottle") == "2"
    assert job_field(slurm, a.job_id, "TimeLimit") == "00:20:00"
    for run in (a, b):
        assert job_field(slurm, run.job_id, "JobState") == "COMPLETED"
        assert [m.epoch for m in box.store.metrics(run.id, names=["test/top1"])] == [0, 1]
        assert run.job_node and run.job_state == "COMPLETED"
        # the job's output went to the run folder
        output = (run.path / layout.WORKER_OUTPUT).read_text()
        assert f"slurm job {run.job_id} on {run.job_node}" in output
    listing = box.cli("ls", env={**os.environ, "COLUMNS": "250"}).stdout
    assert "slurm job" in listing and a.job_id in listing and b.job_id in listing
    listed = json.loads(box.cli("ls", "--json").stdout)["runs"]
    assert {(r["slurm_job"], r["slurm_state"]) for r in listed} == {
        (a.job_id, "COMPLETED"),
        (b.job_id, "COMPLETED"),
    }
    board = json.loads(box.cli("leaderboard", "--json").stdout)
    assert sorted(row["run_ids"][0] for row in board["rows"]) == [a.id, b.id]
    assert all(row["best_top1_mean"] is not None for row in board["rows"])
    first_metric = min(m.time for m in box.store.metrics(a.id) + box.store.metrics(b.id))
    print(f"submit to first metric: {first_metric - min(a.created, b.created):.1f} s")

    # the jobs wrote only run folders; the engine's job columns are events there too, so the
    # database deleted and rebuilt from the folders is the same, job ids and nodes included
    box.cli("engine", "stop")
    box.store.close()
    before = dump(box.home)
    for suffix in ("", "-wal", "-shm"):
        (box.home / f"{layout.DB}{suffix}").unlink(missing_ok=True)
    rebuilt = box.cli("store", "rebuild", env={**os.environ, "COLUMNS": "400"}).stdout
    assert "2 runs" in rebuilt
    assert dump(box.home) == before
    rebuilt = {r["id"]: r for r in dump(box.home)["runs"]}
    for run in (a, b):
        row = rebuilt[run.id]
        assert (row["job_id"], row["job_node"], row["job_state"]) == (
            run.job_id,
            run.job_node,
            "COMPLETED",
        )
        assert row["status"] == "done"


def test_a_student_is_submitted_only_once_its_teacher_run_is_done(box, slurm):
    start_engine(box)
    kd = tiny("kd", more='[teacher]\narch = "resnet8"\ntrain = true\n[distill]\nmethod = "kd"')

    box.cli("submit", box.write("kd.toml", kd))

    teacher, student = box.store.runs()
    student = box.wait_status(student.id, "done", "failed", "cancelled", timeout=240)
    teacher = box.run(teacher.id)
    assert (teacher.status, student.status) == ("done", "done"), student.error
    assert int(student.job_id) > int(teacher.job_id)  # two jobs, the student's submitted later
    assert student.started >= teacher.ended  # claimed and submitted after the teacher ended
    assert job_field(slurm, student.job_id, "Dependency") == "(null)"  # the engine's order


@pytest.mark.parametrize(
    "interrupt",
    [
        ["scontrol", "requeue"],  # what an admin, or a preempting job, does
        ["scancel", "--signal=USR2"],  # the signal Slurm sends before the time limit: submitit
    ],  # checkpoints the call and requeues the job itself
    ids=["scontrol-requeue", "time-limit-signal"],
)
def test_a_job_requeued_mid_run_resumes_from_its_checkpoint_and_records_every_epoch_once(
    box, slurm, monkeypatch, interrupt
):
    hold = box.root / "hold"
    hold.touch()
    monkeypatch.setenv("KDTUI_HOLD", f"step@2:{hold}")  # waits in epoch 2 while `hold` exists
    start_engine(box)
    box.cli("submit", box.write("requeue.toml", tiny("requeue", epochs=3, steps=2)))
    (run,) = box.store.runs()
    run = box.wait(
        lambda: (r := box.run(run.id)).epoch == 1 and held_in_second_epoch(box, r.id) and r,
        "the run to be held in its second epoch",
        timeout=180,
    )

    slurm.run(*interrupt, run.job_id)
    box.wait(lambda: "PENDING" in (box.run(run.id).job_state or ""), "the job to queue again", 60)
    assert (
        "queued" in box.cli("ls", env={**os.environ, "COLUMNS": "250"}).stdout
    )  # a pending job shows as queued, with the reason
    hold.unlink()

    run = box.wait_status(run.id, "done", "failed", "cancelled", timeout=240)
    assert run.status == "done", run.error
    assert job_field(slurm, run.job_id, "Restarts") == "1"  # the same job, started twice
    assert box.epochs_tested(run.id) == [0, 1, 2]  # every epoch once
    steps = [m.step for m in box.store.metrics(run.id, names=["train/lr"])]
    assert len(steps) == len(set(steps)) == 6  # the interrupted epoch's steps were not kept twice
    log = (run.path / layout.LOG).read_text()
    assert "resumed from" in log and "at epoch 1" in log
    output = (run.path / layout.WORKER_OUTPUT).read_text()
    assert f"slurm job {run.job_id} on {run.job_node} (restart 1: resuming)" in output
    if "USR2" in interrupt[1]:  # submitit's handler requeued it (its note, in the run folder)
        assert "Caught signal SIGUSR2" in output


def test_kdtui_cancel_scancels_the_job_and_the_run_is_cancelled(box, slurm, monkeypatch):
    hold = box.root / "hold"
    hold.touch()
    monkeypatch.setenv("KDTUI_HOLD", f"step@1:{hold}")  # never let through
    start_engine(box)
    box.cli("submit", box.write("cancel.toml", tiny("cancel", lr="[0.05, 0.1]", epochs=2)))
    ids = [r.id for r in box.store.runs()]
    run, other = (
        box.wait(
            lambda i=i: (r := box.run(i)).job_state == "RUNNING" and r.pid and r,
            f"run {i}'s job to run",
            timeout=180,
        )
        for i in ids
    )
    # an engine restart (the login node's engine stopped and started again) adopts the jobs
    box.cli("engine", "stop")
    start_engine(box)
    workers = client.status(box.home)["workers"]
    assert sorted((w["job"], w["runs"], w["adopted"]) for w in workers) == [
        (run.job_id, [run.id], True),
        (other.job_id, [other.id], True),
    ]
    assert run.job_id in box.cli("engine", "status", env={**os.environ, "COLUMNS": "200"}).stdout

    said = box.cli("cancel", str(run.id)).stdout
    assert f"run {run.id} cancelling: the engine scancels its Slurm job {run.job_id}" in said

    run = box.wait_status(run.id, "cancelled", "failed", "done", timeout=60)
    assert run.status == "cancelled"
    box.wait(lambda: not in_queue(slurm, run.job_id), "the job to leave the queue", 60)
    assert job_field(slurm, run.job_id, "JobState") == "CANCELLED"
    assert box.run(other.id).status == "running"  # the other task of the array goes on

    # stopping the engine with its runs scancels their jobs and re-queues the runs to resume
    box.cli("engine", "stop", "--runs")

    assert not in_queue(slurm, other.job_id)
    other = box.run(other.id)
    assert (other.status, other.resume) == ("queued", 1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--partition", "nosuchpartition"], "invalid partition specified: nosuchpartition"),
        (["--slurm-option", "cpus_per_task=x"], 'Invalid numeric value "x" for --cpus-per-task'),
        (["--slurm-option", "no_such_option=1"], "unrecognized option '--no-such-option=1'"),
    ],
)
def test_engine_start_asks_slurm_first_and_a_job_it_would_refuse_is_one_error(
    box, slurm, option, message
):
    out = box.cli("engine", "start", "--backend", "slurm", *option, check=False)

    assert out.returncode == 2
    assert message in out.stderr and "Slurm would refuse these jobs" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert client.status(box.home) is None  # no engine, nothing saved
    assert not (box.home / layout.ENGINE_OPTIONS).exists()


def test_a_job_slurm_refuses_fails_its_run_with_sbatch_s_reason(box, slurm):
    # options saved by an earlier start that Slurm no longer takes (a partition removed since)
    (box.home / layout.ENGINE_OPTIONS).write_text(
        json.dumps({"backend": "slurm", "partition": "nosuchpartition"})
    )
    client.start(box.home)
    box.cli("submit", box.write("refused.toml", tiny("refused")))
    (run,) = box.store.runs()

    run = box.wait_status(run.id, "failed", "done", timeout=60)

    assert "could not start a worker" in run.error and "invalid partition" in run.error.lower()
    assert run.job_id is None


def test_a_run_of_two_processes_is_one_job_with_a_cpu_per_process(box, slurm):
    start_engine(box)
    exp = box.write("ddp.toml", tiny("ddp", epochs=2, steps=2, more="nproc_per_node = 2"))

    box.cli("submit", exp)

    (run,) = box.store.runs()
    box.wait_status(run.id, "done", "failed", "cancelled", timeout=240)
    run = box.run(run.id)
    assert run.status == "done", run.error
    # one job, one task (the launcher), a CPU for each of its two ranks
    assert job_field(slurm, run.job_id, "NumTasks") == "1"
    assert job_field(slurm, run.job_id, "NumCPUs") == "2"
    assert (run.world_size, run.effective_batch) == (2, 128)
    assert [m.epoch for m in box.store.metrics(run.id, names=["test/top1"])] == [0, 1]
    log = (run.path / layout.LOG).read_text()
    assert "2 processes (gloo), batch 64 per process, effective batch 128" in log
