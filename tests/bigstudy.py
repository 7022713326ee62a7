"""A store as a researcher has it after a week: 24 runs, sweeps, long names and labels.

Used by the layout snapshots (80x24, 120x40) and for trying the app by hand:
`python tests/bigstudy.py DIR` seeds DIR/.kdtui.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from engine.core import reading
from engine.core.store import Store

T0 = 1_700_000_000.0

HEAD = """
[data]
dataset = "cifar100"
[teacher]
arch = "resnet32x4"
checkpoint = "teachers/resnet32x4_vanilla.pth"
[optim]
epochs = 240
"""

EXPERIMENTS = {
    "cifar100/baseline-resnet8x4": """
name = "cifar100/baseline-resnet8x4"
seeds = [0, 1, 2]
[data]
dataset = "cifar100"
[student]
arch = "resnet8x4"
[distill]
method = "vanilla"
[optim]
epochs = 240
""",
    "cifar100/kd-r32x4-r8x4": """
name = "cifar100/kd-r32x4-r8x4"
seeds = [0, 1, 2]
[student]
arch = "resnet8x4"
[distill]
method = "kd"
"""
    + HEAD,
    "cifar100/simkd-lr-factor-sweep-r32x4-mobilenetv2": """
name = "cifar100/simkd-lr-factor-sweep-r32x4-mobilenetv2"
seeds = [0, 1]
[student]
arch = "mobilenetv2"
[distill]
method = "simkd"
[sweep]
"optim.lr" = [0.05, 0.01]
"distill.factor" = [2, 4]
"optim.weight_decay" = [0.0005, 0.0001]
"""
    + HEAD,
    "cifar100/dkd-r32x4-r8x4-warmup-study": """
name = "cifar100/dkd-r32x4-r8x4-warmup-study"
seeds = [0]
[student]
arch = "resnet8x4"
[distill]
method = "dkd"
[sweep]
"distill.warmup" = [5, 20]
"""
    + HEAD,
}


def top1(epoch: int, ceiling: float = 76.0) -> float:
    return ceiling - 60.0 * math.exp(-epoch / 30)


def seed_big(store: Store) -> dict[str, list[int]]:
    """24 runs: finished seeds, a sweep half done, three running, queued and failed ones."""
    ids = {
        name: [r.id for r in store.submit(reading.loads(text), source=f"experiments/{name}.toml")]
        for name, text in EXPERIMENTS.items()
    }
    every = [i for group in ids.values() for i in group]
    running = every[8:11]
    failed = every[-3]
    queued = set(every[11:18]) | {every[-1]}
    for n, run_id in enumerate(every):
        if run_id in queued:
            continue
        if run_id in running:
            store.update(
                run_id,
                status="running",
                epoch=40 + 30 * running.index(run_id),
                step=391,
                steps_per_epoch=782,
                best_top1=top1(40 + 30 * running.index(run_id)),
                last_top1=top1(40 + 30 * running.index(run_id)) - 0.3,
                images_per_s=6000 + 37 * n,
                eta_s=3600 * (4 - running.index(run_id)) + 60 * n,
                started=T0,
                heartbeat=T0 + 100,
                device="cuda:0",
                gpu=str(running.index(run_id)),
            )
        elif run_id == failed:
            store.update(
                run_id,
                status="failed",
                epoch=3,
                error="RuntimeError: CUDA out of memory",
                started=T0,
                ended=T0 + 60,
            )
        else:
            best = 72.0 + (n % 7) * 0.41
            store.update(
                run_id,
                status="done",
                epoch=240,
                step=0,
                steps_per_epoch=782,
                best_top1=best,
                last_top1=best - 0.2,
                teacher_top1=79.42,
                params=1_230_000,
                images_per_s=5400 + 10 * n,
                started=T0,
                ended=T0 + 3600,
                heartbeat=T0 + 3600,
                device="cuda:0",
                gpu="0",
            )
    rows = []
    for e in range(40):
        for k in range(4):
            step = e * 4 + k
            rows.append((e, step, "train/loss", 2.2 * math.exp(-step / 160) + 0.3))
        rows.append((e, e + 1, "test/top1", top1(e + 1)))
    store.add_metrics(running[0], rows, when=T0 + 100)
    return ids


if __name__ == "__main__":
    home = Path(sys.argv[1]) / ".kdtui"
    s = Store(home)
    seed_big(s)
    print(len(s.runs()), "runs in", home)
