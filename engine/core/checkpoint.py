"""Checkpoint files on disk: checksummed, sealed, replaced atomically, one generation kept.

Torch-free: the CLI checks a run's checkpoints before it re-queues a resume,
and the worker uses the same ranking before loading one with torch.

- A checkpoint is what `torch.save` writes (a zip archive), so plain
  `torch.load` and RepDistiller-style loaders read it unchanged. Its
  checksums are the zip's own: torch.save stores a CRC-32 of every record
  (the pickle and each tensor's bytes), and `inspect` recomputes them all
  before torch reads the file, so a flipped byte or a torn write is named
  here. That costs nothing when saving; a SHA-256 of the file, tried first,
  doubled the time to save a 57 MiB resnet32x4 checkpoint (172 -> 348 ms).
  The seal is the zip's archive comment, `kdtui-checkpoint epoch=N`: it
  marks a file this code wrote whole and says which epoch it holds without
  loading it.
- `write` saves to `NAME.tmp` (created exclusively, never through a
  symlink), seals and fsyncs it, then for `last.pth` hard-links the current
  file to `prev.pth` before `os.replace` puts the new one in place: at any
  kill point `last.pth` is a whole checkpoint, and `prev.pth` is the one
  before it.
- `ranked` orders a run's valid checkpoints newest first (last, prev and
  best all hold a full training state), so a resume never silently starts
  over when `last.pth` is gone or damaged.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from engine.core import faults, layout, liveness, safefs

if TYPE_CHECKING:  # pragma: no cover
    from engine.core.store import Run

NAMES = layout.CHECKPOINTS  # preference order on equal epochs
MAGIC = "kdtui-checkpoint"
EOCD = b"PK\x05\x06"  # zip end-of-central-directory signature
EOCD_SIZE = 22
_SEAL = re.compile(rf"^{MAGIC} epoch=(\d+)$")
_CHUNK = 1 << 20


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names it and says why."""


@dataclass
class Info:
    """What is on disk under one checkpoint name."""

    path: Path
    exists: bool
    epoch: int | None = None  # completed epochs, from the seal
    sealed: bool = False
    problem: str | None = None  # None: usable (every record passes its CRC-32)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.exists and self.problem is None

    def describe(self) -> str:
        if not self.exists:
            return f"{self.name} missing"
        return f"{self.name} {self.problem}" if self.problem else f"{self.name} ok"


# ---------------------------------------------------------------- sealing and checking


def seal(f: BinaryIO, epoch: int) -> None:
    """Mark the zip just written to `f` as a whole kdtui checkpoint of `epoch` epochs."""
    f.flush()
    fd = f.fileno()
    size = os.fstat(fd).st_size
    tail = os.pread(fd, EOCD_SIZE, size - EOCD_SIZE) if size >= EOCD_SIZE else b""
    if len(tail) != EOCD_SIZE or tail[:4] != EOCD or tail[20:22] != b"\0\0":
        raise CheckpointError(f"{f.name}: not a zip archive as torch.save writes it")
    comment = f"{MAGIC} epoch={int(epoch)}".encode()
    os.pwrite(fd, struct.pack("<H", len(comment)) + comment, size - 2)


def inspect(path: Path) -> Info:
    """Check one checkpoint without loading it: its seal and every record's CRC-32 (reads it
    once, never through a symlink)."""
    path = Path(path)
    try:
        fd = safefs.open_fd(path, os.O_RDONLY)
    except FileNotFoundError:
        return Info(path, False)
    except safefs.UnsafePath:
        return Info(path, True, problem="is a symbolic link (not used)")
    except OSError as e:
        return Info(path, True, problem=f"cannot be read ({e.strerror})")
    with os.fdopen(fd, "rb") as f:
        try:
            size = os.fstat(fd).st_size
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return Info(path, True, problem="is not a regular file")
            span = min(size, EOCD_SIZE + 0xFFFF)
            tail = os.pread(fd, span, size - span) if span else b""
            at = tail.rfind(EOCD)
            if at < 0 or len(tail) - at < EOCD_SIZE:
                return Info(path, True, problem="is damaged (truncated: no zip end record)")
            length = struct.unpack("<H", tail[at + 20 : at + 22])[0]
            if at + EOCD_SIZE + length != len(tail):
                return Info(path, True, problem="is damaged (truncated: bad zip end record)")
            m = _SEAL.match(tail[at + EOCD_SIZE :].decode(errors="replace"))
            epoch = int(m.group(1)) if m else None  # unsealed: written before seals, or elsewhere
            bad = zipfile.ZipFile(f).testzip()
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
            return Info(path, True, problem=f"is damaged ({e})")
        except OSError as e:
            return Info(path, True, problem=f"cannot be read ({e.strerror or e})")
    if bad is not None:
        return Info(path, True, epoch, m is not None, f"is damaged (checksum of {bad} fails)")
    return Info(path, True, epoch, m is not None)


def verify(path: Path) -> Info:
    """`inspect`, raising CheckpointError (naming the file) when it is missing or damaged."""
    info = inspect(path)
    if not info.exists:
        raise CheckpointError(f"{path}: no such checkpoint")
    if info.problem:
        raise CheckpointError(f"{path} {info.problem}")
    return info


# ---------------------------------------------------------------- writing


def write(
    path: Path, dump: Callable[[BinaryIO], None], *, epoch: int, keep_prev: bool = False
) -> Path:
    """Write a sealed checkpoint to `path` atomically (see the module docstring).

    `dump(f)` writes the payload (torch.save). A full disk raises
    safefs.DiskFull naming `path`; the temp file never stays behind.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with safefs.create_new(tmp) as f:
            dump(f)
            seal(f, epoch)
            f.flush()
            os.fsync(f.fileno())
        if keep_prev:
            _keep_previous(path, epoch)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if safefs.is_disk_full(e):
            raise safefs.DiskFull(path) from e
        raise
    safefs.fsync_dir(path.parent)
    return path


def _keep_previous(path: Path, epoch: int) -> None:
    """prev.pth := the current last.pth (a hard link, so last.pth stays in place throughout)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        return
    prev = path.with_name("prev" + path.suffix)
    link = prev.with_name(prev.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    try:
        os.link(path, link, follow_symlinks=False)
    except OSError:  # no hard links on this file system: copy instead
        with open(path, "rb") as src, safefs.create_new(link) as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
    os.replace(link, prev)
    faults.point("prev", epoch)


def clean_temp(run_dir: Path) -> list[Path]:
    """Remove half-written checkpoints a killed process left (`*.pth.tmp`)."""
    removed = []
    with contextlib.suppress(OSError):
        for p in Path(run_dir).glob("*.pth.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


# ---------------------------------------------------------------- choosing one to resume from


def survey(run_dir: Path) -> list[Info]:
    return [inspect(Path(run_dir) / name) for name in NAMES]


def ranked(infos: Iterable[Info]) -> list[Info]:
    """Usable checkpoints, newest first: sealed ones by epoch, then unsealed (older kdtui)."""
    infos = [i for i in infos if i.ok]
    sealed = sorted((i for i in infos if i.sealed), key=lambda i: (-i.epoch, NAMES.index(i.name)))
    return sealed + [i for i in infos if not i.sealed]


def set_aside_bad(infos: Iterable[Info]) -> list[Path]:
    """Move damaged checkpoints out of the way (kept as NAME.corrupt-STAMP.pth)."""
    moved = []
    for i in infos:
        if i.exists and i.problem and "symbolic link" not in i.problem:
            target = safefs.set_aside(i.path, "corrupt")
            if target is not None:
                moved.append(target)
    return moved


def refusal(run_id: int, run_dir: Path, found: Iterable[str]) -> str:
    """Why a run with finished epochs cannot resume, and how to start it over."""
    return (
        f"run {run_id} cannot resume: no valid checkpoint in {run_dir} ({'; '.join(found)}); "
        f"`kdtui resume {run_id} --restart` starts it over from epoch 0"
    )


def resume_check(r: Run, restart: bool = False) -> tuple[str | None, str | None]:
    """(why it cannot resume, what to tell the user first) for one run; torch-free.

    Failed, cancelled and dead (running, process gone) runs resume. Without
    --restart a run that finished epochs needs a valid checkpoint (last.pth,
    else prev.pth or best.pth, whichever is newest): the worker never starts
    over silently.
    """
    if r.status not in ("failed", "cancelled") and not liveness.process_gone(r):
        return f"run {r.id} is {r.status}; only failed, cancelled or dead runs resume", None
    if restart:
        return None, None
    infos = survey(r.path)
    usable = ranked(infos)
    if not usable:
        if r.epoch == 0 and not any(i.exists for i in infos):
            return None, None  # it never finished an epoch: nothing to lose
        return refusal(r.id, r.path, [i.describe() for i in infos]), None
    last, use = infos[0], usable[0]
    if last.ok:
        return None, None
    at = f" at epoch {use.epoch}" if use.epoch is not None else ""
    why = "is missing" if not last.exists else last.problem
    return None, f"run {r.id}: last.pth {why}; it resumes from {use.path}{at}"
