"""Removing runs: the one set of rules `kdtui rm` and the app's `d` both follow. Torch-free.

- Only finished runs go, and dead ones (marked running, their process gone: they are
  settled as failed first). A queued or live running run is refused as a whole request
  (`refusal`), so nothing is half-removed while the user cancels it.
- A run that is the teacher of queued or running runs stays (Store.delete says why).
- What goes: the run's row, its metrics and events, and its folder, which is removed only
  as a real directory inside the store's real runs/ (never through a symbolic link:
  engine.core.safefs.remove_run_dir); a folder that is not removed is named with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.core import liveness
from engine.core.store import Run, Store, StoreError


@dataclass
class Removed:
    """What a removal did: run ids removed, and (run id, why) of what it kept."""

    removed: list[int] = field(default_factory=list)
    kept_runs: list[tuple[int, str]] = field(default_factory=list)
    kept_folders: list[tuple[int, str]] = field(default_factory=list)


def busy(runs: Sequence[Run]) -> list[Run]:
    """The runs that may not be removed yet: queued, or running with a live process."""
    return [r for r in runs if not r.finished and not liveness.process_gone(r)]


def refusal(runs: Sequence[Run], fix: str = "`kdtui cancel` it first") -> str | None:
    """Why these runs cannot be removed now (None: they can), with the fix."""
    held = busy(runs)
    if not held:
        return None
    ids = ", ".join(str(r.id) for r in held)
    return f"run {ids} is still {liveness.shown_status(held[0])}; {fix}"


def remove(store: Store, runs: Sequence[Run]) -> Removed:
    """Remove runs (call `refusal` first: busy runs are skipped here, never removed)."""
    out = Removed()
    held = {r.id for r in busy(runs)}
    for r in runs:
        if r.id in held:
            out.kept_runs.append((r.id, f"still {r.status}"))
            continue
        if not r.finished:  # dead: its process is gone
            store.settle_gone(r, "failed", f"process {r.pid} gone; removed")
        try:
            store.delete(r.id)
        except StoreError as e:
            out.kept_runs.append((r.id, str(e)))
            continue
        kept = store.remove_run_dir(r)
        if kept:
            out.kept_folders.append((r.id, kept))
        out.removed.append(r.id)
    return out
