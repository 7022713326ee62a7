"""A run's note and tags: what they may hold, and their copy in the run's folder. Torch-free.

A note is free text a researcher writes about a run ("lr too high, diverged at epoch
40"); tags are short names that group runs across experiments ("paper", "table-2").
Both live in the store's runs row (`note`, `tags`: a JSON list) and, so that a store
rebuilt from its run folders keeps them, in the run folder's `layout.ANNOTATIONS` file
(`write_folder` / `read_folder`: the only code that touches that file).

Rules (one owner, so the CLI, the app and the store agree):
- a note is at most NOTE_MAX characters; longer is refused, never cut (nothing is lost);
  any character is accepted and stored as typed; every front end shows it inert
  (engine.core.inert.printable: an ESC or a "[b]" is shown, never obeyed);
- a tag is 1..TAG_MAX characters of lower-case letters, digits and `-_.+`, starting with
  a letter or digit (so it is one word in a filter, a CSV cell or a shell argument);
  upper case is folded to lower; a run has at most TAGS_MAX tags, kept sorted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from engine.core import layout, safefs
from engine.core.inert import brief

NOTE_MAX = 2000
TAG_MAX = 32
TAGS_MAX = 16
TAG = re.compile(r"[a-z0-9][a-z0-9_.+-]*")


class AnnotationError(ValueError):
    """A note or tag that breaks the rules; the message names the rule and the fix."""


def check_note(text: str) -> str:
    """The note to store: surrounding whitespace dropped; refused past NOTE_MAX."""
    note = str(text).strip()
    if len(note) > NOTE_MAX:
        raise AnnotationError(
            f"note is {len(note):,} characters; at most {NOTE_MAX:,} are kept: shorten it"
        )
    return note


def check_tag(name: str) -> str:
    """One tag, folded to lower case, or AnnotationError saying what is allowed."""
    tag = str(name).strip().lower()
    if not tag or len(tag) > TAG_MAX or not TAG.fullmatch(tag):
        raise AnnotationError(
            f"tag {brief(str(name))} is not allowed: a tag is 1-{TAG_MAX} characters of "
            "letters, digits and - _ . +, starting with a letter or digit (e.g. paper, "
            "table-2, lr_0.1)"
        )
    return tag


def check_tags(names: Iterable[str]) -> list[str]:
    """A run's whole tag list: each checked, duplicates dropped, sorted, at most TAGS_MAX."""
    tags = sorted({check_tag(n) for n in names})
    if len(tags) > TAGS_MAX:
        raise AnnotationError(
            f"{len(tags)} tags; a run has at most {TAGS_MAX}: remove some with "
            "`kdtui tag RUN NAME --remove`"
        )
    return tags


def parse_tags(stored: str | None) -> list[str]:
    """The tags column (a JSON list) as a list; anything else reads as no tags."""
    try:
        tags = json.loads(stored or "[]")
    except ValueError:
        return []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def dump_tags(tags: Iterable[str]) -> str:
    return json.dumps(list(tags), ensure_ascii=True)


def write_folder(run_dir: str | os.PathLike, note: str, tags: Iterable[str]) -> None:
    """Replace the run folder's annotations file (atomically, never through a link); with
    no note and no tags the file is removed. A missing folder is left alone."""
    folder = Path(run_dir)
    if not str(run_dir) or not folder.is_dir() or folder.is_symlink():
        return
    path = folder / layout.ANNOTATIONS
    tags = list(tags)
    if not note and not tags:
        path.unlink(missing_ok=True)  # a link is removed itself, never its target
        return
    safefs.write_private(path, json.dumps({"note": note, "tags": tags}, indent=1) + "\n")


def read_folder(run_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """(note, tags) from a run folder's annotations file; ("", []) when there is none.
    What a store rebuilt from folders puts back; a bad file is an AnnotationError."""
    path = Path(run_dir) / layout.ANNOTATIONS
    try:
        data = json.loads(safefs.read_text(path))
    except FileNotFoundError:
        return "", []
    except (ValueError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not the JSON kdtui writes ({e})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: not the JSON kdtui writes (an object is expected)")
    note, tags = data.get("note", ""), data.get("tags", [])
    if not isinstance(note, str) or not isinstance(tags, list):
        raise AnnotationError(f"{path}: not the JSON kdtui writes (note text, tags a list)")
    try:
        return check_note(note), check_tags(tags)
    except AnnotationError as e:
        raise AnnotationError(f"{path}: {e}") from None


def summary(note: str, tags: Iterable[str], limit: int = 40) -> str:
    """One short line for a table cell: `#paper #table-2 · first line of the note…`
    (not yet inert: front ends pass it through printable/text as every stored string)."""
    parts = " ".join(f"#{t}" for t in tags)
    first = note.strip().splitlines()[0] if note.strip() else ""
    if first:
        room = max(8, limit - len(parts) - 3) if parts else limit
        if len(first) > room:
            cut = first[: room - 1] + "…"
        else:
            cut = first if first == note.strip() else first + " …"  # more lines follow
        parts = f"{parts} · {cut}" if parts else cut
    return parts
