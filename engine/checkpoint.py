"""Checkpoint files on disk: sealed with a checksum, replaced atomically, one generation kept.

Torch-free: the CLI checks a run's checkpoints before it re-queues a resume,
and the worker uses the same ranking before loading one with torch.

- A checkpoint is what `torch.save` writes (a zip archive), so plain
  `torch.load` and RepDistiller-style loaders read it unchanged. The seal is
  the zip's archive comment, `kdtui-checkpoint epoch=N sha256=HEX`, where
  HEX is the SHA-256 of every byte before the zip's end record. Any flipped
  or missing byte is caught here, before torch reads the file.
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
import hashlib
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine import faults, safefs

NAMES = ("last.pth", "prev.pth", "best.pth")  # preference order on equal epochs
MAGIC = "kdtui-checkpoint"
EOCD = b"PK\x05\x06"  # zip end-of-central-directory signature
EOCD_SIZE = 22
_SEAL = re.compile(rf"^{MAGIC} epoch=(\d+) sha256=([0-9a-f]{{64}})$")
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
    problem: str | None = None  # None: usable (sealed and intact, or unsealed and unverified)

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


def _sha256(fd: int, end: int) -> str:
    h = hashlib.sha256()
    pos = 0
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
        if not chunk:
            break
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def seal(f: BinaryIO, epoch: int) -> None:
    """Turn the zip just written to `f` into a sealed checkpoint (comment = epoch + checksum)."""
    f.flush()
    fd = f.fileno()
    size = os.fstat(fd).st_size
    tail = os.pread(fd, EOCD_SIZE, size - EOCD_SIZE) if size >= EOCD_SIZE else b""
    if len(tail) != EOCD_SIZE or tail[:4] != EOCD or tail[20:22] != b"\0\0":
        raise CheckpointError(f"{f.name}: not a zip archive as torch.save writes it")
    digest = _sha256(fd, size - EOCD_SIZE)
    comment = f"{MAGIC} epoch={int(epoch)} sha256={digest}".encode()
    os.pwrite(fd, struct.pack("<H", len(comment)) + comment, size - 2)


def inspect(path: Path) -> Info:
    """Check one checkpoint file without loading it (reads it once, never through a symlink)."""
    path = Path(path)
    try:
        fd = safefs.open_fd(path, os.O_RDONLY)
    except FileNotFoundError:
        return Info(path, False)
    except safefs.UnsafePath:
        return Info(path, True, problem="is a symbolic link (not used)")
    except OSError as e:
        return Info(path, True, problem=f"cannot be read ({e.strerror})")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Info(path, True, problem="is not a regular file")
        size = st.st_size
        span = min(size, EOCD_SIZE + 0xFFFF)
        tail = os.pread(fd, span, size - span) if span else b""
        at = tail.rfind(EOCD)
        if at < 0 or len(tail) - at < EOCD_SIZE:
            return Info(path, True, problem="is truncated or corrupted (no zip end record)")
        length = struct.unpack("<H", tail[at + 20 : at + 22])[0]
        if at + EOCD_SIZE + length != len(tail):
            return Info(path, True, problem="is truncated or corrupted (bad zip end record)")
        comment = tail[at + EOCD_SIZE :].decode(errors="replace")
        if not comment:
            return Info(path, True)  # written before checksums: torch checks what it can
        m = _SEAL.match(comment)
        if m is None:
            return Info(path, True, problem="has an unknown seal (not a kdtui checkpoint)")
        if _sha256(fd, size - len(tail) + at) != m.group(2):
            return Info(path, True, int(m.group(1)), True, "fails its checksum (corrupted)")
        return Info(path, True, int(m.group(1)), True)
    except OSError as e:
        return Info(path, True, problem=f"cannot be read ({e.strerror})")
    finally:
        os.close(fd)


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


def problems(infos: Iterable[Info]) -> list[str]:
    """One phrase per checkpoint that exists but cannot be used."""
    return [f"{i.path} {i.problem}" for i in infos if i.exists and i.problem]


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
