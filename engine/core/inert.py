"""Text from files and users, made inert for a terminal or an exported table. Torch-free.

A name, label or error can carry an ESC sequence, a carriage return or a
bidi override that would restyle the terminal, overwrite a line or reorder
what the reader sees. `printable` turns each such character into a visible
escape (`\\x1b`, `\\r`, `\\u202e`), so what is shown is what is stored.
"""

from __future__ import annotations

import reprlib

# characters that reorder text (Trojan Source, CVE-2021-42574) or break lines unseen
_INVISIBLE = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES: dict[int, str] = {
    **{c: _NAMED.get(chr(c), f"\\x{c:02x}") for c in range(0x20)},  # C0
    **{c: f"\\x{c:02x}" for c in range(0x7F, 0xA0)},  # DEL and C1 (0x9b is a one-byte CSI)
    **{ord(c): f"\\u{ord(c):04x}" for c in _INVISIBLE},
}
_TABLES: dict[str, dict[int, str]] = {"": _ESCAPES}


def printable(text: object, keep: str = "") -> str:
    """`text` with every control, C1 and bidi character written as a visible escape.

    `keep` names characters to pass through (a log keeps "\\n" and "\\t")."""
    table = _TABLES.get(keep)
    if table is None:
        table = _TABLES[keep] = {k: v for k, v in _ESCAPES.items() if chr(k) not in keep}
    return str(text).translate(table)


def shorten(text: str, limit: int = 80) -> str:
    """At most `limit` characters: a 100,000-character value is named, not printed."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}…({len(text):,} characters)"


class _Repr(reprlib.Repr):
    """Bounded repr for messages: a 100,000-character value or a 5,000-digit integer is
    named by its size, never printed whole (nor converted: str(int) has a digit limit)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring, self.maxother, self.maxlist, self.maxdict, self.maxlevel = 60, 60, 6, 6, 3

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if abs(x) < 10**30 else f"<an integer of {x.bit_length():,} bits>"

    def repr_str(self, x: str, level: int) -> str:
        shown = super().repr_str(x, level)
        return shown if len(x) <= self.maxstring else f"{shown} ({len(x):,} characters)"


brief = _Repr().repr
