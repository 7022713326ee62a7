"""Resume never restarts silently: sealed checkpoints, prev.pth fallback, refusal with --restart.

Runs train for real (digits, resnet8, 2 steps per epoch) in this process;
checkpoints are damaged or removed on disk the way a crash, a full disk or
a stray `rm` would, then `kdtui resume` and the worker are asked to go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.core import checkpoint as ckptmod
from engine.core import reading
from engine.core.store import Store
from engine.models import build_model, load_checkpoint_file
from engine.train import NullCallbacks
from engine.worker import execute

ROOT = Path(__file__).resolve().parent.parent
EXP = """
name = "resume"
seeds = [0]
[data]
dataset = "digits"
batch_size = 64
[student]
arch = "resnet8"
[optim]
lr = 0.05
epochs = 3
[run]
max_steps = 2
log_every = 1
threads = 1
"""
EPOCH_METRICS = ("lr", "train/top1", "images_per_s", "epoch_time", "test/top1", "test/top5")


class StopAfterEpoch(NullCallbacks):
    """Fails the run right after epoch `n` (1-based) has fully committed."""

    def __init__(self, n: int):
        self.n = n

    def on_epoch(self, m, epoch, metrics):
        if epoch + 1 == self.n:
            raise RuntimeError("simulated crash")


def kdtui(store: Store, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDTUI_HOME": str(store.home), "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "kdtui.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def crashed_after(store: Store, n: int):
    (run,) = store.submit(reading.loads(EXP, file="resume.toml"))
    assert execute(store, [run.id], callbacks=StopAfterEpoch(n))[0].status == "failed"
    return store.run(run.id)


def continue_(store: Store, run_id: int):
    """What the engine does after `kdtui resume`: claim the queued run and train it."""
    assert store.claim(run_id, pid=os.getpid())
    return execute(store, [run_id])[0]


def epoch_counts(store: Store, run_id: int) -> dict[tuple[int, str], int]:
    counts: dict[tuple[int, str], int] = {}
    for m in store.metrics(run_id, names=list(EPOCH_METRICS)):
        counts[(m.epoch, m.name)] = counts.get((m.epoch, m.name), 0) + 1
    return counts


def assert_every_epoch_once(store: Store, run_id: int, epochs: int = 3) -> None:
    counts = epoch_counts(store, run_id)
    assert counts == {(e, n): 1 for e in range(epochs) for n in EPOCH_METRICS}
    run = store.run(run_id)
    top1 = {m.epoch: m.value for m in store.metrics(run_id, names=["test/top1"])}
    assert run.epoch == epochs and run.last_top1 == top1[epochs - 1]
    assert run.best_top1 == max(top1.values())


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x40
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- the seal


def test_a_checkpoint_is_sealed_with_its_epoch_and_loads_anywhere(store):
    run = crashed_after(store, 2)
    last = ckptmod.inspect(run.path / "last.pth")
    prev = ckptmod.inspect(run.path / "prev.pth")
    assert (last.ok, last.sealed, last.epoch) == (True, True, 2)
    assert (prev.ok, prev.sealed, prev.epoch) == (True, True, 1)  # the one before
    # still what torch.save writes: plain torch.load and teacher loading read it
    state = torch.load(run.path / "last.pth", weights_only=True)
    assert state["epoch"] == 2 and state["commit"]["epoch"] == 1
    assert set(EPOCH_METRICS) <= set(state["commit"]["metrics"])
    load_checkpoint_file(run.path / "best.pth", build_model("resnet8", num_classes=10))
    assert list(run.path.glob("*.tmp")) == []


def test_one_flipped_byte_is_caught_and_the_file_named(store):
    run = crashed_after(store, 1)
    path = run.path / "last.pth"
    flip_byte(path)
    info = ckptmod.inspect(path)
    assert not info.ok and info.problem.startswith("is damaged (checksum of archive/data/")
    with pytest.raises(ckptmod.CheckpointError, match=f"{path} is damaged"):
        ckptmod.verify(path)
    path.write_bytes(path.read_bytes()[:1000])  # truncated: no zip end record
    assert ckptmod.inspect(path).problem == "is damaged (truncated: no zip end record)"


# ---------------------------------------------------------------- falling back


def test_missing_last_pth_resumes_from_prev_pth_says_so_and_records_every_epoch_once(store):
    run = crashed_after(store, 3)  # failed after its last epoch committed: last=3, prev=2
    (run.path / "last.pth").unlink()
    (run.path / "best.pth").unlink()  # else best.pth could be the newest

    out = kdtui(store, "resume", str(run.id), "--no-start")
    assert out.returncode == 0, out.stderr
    assert f"last.pth is missing; it resumes from {run.path / 'prev.pth'} at epoch 2" in " ".join(
        out.stderr.split()
    )
    done = continue_(store, run.id)
    assert done.status == "done", done.error

    log = (run.path / "log.txt").read_text()
    note = "last.pth is missing; resuming from prev.pth at epoch 2"
    assert note in log and "the metrics of epoch 3 are dropped" in log
    events = [e for e in store.events() if e["run_id"] == run.id and e["kind"] == "fallback"]
    assert len(events) == 1 and note in events[0]["message"]
    assert_every_epoch_once(store, run.id)


def test_a_corrupted_last_pth_is_named_set_aside_and_an_older_one_used(store):
    run = crashed_after(store, 2)
    flip_byte(run.path / "last.pth")
    out = kdtui(store, "resume", str(run.id), "--no-start")
    assert out.returncode == 0, out.stderr
    assert "last.pth is damaged (checksum of" in " ".join(out.stderr.split())

    done = continue_(store, run.id)
    assert done.status == "done", done.error
    log = (run.path / "log.txt").read_text()
    assert "last.pth is damaged (checksum of" in log and "; resuming from" in log
    kept = list(run.path.glob("last.corrupt-*.pth"))
    assert len(kept) == 1  # kept for inspection, out of the next resume's way
    assert_every_epoch_once(store, run.id)


def test_no_valid_checkpoint_is_refused_with_the_restart_command_and_nothing_queued(store):
    run = crashed_after(store, 2)
    flip_byte(run.path / "last.pth")
    flip_byte(run.path / "prev.pth", 0.3)
    (run.path / "best.pth").unlink()

    out = kdtui(store, "resume", str(run.id))
    assert out.returncode == 2
    text = " ".join(out.stderr.split())
    assert f"run {run.id} cannot resume: no valid checkpoint in {run.path}" in text
    assert "last.pth is damaged (checksum of" in text and "best.pth missing" in text
    assert f"`kdtui resume {run.id} --restart` starts it over" in text
    assert store.run(run.id).status == "failed"  # nothing queued
    before = epoch_counts(store, run.id)

    # the worker refuses too (a resume queued by the engine's recovery, say)
    store.requeue(run.id, resume=True)
    refused = continue_(store, run.id)
    assert refused.status == "failed" and "--restart" in refused.error
    assert epoch_counts(store, run.id) == before  # nothing dropped, nothing renamed
    assert (run.path / "last.pth").exists()

    out = kdtui(store, "resume", str(run.id), "--restart", "--no-start")
    assert out.returncode == 0 and "from scratch" in out.stdout
    done = continue_(store, run.id)
    assert done.status == "done", done.error
    assert_every_epoch_once(store, run.id)
    assert list(run.path.glob("last.2*.pth"))  # the old checkpoints moved aside, not deleted


def test_a_run_that_never_finished_an_epoch_resumes_from_the_start(store):
    (run,) = store.submit(reading.loads(EXP, file="resume.toml"))
    store.claim(run.id, pid=1)  # pid 1 is no kdtui process: the run is dead
    store.add_metrics(run.id, [(0, 1, "train/loss", 2.3)])
    out = kdtui(store, "resume", str(run.id), "--no-start")
    assert out.returncode == 0, out.stderr
    done = continue_(store, run.id)
    assert done.status == "done", done.error
    assert "no checkpoint yet" in (run.path / "log.txt").read_text()
    assert len(store.series(run.id, "train/loss")) == 3 * 2  # the stale step is gone
    assert_every_epoch_once(store, run.id)
