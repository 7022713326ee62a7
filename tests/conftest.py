"""Shared fixtures: every test gets its own store directory; Slurm tests get the local cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see engine/__init__.py

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh $KDTUI_HOME for this test."""
    path = tmp_path / "kdtui-home"
    monkeypatch.setenv("KDTUI_HOME", str(path))
    return path


@pytest.fixture
def store(home):
    from engine.core.store import Store

    s = Store(home)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # two cores: keep torch from oversubscribing when tests run training
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


# --- the local one-node Slurm cluster (tests/slurm/cluster.sh) --------------------------------

SLURM_SCRIPT = ROOT / "tests" / "slurm" / "cluster.sh"
SLURM_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its folder and the environment its commands need (SLURM_CONF)."""

    dir: Path
    env: dict[str, str]

    def run(self, *command: str, check: bool = True) -> str:
        """Run a Slurm command (squeue, scontrol, ...) against this cluster; its stdout."""
        done = subprocess.run(
            command, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60
        )
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
        return done.stdout


def _slurm_unavailable() -> str | None:
    """Why the local cluster cannot run on this machine (the skip reason), or None."""
    daemons = ("munged", "slurmctld", "slurmd", "sbatch", "srun")
    missing = [name for name in daemons if shutil.which(name, path=SLURM_PATH) is None]
    if missing:
        return (
            f"Slurm tests skipped: {', '.join(missing)} not installed "
            "(apt-get install slurm-wlm munge, as .ci/run does)"
        )
    if os.geteuid() != 0:
        return "Slurm tests skipped: the local cluster runs slurmd as root (run them as root, as CI does)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    """The cluster in $KDTUI_SLURM_DIR (started there if it is not running, left running: .ci/run
    stops it), else a private one started for this session and stopped after it."""
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)
    shared = os.environ.get("KDTUI_SLURM_DIR")
    folder = Path(shared) if shared else tmp_path_factory.mktemp("slurm")
    started = subprocess.run(
        [str(SLURM_SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=600
    )
    if started.returncode:
        pytest.fail(f"the local Slurm cluster did not start:\n{started.stderr}", pytrace=False)
    yield SlurmCluster(folder, {"SLURM_CONF": str(folder / "slurm.conf"), "PATH": SLURM_PATH})
    if not shared:
        subprocess.run([str(SLURM_SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)


@pytest.fixture
def slurm(slurm_cluster, monkeypatch) -> SlurmCluster:
    """The cluster, with SLURM_CONF set for this test (submitit's sbatch/scancel read it); the
    queue is emptied afterwards so a failed test leaves no job behind for the next one."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    yield slurm_cluster
    slurm_cluster.run("scancel", "--user=root", check=False)


@pytest.fixture(scope="module")
def slurm_two_nodes(tmp_path_factory) -> SlurmCluster:
    """A private two-node cluster on this machine (KDTUI_SLURM_NODES=2: two slurmd, at
    127.0.0.1 and 127.0.0.2, each in a UTS namespace of its own), for runs across nodes;
    started for the module that asks for it and stopped after it."""
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)
    if subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode:
        pytest.skip("the two-node Slurm cluster needs `unshare --uts` (root with CAP_SYS_ADMIN)")
    folder = tmp_path_factory.mktemp("slurm2")
    started = subprocess.run(
        [str(SLURM_SCRIPT), "start", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KDTUI_SLURM_NODES": "2"},
    )
    if started.returncode:
        pytest.fail(f"the two-node Slurm cluster did not start:\n{started.stderr}", pytrace=False)
    yield SlurmCluster(folder, {"SLURM_CONF": str(folder / "slurm.conf"), "PATH": SLURM_PATH})
    subprocess.run(
        [str(SLURM_SCRIPT), "stop", str(folder)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "KDTUI_SLURM_NODES": "2"},
    )
