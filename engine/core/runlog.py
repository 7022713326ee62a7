"""A run's log (`log.txt`): its line format, its two writers' calls and its readers. Torch-free.

Every line is `YYYY-mm-dd HH:MM:SS message`; lines the engine adds start with
`engine:`. The worker writes training progress (`append`, which raises DiskFull
on a full disk: the worker reports it), the engine writes placement and failures
(`note`, which never raises: a full disk must not stop the engine). Readers:
`last_line` (the error of a run whose worker died), `tail` (`kdtui logs`) and
`read_new` (the app's live log).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import time
from pathlib import Path

from engine.core import safefs
from engine.core.layout import LOG, WORKER_OUTPUT

ENGINE_PREFIX = "engine:"
STAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def stamped(message: str) -> str:
    """Each line of `message` with the time in front, newline-terminated."""
    stamp = time.strftime(STAMP_FORMAT)
    return "".join(f"{stamp} {line}\n" for line in message.rstrip().splitlines())


def append(run_dir: str | os.PathLike, message: str, *, name: str = LOG) -> None:
    """Lines in the run's log (never through a symlink; DiskFull when the disk is full)."""
    safefs.append_text(Path(run_dir) / name, stamped(message))


def note(run_dir: str | os.PathLike, message: str, *, name: str = LOG) -> None:
    """The engine's line in a run's log: never through a symlink, and a full disk never
    stops the engine."""
    with contextlib.suppress(OSError):
        safefs.append_text(Path(run_dir) / name, f"{time.strftime(STAMP_FORMAT)} {message}\n")


def last_line(
    run_dir: str | os.PathLike, *, output_first: bool = False, output: Path | None = None
) -> str:
    """The last line the run itself logged, without its timestamp.

    log.txt first (training progress: where a killed run stopped); with
    `output_first`, the worker's raw output first (an uncaught exception's
    last line is the error).
    """
    run_dir = Path(run_dir)
    paths = [run_dir / LOG, output or run_dir / WORKER_OUTPUT]
    for path in reversed(paths) if output_first else paths:
        try:
            with os.fdopen(safefs.open_fd(path, os.O_RDONLY), "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            line = _STAMP.sub("", line.strip())
            if line and not line.startswith(ENGINE_PREFIX):
                return line
    return ""


def tail(path: Path, lines: int) -> tuple[list[str], int]:
    """The last `lines` lines of a log (never through a symlink) and the size read."""
    try:
        data = safefs.read_bytes(path)
    except FileNotFoundError:
        return [], 0
    text = data.decode(errors="replace")
    last = collections.deque(text.splitlines(keepends=True), maxlen=max(lines, 0))
    return list(last), len(data)


def read_from(path: Path, offset: int) -> bytes:
    """What a log holds past `offset` (b"" while it does not exist)."""
    try:
        with os.fdopen(safefs.open_fd(path, os.O_RDONLY), "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


TAIL_BYTES = 16_384  # the first read of a log shows its last 16 KiB
CHUNK_BYTES = 262_144  # at most this much new text per read


def read_new(path: Path, offset: int | None) -> tuple[str, int | None, bool]:
    """New text of a log since `offset` (its tail the first time); handles truncation.

    Returns (text, new offset, reset): reset means the text replaces what was shown."""
    try:
        size = path.stat().st_size
    except OSError:
        return "", offset, False
    reset = False
    if offset is None:
        start, reset = max(0, size - TAIL_BYTES), True
    elif size < offset:  # rotated or truncated: start over
        start, reset = 0, True
    else:
        start = offset
    if size - start > CHUNK_BYTES:
        start, reset = size - CHUNK_BYTES, True
    if start == size:
        return "", size, reset
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return "", offset, False
    text = data.decode("utf-8", errors="replace")
    if reset and start > 0:  # drop the partial first line of a tail
        text = text.partition("\n")[2]
    return text, start + len(data), reset
