"""A run across two nodes, end to end, on a real two-node Slurm cluster on this machine
(tests/slurm/cluster.sh with KDTUI_SLURM_NODES=2: two slurmd at 127.0.0.1 and 127.0.0.2).

`[run] nnodes = 2` becomes one Slurm job of two nodes, one task per node; each task is its
node's torchrun launcher and they meet at the first node's address (torchrun's static
rendezvous), so the two ranks train one digits run together over gloo. What is checked is what
a user reads: the run's row, its metrics, its log, Slurm's own view of the job.
"""

from __future__ import annotations

import json
import re

import pytest

from engine.core import layout
from tests.test_engine import tiny
from tests.test_slurm_backend import slurm_box, start_engine

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ACROSS = 'nnodes = 2\nnproc_per_node = 1\ndevice = "cpu"'


@pytest.fixture
def box(slurm_two_nodes, tmp_path, monkeypatch):
    """A store whose engine submits to the two-node cluster."""
    yield from slurm_box(slurm_two_nodes, tmp_path, monkeypatch)


def test_a_run_across_two_nodes_trains_as_one_group_and_a_rank_killed_there_resumes(
    box, slurm_two_nodes
):
    # rank 1 (on the second node) kills itself at the first step of epoch 2
    start_engine(box, KDTUI_FAULT="step@2", KDTUI_FAULT_RANK="1")
    exp = box.write("across.toml", tiny("across", epochs=2, steps=3, more=ACROSS))
    box.cli("submit", exp)
    (run,) = box.store.runs()

    box.wait_status(run.id, "failed", "done", timeout=240)
    run = box.run(run.id)
    assert run.status == "failed"
    # node 0's launcher writes the run's error: the cause was on the other node, whose
    # launcher printed it to the job's output in the run folder
    assert run.error.startswith("a process on another node of this run stopped"), run.error
    assert f"`kdtui resume {run.id}` continues it" in run.error
    output = (run.path / layout.WORKER_OUTPUT).read_text()
    assert re.search(r"launcher: rank 1 of 2 was killed by SIGKILL .*\(node rank 1 of 2\)", output)
    job = run.job_id
    assert "NumNodes=2" in slurm_two_nodes.run("scontrol", "show", "job", job)

    # the engine without the fault; resume: a new job of two nodes continues from epoch 2
    box.cli("engine", "stop")
    start_engine(box)
    box.cli("resume", str(run.id))
    box.wait_status(run.id, "done", "failed", timeout=240)
    run = box.run(run.id)
    assert run.status == "done", run.error
    assert run.job_id != job and run.job_node == "kdtui-n[1-2]"
    shown = slurm_two_nodes.run("scontrol", "show", "job", run.job_id)
    assert "NumNodes=2" in shown and "NodeList=kdtui-n[1-2]" in shown
    # one group of two ranks: world size 2, effective batch 2 x 64, every epoch's
    # metrics once (rank 0 alone writes), and each node's launcher said where it ran
    assert (run.world_size, run.effective_batch) == (2, 128)
    assert [m.epoch for m in box.store.metrics(run.id, names=["test/top1"])] == [0, 1]
    output = (run.path / layout.WORKER_OUTPUT).read_text()
    assert f"slurm job {run.job_id} on kdtui-n1 (node rank 0 of 2)" in output
    assert f"slurm job {run.job_id} on kdtui-n2 (node rank 1 of 2)" in output
    assert "--rendezvous 127.0.0.1:" in output  # node 1's NodeAddr, as Slurm reaches it
    log = (run.path / layout.LOG).read_text()
    assert "2 processes on 2 nodes (gloo), batch 64 per process, effective batch 128" in log
    assert "resumed from" in log
    listed = json.loads(box.cli("ls", "--json").stdout)["runs"][0]
    assert (listed["world_size"], listed["slurm_node"]) == (2, "kdtui-n[1-2]")
