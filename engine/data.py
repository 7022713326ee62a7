"""Data sets and loaders: CIFAR-10/100, digits, synthetic, image folders.

Two loader families yield the same `Batch`:

- `DeviceLoader` keeps a whole in-memory split as uint8 on the device and
  does the CIFAR recipe's augmentation (zero-pad 4, random crop, flip) and
  normalisation as a few batched tensor ops. Its output is bit-identical
  to torchvision's PIL pipeline for the same crop offsets and flips, so
  switching loaders changes speed, not the recipe.
- `TorchDataLoader` is the reference pipeline (PIL transforms in a
  `torch.utils.data.DataLoader`); the benchmark compares against it and
  image folders always use it.

Shuffling and augmentation of epoch e are a pure function of (data seed, e),
drawn on a private CPU generator: resumed runs and runs sharing a data seed
see identical batches on any device (this is what lets a sweep share one
teacher pass and makes resume exact).

A run on several processes (`[run] nproc_per_node`) shards that plan: every
rank draws the same epoch plan and keeps every world-th position from its rank
on (`shard_positions`), so the ranks' first batches together are exactly the
first batch of a one-process run with batch_size x world. The training split
is padded to a multiple of the world size with the plan's first positions, as
torch's DistributedSampler does, so every rank takes the same number of steps;
the test split is not padded (uneven shards; evaluation sums counts).

torchvision is imported lazily: it is slow to import and the device path
for digits/synthetic does not need it.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.core import schema
from engine.core.views import CROPS, PAD, encode_view
from engine.strong_aug import StrongParams, StrongTransform, draw_params, rand_augment_u8

if TYPE_CHECKING:  # pragma: no cover
    from engine.core.schema import DataConfig

STRONG_STREAM = 2  # epoch_seed stream of the strong view's draws (0: order/weak view)
RANK_STREAM = 1000  # DataLoader path, rank r > 0: its workers' augmentation on stream 1000 r

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: the split is part of the data set, not of a run
SYNTHETIC_SEED = 20240917  # fixed: the synthetic data set is the same for every run

IN_MEMORY = ("cifar10", "cifar100", "digits", "synthetic")


class DataError(Exception):
    """A data set that cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int


class Batch(NamedTuple):
    x: Tensor  # normalised float32 (B, C, H, W) on the device
    y: Tensor  # int64 labels on the device
    index: Tensor  # int64 sample indices into the split, on the device
    view: Tensor | None  # int64 view ids (see encode_view); None when unknown
    strong: Tensor | None = None  # the strong view of the same images (MLKD), when asked for
    # host copies of index and view from the epoch plan (DeviceLoader), so the teacher cache
    # decides hits and misses without waiting for the device; None when not known
    index_cpu: Tensor | None = None
    view_cpu: Tensor | None = None

    @classmethod
    def of(cls, x: Tensor, y: Tensor, index: Tensor | None = None) -> Batch:
        """A batch from bare tensors (tests, benchmarks): indices 0..B-1, views unknown."""
        if index is None:
            index = torch.arange(y.shape[0], device=y.device)
        return cls(x, y, index, None)


class Loader(Protocol):
    num_samples: int

    def __len__(self) -> int: ...

    def batches(self, epoch: int) -> Iterator[Batch]: ...


@dataclass
class Data:
    info: DatasetInfo
    train: Loader
    test: Loader  # no augmentation, no shuffling, eval_batch_size


# ------------------------------------------------------------------ seeds and views
_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed generator seed for (data seed, epoch, stream).

    Python's hash() is not stable across versions and seed+epoch collides
    between neighbouring seeds, so mix explicitly.
    """
    h = _splitmix64(seed & _M64)
    h = _splitmix64(h ^ (epoch & _M64))
    h = _splitmix64(h ^ (stream & _M64))
    return h & ((1 << 63) - 1)


def shard_positions(n: int, rank: int, world: int, *, pad: bool) -> Tensor:
    """Positions of an n-long epoch plan that rank `rank` of `world` takes.

    Every world-th position from `rank` on. pad: first append the plan's first positions
    until the length is a multiple of world (DistributedSampler's drop_last=False), so
    every rank gets ceil(n / world); without it the shards differ by at most one and
    together hold each position exactly once (evaluation).
    """
    positions = torch.arange(n)
    if pad and n % world:
        total = -(-n // world) * world
        positions = positions.repeat(-(-total // n))[:total]
    return positions[rank::world]


# ------------------------------------------------------------------ augmentation
def _crop_padded(padded: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, h: int, w: int) -> Tensor:
    """Per-sample crop + flip of already padded images as one gather."""
    b, c, hp, wp = padded.shape
    dev = padded.device
    rows = dy.view(b, 1) + torch.arange(h, device=dev)  # (B, H)
    ar = torch.arange(w, device=dev)
    cols = dx.view(b, 1) + torch.where(flip.view(b, 1).bool(), (w - 1) - ar, ar)  # (B, W)
    lin = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(padded.reshape(b, c, hp * wp), 2, lin).view(b, c, h, w)


def crop_flip_u8(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = PAD) -> Tensor:
    """uint8 (B, C, H, W): zero-pad, crop HxW at (dy, dx) of the padded image, flip where set.

    Same pixels as torchvision's pad(fill=0) -> crop(dy, dx, H, W) -> hflip on PIL images.
    """
    _, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dev = images.device
    return _crop_padded(padded, dy.to(dev), dx.to(dev), flip.to(dev), h, w)


def _stats(values: Sequence[float] | Tensor, device: torch.device) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def normalize_u8(
    images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
) -> Tensor:
    """uint8 -> float in exactly ToTensor's and Normalize's order of operations.

    The order (div 255, then sub mean, then div std, all float32) is what
    makes the result bit-identical to torchvision, not just close.
    """
    m = mean if isinstance(mean, Tensor) else _stats(mean, images.device)
    s = std if isinstance(std, Tensor) else _stats(std, images.device)
    return images.float().div_(255).sub_(m).div_(s)


def augment_batch(
    images: Tensor,
    dy: Tensor,
    dx: Tensor,
    flip: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
) -> Tensor:
    """uint8 batch -> pad-4 crop/flip -> normalised float32 (the training view)."""
    return normalize_u8(crop_flip_u8(images, dy, dx, flip), mean, std)


# ------------------------------------------------------------------ device-resident loader
class EpochPlan(NamedTuple):
    """The order and augmentation of one epoch, on the CPU."""

    index: Tensor  # int64 (N,) sample order
    dy: Tensor  # int64 (N,) crop offsets, per position in `index`
    dx: Tensor
    flip: Tensor
    view: Tensor  # encode_view(dy, dx, flip)


class StrongPlan(NamedTuple):
    """The strong view's draws for one epoch, per position of the epoch's order (CPU)."""

    dy: Tensor  # its own crop offsets and flips, independent of the weak view's
    dx: Tensor
    flip: Tensor
    ops: StrongParams  # RandAugment ops, magnitudes and cutout


class DeviceLoader:
    """A whole split as uint8 on the device; augmentation as batched tensor ops.

    strong: also yield MLKD's strong view (`Batch.strong`): its own crop + flip, then the
    RandAugment + Cutout ops of engine.strong_aug, drawn from a separate stream of the same
    (seed, epoch), so turning it on changes nothing in the weak view.
    rank, world, pad: this process's shard of every epoch plan (`shard_positions`).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        shuffle: bool = True,
        augment: bool = True,
        hflip: bool = True,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        strong: bool = False,
        rank: int = 0,
        world: int = 1,
        pad: bool = True,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be uint8 (N, C, H, W)")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.num_samples = int(images.shape[0])
        self.batch_size = int(batch_size)
        self.seed, self.shuffle, self.augment, self.hflip = seed, shuffle, augment, hflip
        self.channels_last = channels_last
        self.strong = strong
        self._mean = _stats(mean, self.device)
        self._std = _stats(std, self.device)
        self.rank, self.world = int(rank), int(world)
        self._shard = (
            shard_positions(self.num_samples, self.rank, self.world, pad=pad)
            if self.world > 1
            else None
        )
        # images this process sees per epoch (num_samples: the whole split, for per-sample rows)
        self.shard_size = self.num_samples if self._shard is None else int(self._shard.numel())

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def plan(self, epoch: int) -> EpochPlan:
        """This process's part of the epoch's order, offsets and flips: a pure function of
        (seed, epoch) (and of rank and world size when sharded)."""
        p = self._full_plan(epoch)
        if self._shard is None:
            return p
        return EpochPlan(*(t[self._shard] for t in p))

    def _full_plan(self, epoch: int) -> EpochPlan:
        n = self.num_samples
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        index = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.augment:
            dy = torch.randint(0, CROPS, (n,), generator=g)
            dx = torch.randint(0, CROPS, (n,), generator=g)
            flip = torch.randint(0, 2, (n,), generator=g)
            if not self.hflip:
                flip.zero_()
        else:
            dy = torch.full((n,), PAD, dtype=torch.int64)
            dx = dy.clone()
            flip = torch.zeros(n, dtype=torch.int64)
        return EpochPlan(index, dy, dx, flip, encode_view(dy, dx, flip))

    def strong_plan(self, epoch: int) -> StrongPlan:
        """The strong view's draws: a pure function of (seed, epoch), on its own stream."""
        n = self.num_samples
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, STRONG_STREAM))
        dy = torch.randint(0, CROPS, (n,), generator=g)
        dx = torch.randint(0, CROPS, (n,), generator=g)
        flip = torch.randint(0, 2, (n,), generator=g)
        if not self.hflip:
            flip.zero_()
        q = StrongPlan(dy, dx, flip, draw_params(n, g))
        if self._shard is None:
            return q
        k = self._shard
        return StrongPlan(q.dy[k], q.dx[k], q.flip[k], StrongParams(*(t[k] for t in q.ops)))

    def _normalise(self, u8: Tensor) -> Tensor:
        if self.channels_last:
            u8 = u8.contiguous(memory_format=torch.channels_last)  # float ops keep it
        return u8.float().div_(255).sub_(self._mean).div_(self._std)

    def batches(self, epoch: int) -> Iterator[Batch]:
        p = self.plan(epoch)
        dev = self.device
        pin = dev.type == "cuda"  # pinned: the copy does not stall the stream

        def move(t: Tensor) -> Tensor:
            return (t.pin_memory() if pin else t).to(dev, non_blocking=True)

        index, dy, dx, flip, view = (move(t) for t in p)
        sp = None
        if self.strong:
            q = self.strong_plan(epoch)
            sp = StrongPlan(*(move(t) for t in q[:3]), q.ops.to(dev))
        _, _, h, w = self.images.shape
        for s in range(0, self.shard_size, self.batch_size):
            e = s + self.batch_size
            idx = index[s:e]
            raw = self.images.index_select(0, idx)
            u8 = raw
            if self.augment:
                padded = F.pad(raw, (PAD, PAD, PAD, PAD))
                u8 = _crop_padded(padded, dy[s:e], dx[s:e], flip[s:e], h, w)
            strong = None
            if sp is not None:
                padded = F.pad(raw, (PAD, PAD, PAD, PAD))
                su8 = _crop_padded(padded, sp.dy[s:e], sp.dx[s:e], sp.flip[s:e], h, w)
                strong = self._normalise(rand_augment_u8(su8, sp.ops.slice(s, e)))
            x = self._normalise(u8)
            labels = self.labels.index_select(0, idx)
            yield Batch(
                x,
                labels,
                idx,
                view[s:e],
                strong=strong,
                index_cpu=p.index[s:e],
                view_cpu=p.view[s:e],
            )


# ------------------------------------------------------------------ DataLoader path
class _Indexed(torch.utils.data.Dataset):
    """Applies a transform to a PIL-yielding data set and returns the index too.

    With a `strong` transform it also returns the image's strong view (MLKD), drawn after
    the weak one from the same RNG.
    """

    def __init__(self, base: Any, transform: Any, strong: Any = None):
        self.base, self.transform, self.strong = base, transform, strong

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple:
        img, y = self.base[i]
        if self.strong is None:
            return self.transform(img), int(y), i
        return self.transform(img), int(y), i, self.strong(img)

    def targets(self) -> Tensor:
        """Every sample's label, without loading images where the base data set lists them."""
        labels = getattr(self.base, "targets", None)
        if labels is None:
            labels = [self.base[i][1] for i in range(len(self.base))]
        return torch.as_tensor(list(labels), dtype=torch.int64)


class _PILArrays(torch.utils.data.Dataset):
    """uint8 HWC images as PIL, the way torchvision's CIFAR data sets serve them."""

    def __init__(self, data_hwc: np.ndarray, targets: Sequence[int]):
        self.data, self.targets = data_hwc, list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return Image.fromarray(self.data[i]), self.targets[i]


class TorchDataLoader:
    """The reference pipeline: PIL transforms in worker processes.

    Each epoch uses a fresh DataLoader whose generator is seeded from
    (seed, epoch): that fixes the order and, through the worker seeds it
    derives, the augmentation (for a given num_workers, which decides the
    sample-to-worker assignment). With num_workers = 0 the transforms would
    draw from the global RNG, so each batch is fetched under a forked RNG
    seeded from (seed, epoch) instead; the training loop's RNG is untouched.

    On several processes (world > 1) a `ShardSampler` gives each rank its part of one
    permutation drawn from (seed, epoch), the DistributedSampler scheme; each rank's
    augmentation draws come from a stream of its own (RANK_STREAM), so the ranks do not
    crop their images alike.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world: int = 1,
        pad: bool = True,
    ):
        self.dataset = dataset
        self.num_samples = len(dataset)  # type: ignore[arg-type]
        self.batch_size, self.seed, self.shuffle = int(batch_size), seed, shuffle
        self.num_workers = int(num_workers)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.rank, self.world, self.pad = int(rank), int(world), pad
        self.shard_size = (
            len(shard_positions(self.num_samples, self.rank, self.world, pad=pad))
            if self.world > 1
            else self.num_samples
        )

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        stream = RANK_STREAM * self.rank
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, stream))
        order: dict[str, Any] = {"shuffle": self.shuffle}
        if self.world > 1:
            order = {"sampler": ShardSampler(self, epoch)}
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            generator=g,
            **order,
        )

    def _raw(self, epoch: int) -> Iterator[Any]:
        it = iter(self._loader(epoch))
        if self.num_workers > 0:
            yield from it
            return
        stream = 1 + RANK_STREAM * self.rank
        state = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, stream)).get_state()
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                try:
                    item = next(it)
                except StopIteration:
                    return
                state = torch.get_rng_state()
            yield item

    @property
    def labels(self) -> Tensor:
        """Every training sample's label (CPU), e.g. for CRD's negatives of other classes."""
        return self.dataset.targets()  # type: ignore[attr-defined]

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batches(self, epoch: int) -> Iterator[Batch]:
        dev = self.device
        for item in self._raw(epoch):
            x, y, idx = item[:3]
            strong = self._to_device(item[3]) if len(item) > 3 else None
            yield Batch(
                self._to_device(x),
                y.to(dev, non_blocking=True),
                idx.to(dev, non_blocking=True),
                None,
                strong=strong,
            )


class ShardSampler(torch.utils.data.Sampler):
    """A rank's sample indices for one epoch: DistributedSampler's scheme (one permutation
    on every rank, padded to a multiple of the world size, every world-th position), with
    the permutation drawn from (data seed, epoch) like the device loader's."""

    def __init__(self, loader: TorchDataLoader, epoch: int):
        self.n, self.shuffle = loader.num_samples, loader.shuffle
        self.seed, self.epoch = loader.seed, epoch
        self.rank, self.world, self.pad = loader.rank, loader.world, loader.pad

    def order(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        positions = shard_positions(self.n, self.rank, self.world, pad=self.pad)
        return iter(self.order()[positions].tolist())

    def __len__(self) -> int:
        return len(shard_positions(self.n, self.rank, self.world, pad=self.pad))


def _cifar_transforms(size: int, mean, std, *, augment: bool, hflip: bool):
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if not augment:
        return T.Compose(tail), T.Compose(tail)
    aug = [T.RandomCrop(size, padding=PAD)]
    if hflip:
        aug.append(T.RandomHorizontalFlip())
    return T.Compose(aug + tail), T.Compose(tail)


def _strong_transform(crop: Any, mean, std, *, hflip: bool):
    """MLKD's strong view on the DataLoader path: crop (+ flip), the same uint8 ops as the
    device loader (engine.strong_aug), then ToTensor's and Normalize's arithmetic."""
    from torchvision import transforms as T

    ops = [crop] + ([T.RandomHorizontalFlip()] if hflip else [])
    ops += [T.PILToTensor(), StrongTransform(), T.ConvertImageDtype(torch.float32)]
    return T.Compose(ops + [T.Normalize(mean, std)])


def _folder_transforms(size: int, *, augment: bool, hflip: bool):
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    test = T.Compose([T.Resize(int(size * 8 / 7)), T.CenterCrop(size), *tail])
    if not augment:
        return test, test
    aug = [T.RandomResizedCrop(size)]
    if hflip:
        aug.append(T.RandomHorizontalFlip())
    return T.Compose(aug + tail), test


# ------------------------------------------------------------------ data sets
class _Loaded(NamedTuple):
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    info: DatasetInfo
    pil: tuple[Any, Any] | None  # PIL-yielding train/test sets for the DataLoader path


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser()


def _to_nchw(hwc: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(0, 3, 1, 2).contiguous()


def _to_hwc(nchw: Tensor) -> np.ndarray:
    return np.ascontiguousarray(nchw.permute(0, 2, 3, 1).numpy())


def _mean_std(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    f = x.double().div(255).transpose(0, 1).reshape(x.shape[1], -1)
    return (
        tuple(round(v, 4) for v in f.mean(1).tolist()),
        tuple(round(v, 4) for v in f.std(1, unbiased=False).tolist()),
    )


def _load_cifar(cfg: DataConfig) -> _Loaded:
    from torchvision import datasets

    name = cfg.dataset
    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    pretty = "CIFAR-100" if name == "cifar100" else "CIFAR-10"
    root = _root(cfg)
    folder = root / cls.base_folder
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except (RuntimeError, OSError) as e:
        if cfg.download:
            raise DataError(
                f"{pretty}: could not download to {root.resolve()}: {e}. Without network access, "
                f"place the '{cls.base_folder}' folder (from the torchvision archive) there."
            ) from e
        state = "is incomplete or corrupted" if folder.exists() else "was not found"
        raise DataError(
            f"{pretty} {state}: looked for {folder.resolve()}. Set `download = true` in [data] "
            f"to fetch it, or place the '{cls.base_folder}' folder in {root.resolve()} "
            f"(or point `root` in [data] at the folder that holds it)."
        ) from e
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if name == "cifar100" else (CIFAR10_MEAN, CIFAR10_STD)
    info = DatasetInfo(name, len(train.classes), 3, 32, mean, std, len(train), len(test))
    return _Loaded(
        _to_nchw(train.data),
        torch.tensor(train.targets, dtype=torch.int64),
        _to_nchw(test.data),
        torch.tensor(test.targets, dtype=torch.int64),
        info,
        (train, test),  # transform=None: they yield PIL images
    )


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (N, 8, 8) in 0..16 and labels.

    Reads the CSV that `load_digits` reads without importing scikit-learn
    (over a second on a slow box); falls back to `load_digits` if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    locs = list(spec.submodule_search_locations or []) if spec else []
    for loc in locs:
        path = Path(loc) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            a = np.loadtxt(path, delimiter=",")
            return a[:, :-1].reshape(-1, 8, 8), a[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover
        raise DataError("the digits data set needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    return d.images, d.target.astype(np.int64)


def digits_split(labels: Tensor) -> tuple[Tensor, Tensor]:
    """The fixed stratified 80/20 split of digits: sorted train and test indices."""
    g = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    train, test = [], []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(len(idx) * DIGITS_TEST_FRACTION))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _load_digits() -> _Loaded:
    images, target = _digits_raw()
    u8 = torch.from_numpy(images).float().mul(255 / 16).round().clamp(0, 255)  # 8x8 uint8 values
    up = F.interpolate(u8.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)
    x = up.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(target)
    tr, te = digits_split(y)
    mean, std = _mean_std(x[tr])
    info = DatasetInfo("digits", 10, 3, 32, mean, std, len(tr), len(te))
    return _Loaded(x[tr], y[tr], x[te], y[te], info, None)


def _load_synthetic(cfg: DataConfig) -> _Loaded:
    """Class colour + a coarse class pattern + noise: learnable in an epoch, crop/flip-robust."""
    k, s = cfg.num_classes, cfg.image_size
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    colour = torch.rand(k, 3, 1, 1, generator=g) * 0.6 + 0.2
    coarse = torch.rand(k, 3, 4, 4, generator=g) - 0.5
    pattern = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    proto = (colour + 0.4 * pattern).clamp(0, 1)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
        noise = torch.randn(n, 3, s, s, generator=g) * 0.1
        x = (proto[y] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return x, y

    xtr, ytr = make(cfg.train_size)
    xte, yte = make(cfg.test_size)
    mean, std = _mean_std(xtr)
    info = DatasetInfo("synthetic", k, 3, s, mean, std, len(ytr), len(yte))
    return _Loaded(xtr, ytr, xte, yte, info, None)


def _load(cfg: DataConfig) -> _Loaded:
    if cfg.dataset in ("cifar10", "cifar100"):
        return _load_cifar(cfg)
    if cfg.dataset == "digits":
        return _load_digits()
    if cfg.dataset == "synthetic":
        return _load_synthetic(cfg)
    if cfg.dataset == "folder":
        raise DataError("an image folder is not an in-memory data set; use build_data")
    raise DataError(
        f"unknown data set {cfg.dataset!r}; choose one of: folder, {', '.join(IN_MEMORY)}"
    )


def load_arrays(cfg: DataConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, DatasetInfo]:
    """uint8 NCHW train/test images and int64 labels of an in-memory data set."""
    d = _load(cfg)
    return d.x_train, d.y_train, d.x_test, d.y_test, d.info


def _hflip(cfg: DataConfig) -> bool:
    if cfg.hflip == "auto":
        return cfg.dataset != "digits"  # digits are not mirror-symmetric
    return cfg.hflip == "on"


def _build_folder(
    cfg: DataConfig, seed: int, device, channels_last: bool, strong: bool, shard: tuple[int, int]
) -> Data:
    from torchvision import datasets
    from torchvision import transforms as T

    root = _root(cfg)
    dirs = {split: root / split for split in ("train", "val")}
    missing = [str(p.resolve()) for p in dirs.values() if not p.is_dir()]
    if missing:
        raise DataError(
            f"image folder not found: {', '.join(missing)}. A folder data set needs "
            f"{root}/train/<class>/*.png and {root}/val/<class>/*.png (set `root` in [data])."
        )
    try:
        train = datasets.ImageFolder(str(dirs["train"]))
        val = datasets.ImageFolder(str(dirs["val"]))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"image folder {root}: {e}") from e
    if train.classes != val.classes:
        raise DataError(
            f"image folder {root}: train and val have different classes "
            f"({len(train.classes)} vs {len(val.classes)}); they must match by name"
        )
    size = cfg.image_size
    t_train, t_test = _folder_transforms(size, augment=cfg.augment, hflip=_hflip(cfg))
    info = DatasetInfo(
        "folder", len(train.classes), 3, size, IMAGENET_MEAN, IMAGENET_STD, len(train), len(val)
    )
    t_strong = None
    if strong:
        crop = T.RandomResizedCrop(size)
        t_strong = _strong_transform(crop, IMAGENET_MEAN, IMAGENET_STD, hflip=_hflip(cfg))
    return _dataloader_data(
        info, cfg, (train, t_train, t_strong), (val, t_test), seed, device, channels_last, shard
    )


def _dataloader_data(
    info, cfg: DataConfig, train, test, seed, device, channels_last, shard: tuple[int, int]
) -> Data:
    """The reference pipeline's train/test pair: (data set, transform[, strong]) each."""
    common = {
        "seed": seed,
        "num_workers": cfg.num_workers,
        "device": device,
        "channels_last": channels_last,
        "rank": shard[0],
        "world": shard[1],
    }
    return Data(
        info,
        TorchDataLoader(_Indexed(*train), batch_size=cfg.batch_size, shuffle=True, **common),
        TorchDataLoader(
            _Indexed(*test), batch_size=cfg.eval_batch_size, shuffle=False, pad=False, **common
        ),
    )


def build_data(
    cfg: DataConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    strong: bool = False,
    rank: int = 0,
    world: int = 1,
) -> Data:
    """Data set + train/test loaders for a run.

    `seed` is the run's seed; `cfg.data_seed` (when >= 0) overrides it so
    runs with different model seeds can still share batches. `loader =
    "device"` on a folder falls back to the DataLoader path (folders do not
    fit in memory in general). `strong`: training batches also carry MLKD's
    strong view (`Batch.strong`; see `engine.core.schema.strong_view`). rank, world: this
    process's shard of a run on several processes (module docstring).
    """
    data_seed = schema.data_seed(cfg, seed)
    device = torch.device(device)
    shard = (rank, world)
    if cfg.dataset == "folder":
        return _build_folder(cfg, data_seed, device, channels_last, strong, shard)
    d = _load(cfg)
    info, hflip = d.info, _hflip(cfg)
    if cfg.loader in ("auto", "device"):
        common = {
            "mean": info.mean,
            "std": info.std,
            "seed": data_seed,
            "device": device,
            "channels_last": channels_last,
            "rank": rank,
            "world": world,
        }
        train = DeviceLoader(
            d.x_train,
            d.y_train,
            batch_size=cfg.batch_size,
            shuffle=True,
            augment=cfg.augment,
            hflip=hflip,
            strong=strong,
            **common,
        )
        test = DeviceLoader(
            d.x_test,
            d.y_test,
            batch_size=cfg.eval_batch_size,
            shuffle=False,
            augment=False,
            hflip=False,
            pad=False,
            **common,
        )
        return Data(info, train, test)
    if cfg.loader != "dataloader":
        raise DataError(f"unknown loader {cfg.loader!r}; choose auto, device or dataloader")
    if d.pil is not None:
        pil_train, pil_test = d.pil
    else:
        pil_train = _PILArrays(_to_hwc(d.x_train), d.y_train.tolist())
        pil_test = _PILArrays(_to_hwc(d.x_test), d.y_test.tolist())
    t_train, t_test = _cifar_transforms(
        info.image_size, info.mean, info.std, augment=cfg.augment, hflip=hflip
    )
    t_strong = None
    if strong:
        from torchvision import transforms as T

        crop = T.RandomCrop(info.image_size, padding=PAD)
        t_strong = _strong_transform(crop, info.mean, info.std, hflip=hflip)
    return _dataloader_data(
        info,
        cfg,
        (pil_train, t_train, t_strong),
        (pil_test, t_test),
        data_seed,
        device,
        channels_last,
        shard,
    )


# ------------------------------------------------------------------ benchmark helper
def time_loader(loader: Loader, epochs: int = 1, *, start_epoch: int = 0) -> float:
    """Images per second through `loader.batches` (CUDA-synchronised), for `kdtui bench`."""
    n = 0
    cuda = False
    t0 = time.perf_counter()
    for e in range(start_epoch, start_epoch + epochs):
        for b in loader.batches(e):
            n += b.x.shape[0]
            cuda = cuda or b.x.is_cuda
    if cuda:
        torch.cuda.synchronize()
    return n / max(time.perf_counter() - t0, 1e-9)
