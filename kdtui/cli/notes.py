"""`kdtui note` and `kdtui tag`: a researcher's note and tags on runs, headless.

The same rules as the app's `n` and `t` keys (engine.core.annotations: length limits,
tag names); the store keeps them in the run's row and folder (Store.annotate).
"""

from __future__ import annotations

from typing import Annotated

import typer

from engine.core.annotations import AnnotationError, check_note, check_tags
from engine.core.store import Run, Store, StoreError
from kdtui.cli.common import HomeOpt, console, fail
from kdtui.inert import text

RefArg = Annotated[
    str,
    typer.Argument(help="A run id, or an experiment name (every run of it).", show_default=False),
]


def _runs(store: Store, ref: str) -> list[Run]:
    try:
        return store.find(ref)
    except StoreError as e:
        raise fail(str(e)) from None


def note(
    ref: RefArg,
    message: Annotated[
        str | None,
        typer.Argument(
            help='The note (quote it: "diverged at epoch 40"); "" clears it. '
            "Without it, print the note.",
            show_default=False,
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the note.")] = False,
    home: HomeOpt = None,
) -> None:
    """Write a note on a run (shown in the app, `kdtui ls` and the exports)."""
    store = Store(home)
    runs = _runs(store, ref)
    if message is None and not clear:
        for r in runs:
            console.print(text((f"run {r.id}:", "bold"), " ", r.note or "(no note)"))
        return
    if clear and message:
        raise fail("give a note or --clear, not both")
    try:
        wanted = check_note("" if clear else message or "")  # refused before any run changes
    except AnnotationError as e:
        raise fail(str(e)) from None
    for r in runs:
        r = store.annotate(r.id, note=wanted)
        what = f"note saved ({len(r.note):,} characters)" if r.note else "note cleared"
        console.print(f"run {r.id}: {what}")


def tag(
    ref: RefArg,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Tag names (letters, digits, - _ . +). Without any, print the tags.",
            show_default=False,
        ),
    ] = None,
    remove: Annotated[
        bool, typer.Option("--remove", "-r", help="Remove these tags instead of adding them.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Tag runs (filter on them in the app with /; shown in `kdtui ls` and the exports)."""
    store = Store(home)
    runs = _runs(store, ref)
    if not names:
        for r in runs:
            console.print(text((f"run {r.id}:", "bold"), " ", " ".join(r.tag_list) or "(no tags)"))
        return
    try:  # every run's new list is checked before the first is written
        wanted = set(check_tags(names))
        new = {
            r.id: check_tags(set(r.tag_list) - wanted if remove else set(r.tag_list) | wanted)
            for r in runs
        }
    except AnnotationError as e:
        raise fail(str(e)) from None
    for r in runs:
        r = store.annotate(r.id, tags=new[r.id])
        console.print(text(f"run {r.id}: tags ", " ".join(r.tag_list) or "(none)"))
