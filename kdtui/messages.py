"""Messages between the store reader thread, the app and its screens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message


@dataclass
class Snapshot:
    """What one background read of the store found (built off the event loop)."""

    runs: list | None = None  # None: unchanged since the last read
    watch_id: int | None = None
    since_id: int = 0  # the metric id the read started after
    metrics: list = field(default_factory=list)
    log_text: str = ""
    log_offset: int | None = None
    log_reset: bool = False
    engine: Any = None
    engine_read: bool = False
    error: str | None = None


class Polled(Message):
    """Posted by the reader thread; the app applies it on the event loop."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class DataChanged(Message):
    """The app's view of the store changed; screens redraw what they show."""

    def __init__(self, runs: bool, watch: bool) -> None:
        super().__init__()
        self.runs = runs
        self.watch = watch
