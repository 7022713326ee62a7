"""What every benchmark part builds on: its config, synthetic CIFAR-shaped data, loaders
and experiments. bench.core (the parts) and bench.scaling (the DDP part's processes) both
import it, so neither imports the other."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from engine.core import schema
from engine.data import Batch, DeviceLoader
from engine.train import Runtime

PARTS = ("threads", "loader", "step", "fused", "cache", "scaling", "compile")
DEFAULT_PARTS = PARTS[:-1]  # `compile` (minutes of cold compiling on a CPU) only when asked


@dataclass
class BenchConfig:
    quick: bool = False
    device: str = "auto"
    teacher: str = ""
    student: str = ""
    batch: int = 64
    classes: int = 100
    images: int = 0
    steps: int = 0
    warmup: int = 0
    repeats: int = 0
    sweep: int = 5
    workers: int = -1
    compile: bool | None = None
    threads: int = 0
    procs: int = 0  # scaling: processes (0: every visible GPU; CPUs only when given)
    parts: tuple[str, ...] = DEFAULT_PARTS
    notes: list[str] = field(default_factory=list)

    def resolve(self, cuda: bool) -> BenchConfig:
        c = copy.deepcopy(self)
        if c.quick:
            c.teacher = c.teacher or "resnet20"
            c.student = c.student or "resnet8"
            c.images = c.images or 1024
            c.steps = c.steps or 4
            c.warmup = c.warmup or 1
            c.repeats = c.repeats or 2
        else:
            c.teacher = c.teacher or "resnet32x4"
            c.student = c.student or "resnet8x4"
            c.images = c.images or (50_000 if cuda else 2048)
            c.steps = c.steps or (50 if cuda else 6)  # 3 CPU steps proved too noisy
            c.warmup = c.warmup or (10 if cuda else 1)
            c.repeats = c.repeats or 3
        if c.compile is None:
            c.compile = cuda and not c.quick
        if c.workers < 0:
            # the published recipe uses 8 workers on a GPU box; on a small CPU box the
            # workers would steal the cores the model needs, so the reference loads in-process
            c.workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if cuda else 0
        return c


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- data
def _synthetic_arrays(c: BenchConfig, seed: int = 0):
    """uint8 CIFAR-shaped images, labels, mean and std, made on the CPU."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c.classes, (c.images,), generator=g)
    proto = torch.rand(c.classes, 3, 1, 1, generator=g)
    x = (proto[y] * 200 + torch.randint(0, 56, (c.images, 3, 32, 32), generator=g)).to(torch.uint8)
    return x, y


def _data_config(c: BenchConfig) -> schema.DataConfig:
    d = schema.DataConfig()
    d.dataset, d.batch_size, d.num_classes = "synthetic", c.batch, c.classes
    return d


def _device_loader(c: BenchConfig, x, y, runtime: Runtime, seed: int = 0) -> DeviceLoader:
    return DeviceLoader(
        x,
        y,
        batch_size=c.batch,
        mean=MEAN,
        std=STD,
        seed=seed,
        device=runtime.device,
        channels_last=runtime.channels_last,
    )


MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # CIFAR-100's


def _reference_loader(c: BenchConfig, x, y, device: torch.device):
    from torchvision import transforms as T

    from engine.data import _Indexed, _PILArrays, _to_hwc

    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    ds = _Indexed(_PILArrays(_to_hwc(x), y.tolist()), tf)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=c.batch,
        shuffle=True,
        num_workers=c.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=c.workers > 0,
    )


def _endless_reference(loader) -> Iterator:
    while True:
        yield from loader


def _endless(loader: DeviceLoader, start_epoch: int = 0) -> Iterator[Batch]:
    e = start_epoch
    while True:
        for b in loader.batches(e):
            if b.x.shape[0] == loader.batch_size:  # full batches only: one shape
                yield b
        e += 1


# ---------------------------------------------------------------- configs and members
def _experiment(c: BenchConfig, method: str, lr: float, runtime_cfg: schema.RunConfig):
    exp = schema.Experiment()
    exp.name = f"bench-{method}"
    exp.seeds = [0]
    exp.data = _data_config(c)
    exp.teacher.arch = c.teacher
    exp.student.arch = c.student
    exp.distill.method = method
    exp.optim.lr = lr
    exp.optim.epochs = 240
    exp.run = copy.deepcopy(runtime_cfg)
    return exp
