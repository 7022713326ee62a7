"""The tail of a run's log.txt; the app reads the file in a worker and feeds new text here."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from engine.core.inert import printable

ERROR_WORDS = ("Traceback", "Error", "error:", "FAILED", " nan")


class LogTail(RichLog):
    DEFAULT_CSS = """
    LogTail { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            max_lines=2000, wrap=False, markup=False, highlight=False, id=id, classes=classes
        )
        self._partial = ""
        self.lines_seen = 0

    def reset(self, placeholder: str = "") -> None:
        self.clear()
        self._partial = ""
        self.lines_seen = 0
        if placeholder:
            self.write(Text(placeholder, style="dim"))

    def feed(self, text: str) -> None:
        """Append text that may end mid-line; a partial last line waits for its newline."""
        if not text:
            return
        if self.lines_seen == 0:
            self.clear()
        text = self._partial + text
        *lines, self._partial = text.split("\n")
        for line in lines:
            style = "red" if any(w in line for w in ERROR_WORDS) else ""
            self.write(Text(printable(line.rstrip("\r"), keep="\t"), style=style))
            self.lines_seen += 1
