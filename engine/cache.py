"""Exact teacher-logit cache for logit methods (kd, dkd).

With the CIFAR recipe (zero-pad 4, random crop, flip) every training image
has 162 views, and an eval-mode teacher is a pure function of the view. So
the teacher's logits are cached under (sample index, view id), one cache
per (teacher checkpoint, data set, precision): a later epoch, or a later run
with the same teacher, skips the teacher's forward pass for every sample
whose view it has seen. Only the samples that miss go through the teacher.

Layout: a dense slot table of `num_samples * 162` int32 (0 = absent, else
row + 1) and a value table of `capacity` rows of `num_classes` logits in
fp32, fp16 or bf16. The byte limit covers both; once the value table is
full, new views are simply not stored (with uniformly drawn views every
replacement policy gives the same hit rate, and first-come keeps the cache
deterministic). The slot table always lives in host memory and lookups are
host work on the loader's CPU copy of the epoch plan (`Batch.index_cpu`,
`Batch.view_cpu`): hit masks and miss counts never wait for the GPU. In
memory the value table lives on the training device (hits are gathered and
misses stored there; only the indices cross, in one pinned copy); on disk
both tables are shared memory-mapped files under `$KDTUI_HOME/cache/`, so
runs in other processes reuse them (rows are allocated under a file lock;
values are written before the slot that points at them). On a GPU a disk
cache moves the hits to the device through pinned memory and the misses'
new logits back through pinned memory asynchronously; they are written to
the files once that copy has finished (at the latest at the epoch's end).

Exactness: the returned logits are always the *stored* precision converted
back (a miss returns the same rounded values a later hit will), so a run's
targets do not depend on what the cache held. With fp32 storage they equal
the uncached teacher's logits; misses are computed in batches of at least
`MIN_TEACHER_BATCH` rows (padded with other rows of the batch) because
oneDNN picks other kernels for 1-11 rows, which changes the last bits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.core import cachefiles
from engine.core.views import NUM_VIEWS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_TEACHER_BATCH = 16  # also the bucket size of miss batches (few distinct shapes on CUDA)


class CacheError(RuntimeError):
    """The cache cannot be set up (limit too small, incompatible file)."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    dropped: int = 0  # misses not stored because the cache was full
    teacher_rows: int = 0  # rows sent through the teacher (misses + bucket padding)
    history: list[float] = field(default_factory=list)  # hit rate per window

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def reset(self) -> None:
        self.hits = self.misses = self.stored = self.dropped = self.teacher_rows = 0


def capacity_for(limit_bytes: int, num_samples: int, num_classes: int, dtype: torch.dtype) -> int:
    """Value rows that fit in `limit_bytes` next to the slot table (never more than all views)."""
    slot_bytes = num_samples * NUM_VIEWS * cachefiles.SLOT_BYTES
    row_bytes = num_classes * torch.empty((), dtype=dtype).element_size()
    rows = (limit_bytes - slot_bytes) // row_bytes
    if rows < 1:
        need = math.ceil((slot_bytes + row_bytes) / 2**20)
        raise CacheError(
            f"teacher_cache_mb is too small for this data set: the slot table alone needs "
            f"{slot_bytes / 2**20:.1f} MiB ({num_samples} samples x {NUM_VIEWS} views); "
            f"use at least {need}"
        )
    return int(min(rows, num_samples * NUM_VIEWS))


class TeacherCache:
    """(sample index, view id) -> teacher logits, bounded, in memory or on disk."""

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        *,
        dtype: torch.dtype = torch.float16,
        limit_bytes: int = 2048 * 2**20,
        device: torch.device | str = "cpu",
        path: Path | str | None = None,
        key: str = "",
    ):
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.dtype = dtype
        self.key = key
        self.path = Path(path) if path is not None else None
        self.stats = CacheStats()
        self._pending: list[tuple[Any, torch.Tensor, torch.Tensor]] = []  # (event, keys, rows)
        n_slots = self.num_samples * NUM_VIEWS
        if self.path is None:
            self.device = torch.device(device)
            self.capacity = capacity_for(limit_bytes, num_samples, num_classes, dtype)
            self.slots = torch.zeros(n_slots, dtype=torch.int32)  # host: lookups never sync
            self.values = torch.empty(
                self.capacity, self.num_classes, dtype=dtype, device=self.device
            )
            self._count = 0
            self._header = None
        else:
            self.device = torch.device("cpu")  # memory-mapped files live in host memory
            self._open_disk(limit_bytes, n_slots)

    # ---------------------------------------------------------------- disk layout
    def _open_disk(self, limit_bytes: int, n_slots: int) -> None:
        assert self.path is not None
        self.path.mkdir(parents=True, exist_ok=True)
        meta_path = self.path / cachefiles.META
        meta = {
            "format": cachefiles.FORMAT,
            "key": self.key,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        with self._locked():
            if meta_path.exists():
                old = json.loads(meta_path.read_text())
                capacity = int(old.get("capacity", 0))
                if {k: old.get(k) for k in meta} != meta or capacity < 1:
                    raise CacheError(
                        f"teacher cache at {self.path} was written for another teacher, data "
                        f"set or precision; delete that folder to start it afresh"
                    )
            else:
                capacity = capacity_for(limit_bytes, self.num_samples, self.num_classes, self.dtype)
                tmp = meta_path.with_suffix(".tmp")
                tmp.write_text(json.dumps({**meta, "capacity": capacity}, indent=1))
                os.replace(tmp, meta_path)
            # the size is fixed when the cache is created; a smaller limit later does not shrink it
            self.capacity = capacity
            self.slots = torch.from_file(
                str(self.path / cachefiles.SLOTS), shared=True, size=n_slots, dtype=torch.int32
            )
            self.values = torch.from_file(
                str(self.path / cachefiles.VALUES),
                shared=True,
                size=capacity * self.num_classes,
                dtype=self.dtype,
            ).view(capacity, self.num_classes)
            self._header = torch.from_file(
                str(self.path / cachefiles.COUNT), shared=True, size=1, dtype=torch.int64
            )

    @contextlib.contextmanager
    def _locked(self):
        if self.path is None:
            yield
            return
        with open(self.path / cachefiles.LOCK, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- size
    @property
    def count(self) -> int:
        """Value rows in use."""
        return int(self._header[0]) if self._header is not None else self._count

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables (what the limit bounds)."""
        return (
            self.slots.numel() * cachefiles.SLOT_BYTES
            + self.values.numel() * self.values.element_size()
        )

    @property
    def fill(self) -> float:
        """Fraction of all (sample, view) pairs stored."""
        return self.count / (self.num_samples * NUM_VIEWS)

    # ---------------------------------------------------------------- lookup / insert
    def keys(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Slot numbers of (index, view) pairs, on the host (a device input costs one sync)."""
        return index.to("cpu", torch.int64) * NUM_VIEWS + view.to("cpu", torch.int64)

    def hit_rows(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hit mask, value row) of host keys, both on the host; rows of misses are 0."""
        slot = self.slots.index_select(0, keys)
        return slot > 0, (slot.long() - 1).clamp_min(0)

    def lookup(self, index: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hit mask on the host, stored logits on the value table's device); rows of misses
        are garbage."""
        hit, rows = self.hit_rows(self.keys(index, view))
        return hit, self.values.index_select(0, rows.to(self.values.device))

    def insert(self, index: torch.Tensor, view: torch.Tensor, logits: torch.Tensor) -> None:
        """Store logits for the given (index, view) pairs, as many as fit."""
        self.store(self.keys(index, view), logits)

    def store(self, keys: torch.Tensor, logits: torch.Tensor) -> None:
        """Store logits under host keys, as many as fit; logits may be on any device.

        In memory the rows are written on the value table's device (no copy to the host);
        a disk cache fed from a GPU copies them to pinned memory asynchronously and writes
        them in `flush`, so the step does not wait for the copy.
        """
        n = int(keys.shape[0])
        if n == 0:
            return
        if self.path is not None and logits.device.type == "cuda":
            staged = torch.empty(logits.shape, dtype=self.dtype, pin_memory=True)
            staged.copy_(logits, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._pending.append((done, keys, staged))
            return
        with self._locked():
            start = self.count
            k = max(0, min(n, self.capacity - start))
            if k:
                self.values[start : start + k] = logits[:k].to(self.values.device, self.dtype)
                rows = torch.arange(start + 1, start + k + 1, dtype=torch.int32)
                self.slots.index_copy_(0, keys[:k], rows)  # after the values: readers never
                # see a slot that points at an unwritten row
                if self._header is not None:
                    self._header[0] = start + k
                else:
                    self._count = start + k
        self.stats.stored += k
        self.stats.dropped += n - k

    def flush(self, wait: bool = False) -> None:
        """Write the misses whose copy to the host has finished (all of them with `wait`)."""
        while self._pending:
            done, keys, staged = self._pending[0]
            if wait:
                done.synchronize()
            elif not done.query():
                return
            self._pending.pop(0)
            new = self.slots.index_select(0, keys) == 0  # stored meanwhile by another run
            self.store(keys[new], staged[new])

    def gather(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Stored rows (host indices) as a tensor on `device`, without a host sync."""
        if self.values.device == device:
            return self.values.index_select(0, to_device(rows, device))
        if device.type == "cuda":  # disk: gather straight into pinned memory, copy async
            out = torch.empty((rows.shape[0], self.num_classes), dtype=self.dtype, pin_memory=True)
            torch.index_select(self.values, 0, rows.to(self.values.device), out=out)
            return out.to(device, non_blocking=True)
        return self.values.index_select(0, rows.to(self.values.device)).to(device)

    def clear(self) -> None:
        self._pending.clear()
        with self._locked():
            self.slots.zero_()
            if self._header is not None:
                self._header[0] = 0
            self._count = 0


# ---------------------------------------------------------------- keys and reuse
def file_digest(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 of a file (the teacher checkpoint), hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (the training images: the index space of the cache)."""
    h = hashlib.sha256()
    h.update(str(tuple(t.shape)).encode())
    h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:24]


_MEMORY: dict[str, TeacherCache] = {}  # at most one live in-memory cache per process


def open_cache(
    mode: str,
    *,
    key: str,
    num_samples: int,
    num_classes: int,
    dtype: torch.dtype,
    limit_bytes: int,
    device: torch.device,
    home: Path | None = None,
) -> TeacherCache:
    """A cache for `key`: reused from earlier runs in this process (memory) or on disk."""
    if mode == "disk":
        if home is None:
            raise CacheError("a disk teacher cache needs the store directory")
        return TeacherCache(
            num_samples,
            num_classes,
            dtype=dtype,
            limit_bytes=limit_bytes,
            path=cachefiles.folder(home, key),
            key=key,
        )
    cached = _MEMORY.get(key)
    if cached is not None and cached.device == torch.device(device):
        cached.stats = CacheStats()
        return cached
    _MEMORY.clear()  # bounded: never two in-memory caches at once
    cache = TeacherCache(
        num_samples, num_classes, dtype=dtype, limit_bytes=limit_bytes, device=device, key=key
    )
    _MEMORY[key] = cache
    return cache


def forget_memory_caches() -> None:
    _MEMORY.clear()


# ---------------------------------------------------------------- the teacher source
def miss_bucket(misses: int, batch: int, *, round_up: bool = False) -> int:
    """Rows to run through the teacher for `misses` misses in a batch of `batch`.

    At least MIN_TEACHER_BATCH rows (exact CPU kernels, see the module note); with
    `round_up` (CUDA) a multiple of it, so that only batch/16 shapes ever occur.
    """
    if batch <= MIN_TEACHER_BATCH:
        return batch
    if round_up:
        misses = -(-misses // MIN_TEACHER_BATCH) * MIN_TEACHER_BATCH
    return min(batch, max(MIN_TEACHER_BATCH, misses))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory, asynchronously."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def cached_logits(
    cache: TeacherCache,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    index: torch.Tensor,
    view: torch.Tensor,
) -> torch.Tensor:
    """Teacher logits for a batch, computing only the misses (plus bucket padding).

    `index` and `view` should be the host copies of the epoch plan (`Batch.index_cpu`,
    `Batch.view_cpu`): then everything decided per batch (hits, misses, bucket, rows) is
    host work, and the device only gathers, runs the teacher and scatters; nothing waits
    for the GPU. Device tensors work too, at the cost of one sync.
    """
    b = int(x.shape[0])
    dev = x.device
    cache.flush()
    keys = cache.keys(index, view)
    hit, rows = cache.hit_rows(keys)
    n_hit = int(hit.sum())  # a host tensor: no sync
    cache.stats.hits += n_hit
    cache.stats.misses += b - n_hit
    if n_hit == b:
        return cache.gather(rows, dev).float()
    miss = torch.nonzero(~hit).flatten()
    k = int(miss.shape[0])
    n_rows = miss_bucket(k, b, round_up=dev.type == "cuda")
    order = None if n_rows == b else torch.cat([miss, torch.nonzero(hit).flatten()[: n_rows - k]])
    moved = to_device(miss if order is None else torch.cat([miss, order]), dev)  # one copy
    miss_d = moved[:k]
    if order is None:
        fresh = logits_fn(x).index_select(0, miss_d)
    else:  # the misses first, padded with hits up to the bucket size
        fresh = logits_fn(x.index_select(0, moved[k:]))[:k]
    cache.stats.teacher_rows += n_rows
    rounded = fresh.detach().to(cache.dtype)
    cache.store(keys.index_select(0, miss), rounded)
    if n_hit:
        out = cache.gather(rows, dev)
    else:
        out = torch.empty(b, cache.num_classes, dtype=cache.dtype, device=dev)
    out.index_copy_(0, miss_d, rounded)
    return out.float()
