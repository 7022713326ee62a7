"""The README's figures are what the code produces: its quickstart table against a real run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core import leaderboard
from engine.core.store import Store

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def quickstart_table() -> list[dict[str, str]]:
    """The first Markdown table of the README's "Set up and run" section, as dicts."""
    text = README.read_text()
    section = text[text.index("## Set up and run") :]
    section = section[: section.index("\n## ", 1)]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_the_readme_table_names_every_run_of_the_quickstart():
    """Cheap half of the check: the table parses into the quickstart's four runs."""
    rows = quickstart_table()
    assert [(r["run"].startswith("teacher"), r["method"]) for r in rows] == [
        (True, "vanilla"),
        (False, "simkd"),
        (False, "kd"),
        (False, "vanilla"),
    ]


@pytest.mark.slow
def test_the_readme_quickstart_table_is_what_the_quickstart_produces(tmp_path):
    home = tmp_path / "home"
    env = {
        **os.environ,
        "KDTUI_HOME": str(home),
        "OMP_NUM_THREADS": "2",  # the README's figures are for 2 CPU threads
        # and for oneDNN's AVX2 kernels, which give the same bits on any x86-64 CPU (the
        # default picks AVX-512/AMX where present, and a few test images change side)
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
    }
    out = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", "run", "experiments/quickstart.toml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = Store(home)
    rows = leaderboard.build_rows(store.runs())
    table = quickstart_table()
    assert len(rows) == len(table)
    for line in table:
        role = "teacher" if line["run"].startswith("teacher") else "student"
        (row,) = [r for r in rows if r.role == role and r.method == line["method"]]
        head = "student" if line["head"] == "student" else "teacher"
        measured = {
            "head": row.head,
            "best": f"{row.best_mean:.2f}",
            "gap": leaderboard.fmt_gap(row.gap),
            "trained params": f"{row.trained_params:,}",
        }
        written = {
            "head": head,
            "best": line["best top-1 (digits test split, 359 images)"],
            "gap": line["gap closed"],
            "trained params": line["trained params"],
        }
        assert measured == written, f"README row {line['run']!r} is stale"
