"""`[run] device` between the engine and its workers. Torch-free.

The engine gives each worker one slot: a GPU (shown to it alone, through
CUDA_VISIBLE_DEVICES, as cuda:0) or a CPU slot, and says which in ENGINE_GPU_ENV.
A run of `nproc_per_node = N` processes gets N slots (N GPUs, shown together;
its ranks pick theirs by local rank: engine.train.pick_runtime).
The scheduler (engine.daemon.scheduling) decides which slots a device may use;
`worker_device` is what the worker then opens.
"""

from __future__ import annotations

import re

ENGINE_GPU_ENV = "KDTUI_ENGINE_GPU"  # set in every worker: its slot's GPU id, "" on a CPU slot
HOST_DEVICES = ("cpu", "mps", "xpu")  # devices that run on a CPU slot
_CUDA_N = re.compile(r"^cuda:(\d+)$")


def cuda_index(device: str) -> str | None:
    """N of `cuda:N` (as text, the way the engine names GPUs); None for any other device."""
    m = _CUDA_N.match(device)
    return m.group(1) if m else None


class DeviceError(ValueError):
    """A run's `[run] device` cannot be met here; the message says what to change."""


def worker_device(device: str, slot_gpu: str | None) -> str:
    """The torch device a worker opens for a run's `[run] device`.

    The engine shows each worker only its slot's GPU (CUDA_VISIBLE_DEVICES), where it is
    cuda:0, so `cuda:N` (GPU N as the engine numbers them) becomes cuda:0 on GPU N's slot.
    slot_gpu None: not started by the engine (`kdtui run`), where cuda:N keeps torch's
    meaning; "": a CPU slot.
    """
    device = (device or "auto").strip()
    if slot_gpu is None or device == "auto" or device in HOST_DEVICES:
        return device
    if slot_gpu == "":
        raise DeviceError(
            f"run.device = {device!r} but the engine placed this run on a CPU slot; "
            'set [run] device = "auto" or "cpu"'
        )
    index = cuda_index(device)
    if index is not None and index != slot_gpu:
        raise DeviceError(
            f"run.device = {device!r} but the engine placed this run on GPU {slot_gpu}, "
            f'which this worker sees as cuda:0; set [run] device = "cuda" (any GPU) or '
            f'"cuda:{slot_gpu}"'
        )
    return "cuda:0"
