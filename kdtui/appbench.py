"""The app's speed, measured the way a user meets it (torch-free).

- first paint: wall time from starting `python -m kdtui.cli` on a pseudo-
  terminal to the runs table drawn over a store of runs, against a bare
  Textual app's first paint and `import torch` measured in the same run (what
  the app would pay if it imported the engine's training side);
- live latency: metrics appended to a run's folder the way a worker writes them
  (engine.core.runfolder) until the selected run's panels show them, in a
  headless app (whose poll ingests the folder into the store).

These are speed targets (first paint under 1 s, metrics within 1 s), so they
live here and not in timed unit tests.
"""

from __future__ import annotations

import asyncio
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stats import median_spread
from engine.core import metrics as M
from engine.core import reading, runfolder
from engine.core.store import Store

ROOT = Path(__file__).resolve().parent.parent
MARKER = b"bench-app-run"
RUNS = 40  # a study's worth: 8 submissions of a 5-point sweep
BARE_APP = (
    "from textual.app import App\n"
    "from textual.widgets import Static\n"
    "class Bare(App):\n"
    "    def compose(self):\n"
    "        yield Static('bench-app-run')\n"
    "Bare().run()\n"
)
EXPERIMENT = """
name = "bench-app-run"
[data]
dataset = "digits"
[teacher]
arch = "resnet20"
checkpoint = "teacher.pth"
[student]
arch = "resnet8"
[distill]
method = "simkd"
[optim]
epochs = 240
[sweep]
"optim.lr" = [0.001, 0.005, 0.01, 0.05, 0.1]
"""


def seed_store(home: Path, runs: int = RUNS) -> int:
    """A store of `runs` runs (a sweep repeated), one running with a curve; its id."""
    store = Store(home)
    exp = reading.loads(EXPERIMENT)
    ids = []
    while len(ids) < runs:
        ids += [r.id for r in store.submit(exp, source="experiments/bench.toml")]
    running = ids[0]
    store.update(running, status="running", epoch=10, step=100, best_top1=70.0)
    rows = []
    for e in range(10):
        rows += [(e, e * 10 + k, M.LOSS, 2.0 / (1 + e + k / 10)) for k in range(10)]
        rows += [(e, e + 1, M.TEST_TOP1, 50.0 + e), (e, e + 1, M.TEST_TOP5, 80.0 + e)]
    store.add_metrics(running, rows)
    store.close()
    return running


def paint_seconds(argv: list[str], env: dict[str, str], marker: bytes = MARKER) -> float:
    """Start `argv` on a pseudo-terminal; seconds until `marker` is drawn."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child
        os.environ.update(env, TERM="xterm-256color", COLUMNS="120", LINES="40")
        os.execv(argv[0], argv)
    start = time.monotonic()
    seen = b""
    try:
        while time.monotonic() - start < 30:
            ready, _, _ = select.select([fd], [], [], 0.02)
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
                if marker in seen:
                    return time.monotonic() - start
        raise RuntimeError(f"{argv[-1]}: nothing drawn in 30 s; saw {seen[-300:]!r}")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def import_torch_seconds() -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.monotonic() - start


async def _live_latency(home: Path, run_id: int, writes: int) -> list[float]:
    from kdtui.app import KdApp
    from kdtui.screens.runs import RunsScreen
    from kdtui.widgets.plots import CurvePlot

    app = KdApp(home, root=home.parent, gpu=False, start_engine=False)
    reader = Store(home)
    run_dir = reader.run(run_id).path  # written as a worker writes: the folder, never SQLite
    reader.close()
    out = []
    async with app.run_test(size=(120, 40)) as pilot:

        async def until(predicate, timeout: float = 10.0) -> float:
            start = time.monotonic()
            while not predicate():
                if time.monotonic() - start > timeout:
                    raise RuntimeError("the app did not show the new metrics in 10 s")
                await pilot.pause(0.005)
            return time.monotonic() - start

        await until(lambda: isinstance(app.screen, RunsScreen))
        screen = app.screen
        await until(lambda: screen.table.selected_id == run_id)
        acc = screen.query_one("#acc", CurvePlot)
        await until(lambda: acc.points > 0)
        epoch = 10
        for _ in range(writes):
            await pilot.pause(0.137)  # writes land anywhere in the app's poll cycle
            before = acc.points
            metric = (epoch, epoch + 1, M.TEST_TOP1, 60.0 + epoch / 100)
            runfolder.append_metrics(run_dir, [metric], fsync=True)
            runfolder.append_event(run_dir, "epoch", {"epoch": epoch + 1})
            epoch += 1
            out.append(await until(lambda b=before: acc.points > b))
    return out


def run_app_bench(repeats: int = 5, writes: int = 10, log=lambda s: None) -> dict:
    """First paint (kdtui vs bare Textual, import torch) and live latency; interleaved."""
    with tempfile.TemporaryDirectory(prefix="kdtui-bench-app-") as tmp:
        home = Path(tmp) / ".kdtui"
        running = seed_store(home)
        env = {"KDTUI_HOME": str(home), "PYTHONPATH": str(ROOT)}
        bare = Path(tmp) / "bare.py"
        bare.write_text(BARE_APP)
        kdtui_s, bare_s, torch_s = [], [], []
        log("app: first paint…")
        for _ in range(repeats):
            kdtui_s.append(paint_seconds([sys.executable, "-m", "kdtui.cli"], env))
            bare_s.append(paint_seconds([sys.executable, str(bare)], env))
            torch_s.append(import_torch_seconds())
        log("app: live latency…")
        latency = asyncio.run(_live_latency(home, running, writes))
    from kdtui.app import POLL_S

    first = statistics.median(kdtui_s)
    return {
        "runs_in_store": RUNS,
        "first_paint_s": median_spread(kdtui_s),
        "bare_textual_paint_s": median_spread(bare_s),
        "import_torch_s": median_spread(torch_s),
        "ratio_vs_bare": first / statistics.median(bare_s),
        "first_paint_target_s": 1.0,
        "live_latency_s": median_spread(latency),
        "poll_s": POLL_S,
        "live_target_s": 1.0,
    }
