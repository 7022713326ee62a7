"""Files of the store, opened so that nobody else's file is ever touched. Torch-free.

A store is trusted only when its directory belongs to the current user and
no one else may write to it (`check_private_dir`). Inside it, every file
the engine, the workers and the CLI write is opened with O_NOFOLLOW (a
symlink planted in place of `engine.lock` or `log.txt` is an error, not a
way to truncate or append to another file), new files are created with
O_EXCL, and run folders are removed only through a real `runs/` directory
(`remove_run_dir`). A full disk is recognised wherever it surfaces
(OSError ENOSPC, torch's wrapped writer error, SQLite's "disk is full")
and reported as "no space left on device: PATH" (`DiskFull`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO

from engine.core.layout import RUN_DIR_NAME

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class UnsafePath(OSError):
    """A store file or folder that is not what it must be (a symlink, someone else's)."""


class DiskFull(OSError):
    """No space left for a write; names the file that could not be written."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        super().__init__(errno.ENOSPC, f"no space left on device: {self.path}")

    def __str__(self) -> str:
        return f"no space left on device: {self.path}"


# ---------------------------------------------------------------- recognising a full disk


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc` (or what it wraps) is a full disk or an exhausted quota."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def full_path(exc: BaseException, default: str | os.PathLike) -> str:
    """The file named by a disk-full error, else `default`."""
    while exc is not None:
        if isinstance(exc, DiskFull):
            return exc.path
        if isinstance(exc, OSError) and exc.filename:
            return os.fspath(exc.filename)
        exc = exc.__cause__ or exc.__context__
    return os.fspath(default)


def low_on_space(path: str | os.PathLike, below: int = 1 << 20) -> bool:
    """Whether the file system holding `path` has less than `below` bytes free."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < below


# ---------------------------------------------------------------- trusting a directory


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_private_dir(path: Path, what: str = "store") -> None:
    """Refuse a directory that is not ours or that others may write to (UnsafePath says why).

    A symlink to the directory is followed, but the link itself must be ours
    (or root's) too: a link planted by someone else is refused.
    """
    me = os.geteuid()
    lst = os.lstat(path)
    if stat.S_ISLNK(lst.st_mode) and lst.st_uid not in (me, 0):
        raise UnsafePath(
            f"{what} {path} is a symbolic link owned by {_owner(lst.st_uid)}, not by you: "
            "kdtui trusts only a store that is yours alone; use your own, e.g. "
            "`export KDTUI_HOME=~/.kdtui`"
        )
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{what} {path} is not a directory")
    if st.st_uid != me:
        raise UnsafePath(
            f"{what} {path} is owned by {_owner(st.st_uid)}, not by you ({_owner(me)}): "
            "whoever owns it can plant links that make kdtui overwrite or delete your files. "
            "Use a store of your own (`export KDTUI_HOME=~/.kdtui`, or run from another "
            f"folder), or, if it is yours, `chown -R {_owner(me).split()[0]} {path}`"
        )
    if st.st_mode & 0o022:
        who = "group- and world-writable" if st.st_mode & 0o002 else "group-writable"
        if st.st_mode & 0o002 and not st.st_mode & 0o020:
            who = "world-writable"
        raise UnsafePath(
            f"{what} {path} is {who} (mode {stat.S_IMODE(st.st_mode):04o}): anyone who may "
            "write there can plant links that make kdtui overwrite or delete your files. "
            f"`chmod 700 {path}` makes it yours alone"
        )


def refuse_link(path: Path) -> None:
    """A store file that exists as a symbolic link is refused (it must be a real file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(
            f"{path} is a symbolic link; kdtui never writes through links in its store. "
            "Remove it if you did not make it, and check who else can write to "
            f"{path.parent}"
        )


# ---------------------------------------------------------------- opening without following


def open_fd(path: str | os.PathLike, flags: int, mode: int = 0o600) -> int:
    """os.open that never follows a final symlink (UnsafePath when one is there)."""
    try:
        return os.open(path, flags | NOFOLLOW | CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(
                f"{os.fspath(path)} is a symbolic link; kdtui never writes through links "
                "in its store. Remove it if you did not make it"
            ) from None
        raise


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append to a log file (created private), never through a symlink."""
    fd = open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = text.encode()
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except OSError as e:
        if e.errno in FULL_ERRNOS:
            raise DiskFull(path) from e
        raise
    finally:
        os.close(fd)


def read_bytes(path: str | os.PathLike) -> bytes:
    """A whole small file, not through a symlink."""
    fd = open_fd(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode()


def create_new(path: str | os.PathLike, mode: str = "w+b") -> BinaryIO:
    """A new private file at `path` (a stale one is removed first; a symlink is never followed)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # unlink removes a link itself, never its target
    fd = open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    return os.fdopen(fd, mode)


def write_new(path: str | os.PathLike, text: str) -> None:
    """Write a file that must not exist yet (O_EXCL: a planted link or file is an error)."""
    try:
        fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        refuse_link(Path(path))  # say so when what is in the way is a link
        raise
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`; the temp file is removed if anything fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with create_new(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # replaces a link itself, never its target
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            raise DiskFull(path) from e
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- removing a run folder


def remove_run_dir(runs_dir: Path, run_dir: Path) -> str | None:
    """Delete one run's folder, only as a real directory inside the real `runs_dir`.

    Returns None when removed (or already gone), else why it was kept. Works
    on an opened `runs_dir` descriptor (O_NOFOLLOW), so a `runs` symlink, a
    run folder that is a symlink, or a swap made while deleting never lead
    outside the store.
    """
    run_dir = Path(os.path.abspath(run_dir))
    runs_dir = Path(os.path.abspath(runs_dir))
    name = run_dir.name
    if run_dir.parent != runs_dir or not RUN_DIR_NAME.match(name):
        return f"{run_dir} is not a run folder inside {runs_dir}"
    linked = f"{runs_dir} is a symbolic link; kdtui removes folders only inside a real runs/"
    try:
        dir_fd = open_fd(runs_dir, os.O_RDONLY | os.O_DIRECTORY)
    except UnsafePath:
        return linked
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # O_DIRECTORY|O_NOFOLLOW on a link: ENOTDIR on Linux
        return linked if os.path.islink(runs_dir) else f"{runs_dir} is not a directory"
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return f"{run_dir} is a symbolic link, not a run folder"
        if not stat.S_ISDIR(st.st_mode):
            return f"{run_dir} is not a directory"
        if st.st_uid != os.geteuid():
            return f"{run_dir} is owned by {_owner(st.st_uid)}, not by you"
        if sys.version_info >= (3, 11):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:  # pragma: no cover - 3.10: the fd-based walk is not exposed; path-based
            shutil.rmtree(run_dir)
        return None
    finally:
        os.close(dir_fd)


def set_aside(path: Path, why: str) -> Path | None:
    """Rename a bad file out of the way (kept for inspection, never deleted)."""
    target = path.with_name(f"{path.stem}.{why}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    try:
        os.replace(path, target)
    except OSError:
        return None
    return target
