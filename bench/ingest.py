"""The store's ingestion of run folders, measured (torch-free): `kdtui bench --only ingest`.

- idle poll: `Store.ingest()` when no folder changed, over a store of N run folders,
  first all queued (an idle poll looks only at running runs' folders), then all
  running (the worst case: two stats a run), and the app's whole poll read then
  (`runs_without_config`: the ingest, then every row);
- ingestion rate: metrics appended to the folders of R runs the way workers write
  them (engine.core.runfolder), then ingested by one `Store.ingest()`: metrics/s.

Timings on a shared machine vary: each figure is a median with its spread.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.stats import median_spread
from engine.core import reading, runfolder
from engine.core.metrics import LOSS
from engine.core.store import Store

EXPERIMENT = """
name = "bench-ingest"
seeds = {seeds}
[data]
dataset = "digits"
[student]
arch = "resnet8"
[optim]
epochs = 240
"""


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_ingest_bench(
    folders: int = 1000, runs: int = 20, metrics: int = 5000, repeats: int = 5, log=lambda s: None
) -> dict:
    """Idle-poll ms with `folders` active run folders; metrics/s ingesting `runs` x `metrics`."""
    with tempfile.TemporaryDirectory(prefix="kdtui-bench-ingest-") as tmp:
        store = Store(Path(tmp) / ".kdtui")
        log(f"ingest: {folders} run folders…")
        exp = reading.loads(EXPERIMENT.format(seeds=list(range(folders))))
        created = store.submit(exp)
        assert len(created) == folders
        store.ingest(everything=True)
        queued = [_timed(store.ingest) * 1000 for _ in range(repeats * 4)]
        log(f"ingest: {folders} running run folders…")
        for run in created:
            store.claim(run.id, pid=None)
        idle = [_timed(store.ingest) * 1000 for _ in range(repeats * 4)]
        poll = [_timed(store.runs_without_config) * 1000 for _ in range(repeats * 4)]
        rates = []
        for rep in range(repeats):
            log(f"ingest: {runs} runs x {metrics} metrics ({rep + 1}/{repeats})…")
            for run in created[:runs]:
                rows = [(rep, rep * metrics + k, LOSS, 1.0 / (k + 1)) for k in range(metrics)]
                runfolder.append_metrics(run.path, rows)
            seconds = _timed(store.ingest)
            rates.append(runs * metrics / seconds)
        total = store.metrics(created[0].id)
        assert len(total) == repeats * metrics, len(total)
        store.close()
    return {
        "folders": folders,
        "idle_poll_queued_ms": median_spread(queued),
        "idle_poll_ms": median_spread(idle),
        "app_poll_read_ms": median_spread(poll),
        "ingest_runs": runs,
        "ingest_metrics_per_run": metrics,
        "metrics_per_s": median_spread(rates),
    }
