"""Rich cells of the app's tables: a run's status, progress bar, speed, accuracy and GPU.

The words and styles come from engine.core.display, which the CLI uses too."""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text

from engine.core.display import STATUS_ICON, STATUS_STYLE
from engine.core.inert import printable


def status(value: str) -> Text:
    icon = STATUS_ICON.get(value, "·")
    return Text(f"{icon} {printable(value)}", style=STATUS_STYLE.get(value, ""))


def bar(fraction: float, width: int = 8) -> str:
    """A text progress bar with eighth-block resolution."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    out = "█" * full
    if full < width:
        out += " ▏▎▍▌▋▊▉"[part] if part else ""
    return out.ljust(width, "·")


def progress(epoch: int, epochs: int, fraction: float, run_status: str) -> Text:
    text = Text(f"{epoch:>3}/{epochs:<3} ", style="dim" if run_status != "running" else "")
    style = "green" if run_status == "done" else "cyan" if run_status == "running" else "dim"
    text.append(bar(fraction), style=style)
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
