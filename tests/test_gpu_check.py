"""`kdtui bench --gpu-check` runs end to end on the CPU in its dry mode, so it cannot rot
before the first GPU run (its figures mean nothing here; the GPU run is the point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import STAGES, dry_from_env, render_markdown

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_runs_every_stage_in_its_dry_mode(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", "bench", "--gpu-check", "--dry-run", "--out", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "GPU check passed" in done.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["dry_run"] is True and s["ok"] is True
    assert [k for k in STAGES if s[k]["status"] != "ok"] == []
    assert s["env"]["torch"] and s["env"]["cuda_available"] in (True, False)
    step = s["step"]
    assert step["reference_images_per_s"]["median"] > 0 and step["engine_epoch_s"] > 0
    probes = s["probes"]
    for name in ("recompiles", "eval_dtype", "rng_restore", "device_mapping"):
        assert probes[name]["passed"] is True, probes[name]
    assert probes["host_syncs"]["passed"] is None  # no device to wait for on a CPU
    sweep = probes["recompiles"]["kd_temperature_sweep"]
    assert sweep["members"] == 2 and sweep["graphs_after_epoch_1"] == sweep["graphs_at_end"] == 1
    assert probes["eval_dtype"]["train_dtype"] == ["torch.bfloat16"]
    assert "no GPU" in probes["device_mapping"]["gpu_run"]["error"]
    assert s["quickstart"]["returncode"] == 0 and any(
        "simkd" in line for line in s["quickstart"]["leaderboard"]
    )
    assert s["tests"]["returncode"] == 0 and "passed" in s["tests"]["tail"][-1]
    md = (out / "summary.md").read_text()
    assert "dry run on the CPU" in md and "| probes | ok |" in md and "s per 50k-image epoch" in md


def test_the_summary_names_what_failed():
    s = {
        "dry_run": False,
        "started": "now",
        "seconds": 1.0,
        "ok": False,
        "env": {"gpu": "H100", "status": "ok", "seconds": 0.1},
        "probes": {
            "status": "failed",
            "seconds": 2.0,
            "recompiles": {"passed": False, "dkd": {"graphs_at_end": 3}},
            "eval_dtype": {"passed": True},
        },
        "tests": {"status": "failed", "seconds": 3.0, "returncode": None, "timed_out": True},
    }
    md = render_markdown(s)
    assert "| probes | failed | 2.0 | failed: recompiles |" in md
    assert "| tests | failed | 3.0 | exit None (timed out) |" in md
    assert "H100" in md and "dry run" not in md


def test_kdtui_gpu_check_cpu_means_a_dry_run(monkeypatch):
    monkeypatch.setenv("KDTUI_GPU_CHECK_CPU", "1")
    assert dry_from_env()
    monkeypatch.setenv("KDTUI_GPU_CHECK_CPU", "0")
    assert not dry_from_env()
