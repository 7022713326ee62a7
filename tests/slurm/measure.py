"""Measure the local Slurm cluster: how long it takes to start, how long a job submitted
through submitit waits before its function runs, how long a requeued job waits to run again. Prints the figures; asserts nothing.

    python tests/slurm/measure.py [--starts 3] [--jobs 10]

Needs root and slurm-wlm + munge (as the Slurm tests do). Starts its own clusters in a temporary
folder and stops them. Timings depend on the machine's load: quote them with the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import submitit

SCRIPT = Path(__file__).resolve().parent / "cluster.sh"


def started_at() -> float:
    return time.time()


def log_starts(log: str) -> list[float]:
    """Appends its start time to log; the first start waits to be requeued, later ones end."""
    with open(log, "a") as fh:
        fh.write(f"{time.time()}\n")
    starts = [float(line) for line in Path(log).read_text().split()]
    while len(starts) == 1:
        time.sleep(0.1)
    return starts


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="cold cluster starts to time")
    parser.add_argument("--jobs", type=int, default=10, help="jobs to time, one after the other")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdtui-slurm-measure-") as tmp:
        folder = Path(tmp) / "cluster"
        starts = []
        for _ in range(args.starts):
            t0 = time.perf_counter()
            subprocess.run([str(SCRIPT), "start", str(folder)], check=True, capture_output=True)
            starts.append(time.perf_counter() - t0)
            subprocess.run([str(SCRIPT), "stop", str(folder)], check=True, capture_output=True)
        subprocess.run([str(SCRIPT), "start", str(folder)], check=True, capture_output=True)
        try:
            os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
            ex = submitit.AutoExecutor(folder=Path(tmp) / "jobs" / "%j", cluster="slurm")
            ex.update_parameters(timeout_min=15)
            to_start, to_result = [], []
            for _ in range(args.jobs):
                t0 = time.time()
                job = ex.submit(started_at)
                began = job.result()
                to_start.append(began - t0)
                to_result.append(time.time() - t0)
            log = Path(tmp) / "starts.log"
            job = ex.submit(log_starts, str(log))
            while not log.exists():
                time.sleep(0.05)
            t0 = time.time()
            subprocess.run(["scontrol", "requeue", job.job_id], check=True)
            requeued = job.result()[1] - t0
        finally:
            subprocess.run([str(SCRIPT), "stop", str(folder)], capture_output=True)
    print(f"cluster start (cold, until srun and sbatch --wait have run): {summary(starts)}")
    print(f"submit -> the function's first line on the node: {summary(to_start)}")
    print(f"submit -> job.result() returned: {summary(to_result)}")
    print(f"scontrol requeue -> the function's second start: {requeued:.2f} s")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
