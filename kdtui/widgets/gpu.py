"""GPU panel: utilisation, memory and which run is on which GPU, via nvidia-ml-py.

Every NVML call is guarded: a box without a driver, or a GPU that falls off
the bus, hides the panel or blanks one field rather than raising.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import work
from textual.widgets import Static

from kdtui.widgets.cells import bar


@dataclass
class GpuInfo:
    index: int
    name: str
    util: int | None
    mem_used: float | None  # GiB
    mem_total: float | None
    temp: int | None


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # pynvml.NVMLError and anything a broken driver throws
        return None


class Nvml:
    """A lazily initialised NVML session; `read()` returns None when there is no GPU."""

    def __init__(self) -> None:
        self._nv: Any = None
        self._failed = False

    def _init(self) -> bool:
        if self._nv is not None:
            return True
        if self._failed:
            return False
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:
            self._failed = True
            return False
        self._nv = pynvml
        return True

    def read(self) -> list[GpuInfo] | None:
        if not self._init():
            return None
        nv = self._nv
        count = _safe(nv.nvmlDeviceGetCount)
        if not count:
            return None
        out = []
        for i in range(count):
            handle = _safe(lambda i=i: nv.nvmlDeviceGetHandleByIndex(i))
            if handle is None:
                continue
            name = _safe(lambda h=handle: nv.nvmlDeviceGetName(h)) or "GPU"
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            util = _safe(lambda h=handle: nv.nvmlDeviceGetUtilizationRates(h).gpu)
            mem = _safe(lambda h=handle: nv.nvmlDeviceGetMemoryInfo(h))
            temp = _safe(lambda h=handle: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            out.append(
                GpuInfo(
                    i,
                    str(name).replace("NVIDIA ", ""),
                    util,
                    mem.used / 2**30 if mem is not None else None,
                    mem.total / 2**30 if mem is not None else None,
                    temp,
                )
            )
        return out or None

    def close(self) -> None:
        if self._nv is not None:
            _safe(self._nv.nvmlShutdown)
            self._nv = None


def gpu_index(gpu: str | None, device: str | None) -> int | None:
    """The GPU a run sits on, from whatever the worker recorded ("0", "cuda:1", "GPU 2: …")."""
    for text in (gpu, device):
        if not text:
            continue
        if text.startswith("cpu"):
            return None
        m = re.search(r"(\d+)", text)
        if m:
            return int(m.group(1))
        if text.startswith("cuda"):
            return 0
    return None


def gpu_indices(gpu: str | None, device: str | None) -> list[int]:
    """Every GPU a run sits on: the engine records a run of several processes on GPUs
    "0,1" (one per process); one GPU otherwise (`gpu_index`)."""
    if gpu and "," in gpu:
        return [int(g) for g in gpu.split(",") if g.strip().isdigit()]
    idx = gpu_index(gpu, device)
    return [] if idx is None else [idx]


def render_gpus(gpus: list[GpuInfo], runs: Iterable[Any]) -> Text:
    by_gpu: dict[int, list[str]] = {}
    for r in runs:
        if r.status != "running":
            continue
        for idx in gpu_indices(r.gpu, r.device):
            by_gpu.setdefault(idx, []).append(f"#{r.id}")
    text = Text()
    for g in gpus:
        if g.index:
            text.append("\n")
        text.append(f"{g.index} ", style="bold")
        text.append(f"{g.name[:14]:<14} ")
        if g.util is not None:
            text.append(bar(g.util / 100, 6), style="cyan")
            text.append(f" {g.util:>3}%")
        if g.mem_used is not None and g.mem_total:
            text.append(f" {g.mem_used:4.1f}/{g.mem_total:.0f}G", style="dim")
        if g.temp is not None:
            text.append(f" {g.temp}°C", style="dim")
        ids = by_gpu.get(g.index)
        text.append("\n  ")
        text.append(" ".join(ids) if ids else "idle", style="green" if ids else "dim")
    return text


class GpuPanel(Static):
    """Hidden until NVML reports at least one GPU."""

    DEFAULT_CSS = """
    GpuPanel { width: 44; height: 1fr; }
    """

    def __init__(self, *, enabled: bool = True, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.enabled = enabled
        self.gpus: list[GpuInfo] | None = None
        self.runs: list[Any] = []
        self.nvml = Nvml()

    def on_mount(self) -> None:
        self.border_title = "gpus"
        self.display = False
        if self.enabled:
            # after the first paint: loading NVML must not hold the GIL while the app starts
            self.set_timer(0.5, self.poll)
            self.set_interval(2.0, self.poll)

    def on_unmount(self) -> None:
        self.nvml.close()

    @work(thread=True, exclusive=True, group="gpu", exit_on_error=False)
    def poll(self) -> None:
        gpus = self.nvml.read()
        self.app.call_from_thread(self.show_gpus, gpus)

    def show_gpus(self, gpus: list[GpuInfo] | None) -> None:
        self.gpus = gpus
        self.display = bool(gpus)
        if gpus:
            self.update(render_gpus(gpus, self.runs))

    def set_runs(self, runs: list[Any]) -> None:
        self.runs = runs
        if self.gpus:
            self.update(render_gpus(self.gpus, runs))
