"""Rich cells of the app's tables: a run's status, progress bar, speed, accuracy and GPU.

The words and styles come from engine.core.display, which the CLI uses too."""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text

from engine.core.display import STATUS_ICON, STATUS_STYLE
from engine.core.inert import printable
from engine.core.points import short_point


def status(value: str, icon_only: bool = False) -> Text:
    icon = STATUS_ICON.get(value, "·")
    shown = icon if icon_only else f"{icon} {printable(value)}"
    return Text(shown, style=STATUS_STYLE.get(value, ""))


def bar(fraction: float, width: int = 8) -> str:
    """A text progress bar with eighth-block resolution."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    out = "█" * full
    if full < width:
        out += " ▏▎▍▌▋▊▉"[part] if part else ""
    return out.ljust(width, "·")


def progress(epoch: int, epochs: int, fraction: float, run_status: str, bar_width: int = 8) -> Text:
    text = Text(f"{epoch:>3}/{epochs:<3}", style="dim" if run_status != "running" else "")
    style = "green" if run_status == "done" else "cyan" if run_status == "running" else "dim"
    if bar_width:
        text.append(" " + bar(fraction, bar_width), style=style)
    return text


def speed(images_per_s: float | None) -> str:
    if not images_per_s:
        return "–"
    if images_per_s >= 10_000:
        return f"{images_per_s / 1000:.0f}k"
    return f"{images_per_s:.0f}"


def acc(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def gpu(run_gpu: str | None, device: str | None) -> str:
    """The engine records the slot's CUDA_VISIBLE_DEVICES; a foreground run only its device."""
    if run_gpu:
        return run_gpu
    if device and device.startswith("cuda"):
        index = device.removeprefix("cuda").lstrip(":").split(" ")[0]
        return index or "0"
    return device or "–"


def short_path(path: str | Path) -> str:
    """A path as the user would type it: relative to the cwd, else with ~."""
    path = Path(path)
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return rel
    except ValueError:
        pass
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text.startswith(home + os.sep) else text


MIN_NAME = 8  # a shortened experiment name keeps at least this many characters


def middle(name: str, width: int) -> str:
    """`cifar100/simkd-lr-sweep-r32x4-mbv2` -> `cifar100/sim…x4-mbv2`: both ends say most."""
    if len(name) <= width:
        return name
    if width <= 1:
        return "…"[:width]
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head) :]


def name_point(
    name: str,
    point: str = "",
    width: int | None = None,
    *,
    brackets: bool = False,
    suffix: str = "",
) -> Text:
    """An experiment name and its sweep point (`short_point`) in `width` cells: the name
    shortens in the middle so the point stays whole; only a point too long for any name
    is cut at its end."""
    shown = short_point(printable(point)) if point else ""
    if shown and brackets:
        shown = f"[{shown}]"
    tail = (f" {shown}" if shown else "") + suffix
    name = printable(name)
    if width is not None and len(name) + len(tail) > width:
        name = middle(name, max(width - len(tail), min(len(name), MIN_NAME)))
    out = Text(name, no_wrap=True, overflow="ellipsis")
    out.append(tail, style="dim")
    if width is not None:
        out.truncate(width, overflow="ellipsis")
    return out
