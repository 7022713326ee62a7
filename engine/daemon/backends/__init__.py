"""Where the engine's runs train: one module per backend, one line each below.

A backend turns a placed run or fused group into something that trains it (a worker process
on this machine, a Slurm job), reports its state, and stops it; the engine's loop
(engine.daemon.server) is the same for every backend. A backend module defines `Backend`
(see `base.Backend` for what it must do). `--backend NAME` picks one; `local` is the default.
Modules are imported when chosen: the login node's engine needs submitit only for `slurm`.
"""

from __future__ import annotations

import importlib

from engine.daemon.backends.base import Backend, Handle, Launch
from engine.daemon.options import Options, check

REGISTRY = {
    "local": "engine.daemon.backends.local",
    "slurm": "engine.daemon.backends.slurm",
}
NAMES = tuple(REGISTRY)


def create(options: Options, home) -> Backend:
    """The backend `options.backend` names, for the store in `home` (ValueError: bad options)."""
    check(options, NAMES)
    module = importlib.import_module(REGISTRY[options.backend])
    return module.Backend(options, home)


__all__ = ["NAMES", "REGISTRY", "Backend", "Handle", "Launch", "create"]
