"""The engine: a detached process that trains the store's queue on every GPU slot.

Torch-free: the app and the CLI start, query and stop it through `client`; only
the worker processes it spawns (`python -m engine.worker`) import torch.

One engine per store, enforced by an `fcntl.flock` on `<home>/engine.lock`
held for the engine's whole life (the kernel drops it when the process
dies, so a crashed engine never blocks the next one). The engine opens no
network port: the store, the lock file and `engine.json` (a snapshot of
slots and workers) are its only interface.

Workers run in their own sessions, so they outlive the engine: a restarted
engine adopts live workers and re-queues (resume) runs whose worker is gone.

    options      how the engine slices the machine, declared once (argparse and the
                 `kdtui engine start` options are made from it)
    scheduling   slots, placement and teacher dependencies: pure functions
    backends     where runs train: local (worker processes here) or slurm (one Slurm job per
                 run or fused group, through submitit); a registry, one module each
    processes    child environments, signals, a spawned worker's exit, the worker's argv
    lock         the store's engine lock: who holds it, taking it
    server       the engine loop (`Engine`) and the process around it
    client       start / stop / status / ensure_running: what front ends call
    __main__     `python -m engine.daemon`
"""
