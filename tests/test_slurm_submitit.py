"""submitit on the local one-node Slurm cluster: what the Slurm backend (issue 13) will rely on.

Each test submits real jobs through submitit to the cluster tests/slurm/cluster.sh starts, and
checks what a user of the backend would see: a result, the order of an array's tasks, a job that
survives a requeue, a cancelled job whose process is gone.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.slurm

# the jobs' Python does not have tests/ on its path: ship this module's functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Long enough that submitit calls a signal "preemption", not "timeout" (it counts any signal in
# the last 10 minutes as a timeout), and that Slurm's USR2 (sent up to 60 s early, 90 s before
# the limit) cannot reach a job of these tests.
TIMEOUT_MIN = 15
PAUSE_AT = 3  # the step where a job that will be requeued waits for it


def executor(folder: Path, **parameters) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=TIMEOUT_MIN, cpus_per_task=1, **parameters)
    return ex


def wait_until(predicate, what: str, timeout: float = 120.0):
    """Poll until predicate() is truthy (a deadline against hanging, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


def job_field(slurm, job_id: str, field: str) -> str:
    """One field of `scontrol show job` (finished jobs stay there for MinJobAge = 5 min)."""
    text = slurm.run("scontrol", "show", "job", job_id)
    return re.search(rf"\b{field}=(\S*)", text).group(1)


def in_queue(slurm, job_id: str) -> bool:
    return bool(slurm.run("squeue", "--noheader", "--jobs", job_id, "--format=%i").strip())


# --- what the jobs run -----------------------------------------------------------------------


def square_on_node(x: int) -> dict:
    return {"square": x * x, "job_id": os.environ["SLURM_JOB_ID"], "cwd": os.getcwd()}


def timed_square(x: int) -> dict:
    start = time.time()
    time.sleep(1.0)
    return {
        "square": x * x,
        "array_job_id": os.environ["SLURM_ARRAY_JOB_ID"],
        "task_id": int(os.environ["SLURM_ARRAY_TASK_ID"]),
        "start": start,
        "end": time.time(),
    }


class Counter(submitit.helpers.Checkpointable):
    """Counts to n. A first start stops at step 3 and waits there to be preempted (so the test
    cannot race it); on preemption submitit calls checkpoint(), which resubmits the same call
    with the steps done so far. Every start is logged to `log`, progress to log.progress."""

    def __call__(self, log: str, n: int, done: int = 0) -> int:
        with open(log, "a") as fh:
            fh.write(f"start {done}\n")
        first_start, self.done = done == 0, done
        while self.done < n:
            if first_start and self.done == PAUSE_AT:
                time.sleep(0.1)  # until preempted
                continue
            self.done += 1
            Path(log).with_suffix(".progress").write_text(str(self.done))
        return self.done

    def checkpoint(self, log: str, n: int, done: int = 0) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(Counter(), log, n, self.done)


def count_from_disk(progress: str, n: int) -> list[int]:
    """Counts to n, keeping its progress in a file as a run keeps checkpoints in its run folder:
    killed and started again, it goes on from the last step written. A first start stops at
    step 3 and waits there to be killed. Returns the step each start began from."""
    path = Path(progress)
    done = int(path.read_text()) if path.exists() else 0
    starts = path.with_suffix(".starts")
    with starts.open("a") as fh:
        fh.write(f"{done}\n")
    first_start = done == 0
    while done < n:
        if first_start and done == PAUSE_AT:
            time.sleep(0.1)  # until killed
            continue
        done += 1
        path.write_text(str(done))
    return [int(line) for line in starts.read_text().split()]


def sleep_and_record_pid(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


# --- the tests ---------------------------------------------------------------------------------


def test_cluster_is_up_and_a_second_start_sees_it(slurm):
    # idle once the previous test's last job has left the node (it may still be completing)
    wait_until(
        lambda: slurm.run("sinfo", "--noheader", "--Node", "--format=%T").split() == ["idle"],
        "the node to be idle",
        60,
    )
    again = slurm.run(str(Path(__file__).parent / "slurm" / "cluster.sh"), "start", str(slurm.dir))
    assert "already running" in again


def test_a_function_submitted_through_submitit_returns_its_result(slurm, tmp_path):
    job = executor(tmp_path).submit(square_on_node, 7)

    result = job.result()

    assert result["square"] == 49
    assert result["job_id"] == job.job_id  # it ran as that Slurm job
    assert result["cwd"] == os.getcwd()  # in the folder it was submitted from
    assert job.paths.stdout.exists() and job.paths.result_pickle.exists()
    assert job_field(slurm, job.job_id, "JobState") == "COMPLETED"


def test_a_two_task_array_with_parallelism_one_runs_its_tasks_one_after_the_other(slurm, tmp_path):
    jobs = executor(tmp_path, slurm_array_parallelism=1).map_array(timed_square, [3, 4])
    array_id = jobs[0].job_id.split("_")[0]

    results = [job.result() for job in jobs]

    assert [r["square"] for r in results] == [9, 16]
    assert {r["array_job_id"] for r in results} == {array_id}  # one array job, not two jobs
    assert [r["task_id"] for r in results] == [0, 1]
    first, second = sorted(results, key=lambda r: r["start"])
    assert first["end"] <= second["start"]  # never both running, though the node has room
    assert job_field(slurm, array_id, "ArrayTaskThrottle") == "1"


def test_a_preempted_checkpointable_job_is_requeued_and_resumes_where_it_stopped(slurm, tmp_path):
    log = tmp_path / "counter.log"
    job = executor(tmp_path).submit(Counter(), str(log), 6)
    progress = log.with_suffix(".progress")
    wait_until(lambda: progress.exists() and progress.read_text() == "3", "3 steps done")

    # what preemption looks like to submitit: SIGTERM, then USR2 (as job._interrupt() sends
    # them, but waiting until the job has seen SIGTERM: slurmd delivers signals
    # asynchronously, and a SIGTERM landing after USR2 kills the `scontrol requeue` that
    # submitit's USR2 handler runs, which failed this test on a loaded machine)
    slurm.run("scancel", job.job_id, "--signal", "SIGTERM")
    wait_until(lambda: "Bypassing signal SIGTERM" in (job.stderr() or ""), "the job to see SIGTERM")
    slurm.run("scancel", job.job_id, "--signal", "USR2")

    assert job.result() == 6
    assert log.read_text().splitlines() == ["start 0", "start 3"]  # resumed, not restarted
    assert job_field(slurm, job.job_id, "Restarts") == "1"  # the same Slurm job, requeued
    assert "this job is preempted" in job.stderr()


def test_a_job_requeued_by_scontrol_starts_again_and_resumes_from_its_files(slurm, tmp_path):
    progress = tmp_path / "count.progress"
    job = executor(tmp_path).submit(count_from_disk, str(progress), 6)
    wait_until(lambda: progress.exists() and progress.read_text() == "3", "3 steps done")

    slurm.run("scontrol", "requeue", job.job_id)  # what an admin or a preempting job does

    assert job.result() == [0, 3]  # started twice, the second time from step 3
    assert progress.read_text() == "6"
    assert job_field(slurm, job.job_id, "Restarts") == "1"


def test_scancel_removes_a_pending_job_from_the_queue(slurm, tmp_path):
    job = executor(tmp_path, slurm_additional_parameters={"hold": True}).submit(square_on_node, 2)
    assert job_field(slurm, job.job_id, "JobState") == "PENDING"

    job.cancel()

    wait_until(lambda: not in_queue(slurm, job.job_id), "the job to leave the queue")
    assert job_field(slurm, job.job_id, "JobState") == "CANCELLED"
    assert not job.paths.result_pickle.exists()  # it never ran


def test_scancel_of_a_running_job_kills_its_process(slurm, tmp_path):
    pid_file = tmp_path / "job.pid"
    job = executor(tmp_path).submit(sleep_and_record_pid, str(pid_file))
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), "the job to start"))

    job.cancel()

    wait_until(lambda: not in_queue(slurm, job.job_id), "the job to leave the queue")
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), f"the job's process {pid} to end")
    assert job_field(slurm, job.job_id, "JobState") == "CANCELLED"
