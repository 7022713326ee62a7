"""How a sweep point reads on screen: `lr=0.05 f=4 wd=0.0005 seed=0`.

Run labels are stored as `key=value` pairs named by the last part of the
swept key (`optim.lr` -> `lr`). Tables have little room for them, so every
table, toast and title shows them through `short_point`, which abbreviates
the long key names the field abbreviates anyway. The stored label (and the
exports a paper uses) keep the full names.
"""

from __future__ import annotations

import re

# the last part of a swept key -> how a table shows it (the paper's usual symbol)
ABBREVIATIONS = {
    "factor": "f",
    "weight_decay": "wd",
    "batch_size": "bs",
    "temperature": "T",
    "learning_rate": "lr",
}

_PAIR = re.compile(r"(?<![^\s\[(])([A-Za-z_][\w.]*)=")


def short_key(key: str) -> str:
    """The tail abbreviated; a dotted key (two shown keys share a tail) keeps its prefix."""
    head, dot, tail = key.rpartition(".")
    return head + dot + ABBREVIATIONS.get(tail, tail)


def short_point(label: str) -> str:
    """`lr=0.05 factor=4 weight_decay=5e-4` -> `lr=0.05 f=4 wd=5e-4`; other text as is."""
    return _PAIR.sub(lambda m: f"{short_key(m.group(1))}=", label)
