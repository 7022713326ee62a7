"""A worker SIGKILLed at each commit point of an epoch loses no epoch on resume.

Each case starts a real worker process (`python -m engine.worker`) with
KDTUI_FAULT=POINT@EPOCH (engine.core.faults), so it kills itself with SIGKILL at
that point, then does what a user does: `kdtui resume RUN` (the row is a
dead `running` one), and the resumed run trains to the end. Every epoch's
metrics must then be in the store exactly once, the run row must agree with
them, and the test accuracies must equal those of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core import checkpoint as ckptmod
from engine.core import faults, reading
from engine.core.store import Store
from engine.daemon.processes import worker_command
from engine.worker import execute
from tests.test_resume import EXP, assert_every_epoch_once

ROOT = Path(__file__).resolve().parent.parent

# POINT@EPOCH -> what must be on disk and in the store right after the kill, so each case
# provably died where it says: epochs with test metrics, and the sealed epoch of each file
CASES = {
    "step@2": dict(tested=[0], last=1),
    "best@1": dict(tested=[], last=None, best=1),
    "prev@2": dict(tested=[0], last=1, prev=1),
    "checkpoint@2": dict(tested=[0], last=2, prev=1),
    "metrics-open@2": dict(tested=[0, 1], last=2),  # metrics written, the row's event not
    "metrics@2": dict(tested=[0, 1], last=2),
    "log@2": dict(tested=[0, 1], last=2),
    "checkpoint@3": dict(tested=[0, 1], last=3),
    "metrics@3": dict(tested=[0, 1, 2], last=3),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    store = Store(tmp_path_factory.mktemp("reference") / "home")
    (run,) = store.submit(reading.loads(EXP, file="resume.toml"))
    assert execute(store, [run.id])[0].status == "done"
    top1 = {m.epoch: m.value for m in store.metrics(run.id, names=["test/top1"])}
    store.close()
    return top1


def kill_at(store: Store, run_id: int, spec: str) -> None:
    """Run the worker the way the engine does, with the fault armed; it must die by SIGKILL."""
    assert store.claim(run_id, pid=None)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CUDA_VISIBLE_DEVICES": "",
        faults.ENV: spec,
    }
    proc = subprocess.run(
        worker_command(store.home, [store.run(run_id).path]),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def sealed_epoch(path: Path) -> int | None:
    info = ckptmod.inspect(path)
    assert info.problem is None, info.problem
    return info.epoch if info.exists else None


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(CASES))
def test_a_worker_killed_at_any_commit_point_resumes_with_every_epoch_exactly_once(
    store, spec, uninterrupted
):
    (run,) = store.submit(reading.loads(EXP, file="resume.toml"))
    kill_at(store, run.id, spec)

    # it died exactly there
    want = CASES[spec]
    tested = sorted(m.epoch for m in store.metrics(run.id, names=["test/top1"]))
    assert tested == want["tested"]
    assert sealed_epoch(run.path / "last.pth") == want["last"]
    for name in ("best", "prev"):
        if name in want:
            assert sealed_epoch(run.path / f"{name}.pth") == want[name]
    dead = store.run(run.id)
    assert dead.status == "running"  # nobody is left to say otherwise

    env = {**os.environ, "KDTUI_HOME": str(store.home), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", "resume", str(run.id), "--no-start"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert store.claim(run.id, pid=os.getpid())
    done = execute(store, [run.id])[0]
    assert done.status == "done", done.error

    assert_every_epoch_once(store, run.id)  # no epoch lost, none twice
    top1 = {m.epoch: m.value for m in store.metrics(run.id, names=["test/top1"])}
    assert top1 == pytest.approx(uninterrupted, rel=1e-6)  # and the right values
    assert list(run.path.glob("*.tmp")) == []
