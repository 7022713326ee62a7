"""Data-parallel scaling for `kdtui bench`: the engine's SimKD step on N processes vs one.

`kdtui bench` (the `scaling` part, `bench.core.Bench.part_scaling`) starts this module
under torchrun with N processes (one per visible GPU; on CPUs only when asked with
`--procs N`) and with one process, in turns, `repeats` rounds. Each process builds what a
rank of a data-parallel run builds (its shard of the synthetic CIFAR-shaped data on the
device loader, the SimKD member, DistributedDataParallel above one process), takes
`warmup` steps, then times `steps` steps between two barriers; rank 0 writes the images/s
of the whole group (every process's images) to the file named on the command line.
Efficiency = N-process images/s / (N x one-process images/s); 1.0 is perfect scaling.
Every process gets the same per-process batch and the same CPU threads (cores / N), so
"one process" is one device's worth of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.setup import (
    MEAN,
    STD,
    BenchConfig,
    _endless,
    _experiment,
    _sync,
    _synthetic_arrays,
)
from engine import distributed
from engine.core.schema import RunConfig
from engine.data import DeviceLoader
from engine.distributed import SINGLE
from engine.models import build_model
from engine.train import build_member, data_parallel, pick_runtime, plain_teacher_source, train_step

LAUNCH_TIMEOUT_S = 1200


def threads_per_process(procs: int) -> int:
    return max(1, (os.cpu_count() or 1) // procs)


def launch(cfg: BenchConfig, procs: int, device: str) -> float:
    """Images/s of `procs` processes (under torchrun), one measurement."""
    with tempfile.TemporaryDirectory(prefix="kdtui-scaling-") as tmp:
        out = Path(tmp) / "result.json"
        options = {
            k: getattr(cfg, k)
            for k in ("teacher", "student", "batch", "classes", "images", "steps", "warmup")
        }
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(procs),
            "--module",
            "bench.scaling",
            str(out),
            device,
            json.dumps(options),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(procs))}
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT_S
        )
        if done.returncode or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise RuntimeError(
                f"scaling: {procs} process(es) failed (exit {done.returncode}): " + " | ".join(tail)
            )
        return float(json.loads(out.read_text())["images_per_s"])


def rank(out: str, device: str, options: dict) -> None:
    """One process of a measurement (see the module docstring)."""
    group = distributed.from_env() or SINGLE
    run = RunConfig(device=device, nproc_per_node=group.world)
    run.threads = threads_per_process(group.world)
    runtime = pick_runtime(run, group)
    distributed.init(group, runtime.device)
    c = BenchConfig(**options)
    x, y = _synthetic_arrays(c)
    loader = DeviceLoader(
        x,
        y,
        batch_size=c.batch,
        mean=MEAN,
        std=STD,
        device=runtime.device,
        channels_last=runtime.channels_last,
        rank=group.rank,
        world=group.world,
    )
    torch.manual_seed(0)
    mf = torch.channels_last if runtime.channels_last else torch.preserve_format
    teacher = build_model(c.teacher, num_classes=c.classes).to(runtime.device, memory_format=mf)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="kdtui-scaling-") as tmp:
        m = build_member(
            "scaling", _experiment(c, "simkd", 0.05, run), teacher, c.classes, runtime, Path(tmp)
        )
    if group.parallel:
        data_parallel(m)
    m.distiller.train()
    source = plain_teacher_source(teacher, runtime)
    stream = _endless(loader)
    total = torch.zeros((), device=runtime.device)

    def step() -> None:
        nonlocal total
        batch = next(stream)
        loss, _, _ = train_step(m, batch, source(batch), 0, runtime)
        total += loss  # on the device, like fit's log windows

    for _ in range(c.warmup):
        step()
    _sync(runtime.device)
    barrier = torch.distributed.barrier if group.parallel else (lambda: None)
    barrier()
    t0 = time.perf_counter()
    for _ in range(c.steps):
        step()
    _sync(runtime.device)
    barrier()
    elapsed = time.perf_counter() - t0
    if group.main:
        images = c.batch * c.steps * group.world
        Path(out).write_text(json.dumps({"images_per_s": images / max(elapsed, 1e-9)}))
    with contextlib.suppress(Exception):
        distributed.shutdown()


if __name__ == "__main__":
    rank(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
