"""A disk teacher-logit cache's files, torch-free: engine.cache writes them, `kdtui cache`
lists and clears them.

One folder per cache key under the store's cache/ (engine.core.layout):

    cache/teacher-<key>/
        meta.json     format, key, num_samples, num_classes, dtype, capacity (fixed at creation)
        slots.i32     num_samples * NUM_VIEWS int32: 0 = absent, else value row + 1
        values.bin    capacity rows of num_classes logits in the stored dtype
        count.i64     value rows in use (one little-endian int64)
        lock          flock'ed while rows are allocated
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from engine.core.layout import CACHE
from engine.core.views import NUM_VIEWS

FORMAT = 1  # on-disk layout version
PREFIX = "teacher-"
META, SLOTS, VALUES, COUNT, LOCK = "meta.json", "slots.i32", "values.bin", "count.i64", "lock"
SLOT_BYTES = 4  # one int32 per (sample, view)
DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # meta.json -> [run]


def folder(home: str | Path, key: str) -> Path:
    """Where the disk cache of `key` lives in the store at `home`."""
    return Path(home) / CACHE / f"{PREFIX}{key}"


def caches(home: Path) -> list[dict]:
    """Every cache folder under the store, with what its files say (`broken`: no meta.json)."""
    out = []
    for path in sorted((Path(home) / CACHE).glob(f"{PREFIX}*")):
        info: dict = {"name": path.name.removeprefix(PREFIX), "path": path}
        try:
            info.update(json.loads((path / META).read_text()))
        except (OSError, ValueError):
            info["broken"] = True
        try:
            info["rows"] = struct.unpack("<q", (path / COUNT).read_bytes()[:8])[0]
        except (OSError, struct.error):
            info["rows"] = 0
        info["bytes"] = sum(f.stat().st_blocks * 512 for f in path.iterdir() if f.is_file())
        info["views"] = info.get("num_samples", 0) * NUM_VIEWS  # every (sample, view) pair
        out.append(info)
    return out
