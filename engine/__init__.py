"""The training side of kdtui. Only worker/train/data/models/distill import torch.

GNU OpenMP threads spin while they wait; on a shared box (other runs, the
engine's other slots, tests) a spinning torch process stalls every step of
its neighbours — measured 2-13x slower at 2 threads under load, with no
gain when idle. Passive waiting keeps the idle speed and removes the stall.
It must be set before torch is first imported, hence here: every process
that trains (kdtui run, the engine's workers, bench) imports `engine` first.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
