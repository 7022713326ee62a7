"""One training step on several processes, for tests/test_ddp.py (run under torchrun).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_step.py OUT TEACHER

Each rank builds every method's member the way the worker does (its shard of epoch 0's plan
from engine.data, `build_member`, `data_parallel`), takes the first training step of the
run and evaluates on its shard of the test split; rank 0 saves what DDP left in the
parameters' .grad (the gradient averaged over the ranks), CRD's memory banks and the
evaluation to OUT. The test computes the same in one process on the concatenated batch
(`first_step` with the single group) and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from engine import distributed
from engine.core import reading, schema
from engine.data import build_data
from engine.distributed import SINGLE, Group
from engine.train import (
    build_member,
    data_parallel,
    evaluate,
    load_teacher,
    pick_runtime,
    plain_teacher_source,
    sync_buffers,
    train_step,
)

METHODS = ("vanilla", "kd", "simkd", "crd")
WORLD = 2
BATCH = 16  # per rank; one process steps on WORLD * BATCH
TEACHER = "resnet14"


def experiment(
    method: str, batch: int, world: int, teacher: str, loader: str = "device"
) -> schema.Experiment:
    return reading.loads(
        f"""
name = "ddp-step"
[data]
dataset = "digits"
batch_size = {batch}
loader = "{loader}"
num_workers = 0
[teacher]
arch = "{TEACHER}"
checkpoint = "{teacher}"
[student]
arch = "resnet8"
[distill]
method = "{method}"
[optim]
epochs = 2
[run]
device = "cpu"
threads = 1
nproc_per_node = {world}
""",
        file="ddp_step.toml",
    )


def first_step(
    method: str, teacher_path: str, group: Group, *, bn: str, loader: str = "device"
) -> dict:
    """The first step of a run with `method`, on this process's shard.

    bn = "eval": BatchNorm normalises with its (initial) running statistics, so the loss is
    a mean of per-sample terms and the step on two shards equals the step on their union;
    "train": each process normalises with its own shard's batch statistics (what a
    data-parallel run without sync_bn does), which makes the two differ.
    """
    cfg = experiment(method, BATCH * WORLD // group.world, group.world, teacher_path, loader)
    runtime = pick_runtime(cfg.run, group)
    distributed.init(group, runtime.device)
    data = build_data(cfg.data, seed=0, rank=group.rank, world=group.world)
    teacher = None
    if cfg.method.needs_teacher:
        teacher = load_teacher(TEACHER, teacher_path, data.info.num_classes).eval()
    m = build_member(
        method,
        cfg,
        teacher,
        data.info.num_classes,
        runtime,
        Path("."),
        input_shape=(1, 3, 32, 32),
        train_labels=data.train.labels.cpu(),
    )
    if group.parallel:
        data_parallel(m)
    m.distiller.train()
    if bn == "eval":
        for module in m.distiller.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    m.distiller.eval()
    before = evaluate(m.distiller.forward_test, data.test, runtime)  # the same model everywhere
    m.distiller.train()
    if bn == "eval":
        for module in m.distiller.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    source = plain_teacher_source(teacher, runtime) if teacher is not None else None
    batch = next(iter(data.train.batches(0)))
    t_out = source(batch) if source is not None else None
    for g in m.optimizer.param_groups:
        g["lr"] = cfg.optim.lr
    loss, _, _ = train_step(m, batch, t_out, 0, runtime)
    trained = [
        (n, p)
        for n, p in m.distiller.named_parameters()
        if p.requires_grad and not n.startswith("teacher.")
    ]
    out = {
        "loss": distributed.mean_dict(group, {"loss": float(loss)}, runtime.device)["loss"],
        "grads": {n: None if p.grad is None else p.grad.detach().clone() for n, p in trained},
        "params": {n: p.detach().clone() for n, p in trained},
        "samples": distributed.sum_numbers(group, [float(batch.y.numel())], runtime.device)[0],
    }
    memory = getattr(m.distiller, "memory", None)
    if memory is not None:  # CRD
        out["banks"] = {k: v.detach().clone() for k, v in memory.state_dict().items()}
    sync_buffers(m, group)
    m.distiller.eval()
    out["eval"] = evaluate(m.distiller.forward_test, data.test, runtime)
    out["eval_before"] = before
    return out


def main() -> None:
    out, teacher = sys.argv[1], sys.argv[2]
    group = distributed.from_env() or SINGLE
    results = {
        (method, bn): first_step(method, teacher, group, bn=bn)
        for method in METHODS
        for bn in ("eval", "train")
    }
    # the reference DataLoader path: its own permutation, so only the evaluation compares
    results[("dataloader", "eval")] = first_step(
        "vanilla", teacher, group, bn="eval", loader="dataloader"
    )
    if group.main:
        torch.save(results, out)
    distributed.shutdown()


if __name__ == "__main__":
    main()
