"""`kdtui bench --quick --json` runs end to end and reports every part (no timing checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core import expected_hit_rate

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_bench_emits_every_part_as_json():
    out = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", "bench", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert {"device", "torch", "quick", "config", "seconds"} <= r.keys() and r["quick"] is True
    assert r["config"]["teacher"] == "resnet20" and r["config"]["student"] == "resnet8"
    assert {"chosen", "ratio_1_vs_all"} <= r["threads"].keys() or "skipped" in r["threads"]
    assert {"reference_images_per_s", "engine_images_per_s", "speedup"} <= r["loader"].keys()
    step = r["step"]
    assert {"reference_images_per_s", "engine_images_per_s", "speedup", "teacher_share"} <= (
        step.keys()
    )
    assert step["reference_images_per_s"]["median"] > 0 and 0 < step["teacher_share"] < 2
    fused = r["fused"]
    assert fused["students"] == 5 and {"separate_images_per_s", "fused_images_per_s"} <= (
        fused.keys()
    )
    cache = r["cache"]
    for key in ("uncached", "cold", "run240", "second_run", "warm"):
        assert cache[f"{key}_images_per_s"]["median"] > 0
    for key in ("cold", "run240", "second_run", "warm"):
        assert f"speedup_{key}" in cache
    assert cache["cold_hit_rate"] == 0.0 and cache["warm_hit_rate"] == 1.0
    assert abs(cache["run240_hit_rate"] - cache["expected_hit_rate_240"]) < 0.02
    assert "skipped" in r["scaling"] or r["scaling"]["procs"] >= 2  # a CPU box: skipped
    app = r["app"]
    for key in ("first_paint_s", "bare_textual_paint_s", "import_torch_s", "live_latency_s"):
        assert app[key]["median"] > 0 and app[key]["n"] >= 3
    assert app["ratio_vs_bare"] > 0 and app["poll_s"] <= 0.5


def test_the_app_part_runs_alone_without_torch():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kdtui.cli", "bench", "--only", "app"]
        + ["--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    app = json.loads(out.stdout)["app"]
    assert app["first_paint_s"]["n"] == 3 and app["live_latency_s"]["n"] == 5
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "kdtui.app" in imported


def bench_json(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", "bench", "--quick", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_scaling_on_a_cpu_box_says_it_was_skipped():
    scaling = bench_json("--only", "scaling")["scaling"]
    assert scaling["skipped"].startswith("no GPU visible (CPU): it needs two or more devices")


@pytest.mark.slow
def test_scaling_measures_two_cpu_processes_against_one_when_asked():
    r = bench_json("--only", "scaling", "--procs", "2", "--steps", "2", "--repeats", "1")
    k = r["scaling"]
    assert (k["procs"], k["device"]) == (2, "cpu")
    assert k["one_images_per_s"]["n"] == k["many_images_per_s"]["n"] == 1
    assert k["speedup"] == k["many_images_per_s"]["median"] / k["one_images_per_s"]["median"]
    assert k["efficiency"] == k["speedup"] / 2


def test_a_240_epoch_run_revisits_about_half_of_its_views():
    assert expected_hit_rate(240) == pytest.approx(0.478, abs=1e-3)
    assert expected_hit_rate(240, before=240) == pytest.approx(0.882, abs=1e-3)
    assert expected_hit_rate(1) == 0.0


def test_bench_help_and_bad_part_are_clear():
    ok = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "--quick" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", "bench", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown part" in bad.stderr


def test_the_app_table_says_when_a_target_is_missed():
    from rich.console import Console

    from kdtui.cli.bench import render_app

    def spread(median, worst):
        return {"median": median, "min": median, "max": worst, "n": 5}

    result = {
        "runs_in_store": 40,
        "first_paint_s": spread(1.4, 1.6),
        "bare_textual_paint_s": spread(0.2, 0.2),
        "import_torch_s": spread(1.9, 2.0),
        "ratio_vs_bare": 7.0,
        "first_paint_target_s": 1.0,
        "live_latency_s": spread(0.3, 0.6),
        "poll_s": 0.5,
        "live_target_s": 1.0,
    }
    console = Console(width=140, record=True)
    console.print(render_app(result))
    text = console.export_text()
    assert "1.40 s" in text and "×7.00" in text
    assert "first paint OVER 1 s" in text and "metrics in view within 1 s" in text


def test_the_scaling_row_gives_images_per_second_and_efficiency():
    from rich.console import Console

    from kdtui.cli.bench import render

    def spread(median):
        return {"median": median, "min": median, "max": median, "n": 3}

    base = {
        "quick": False,
        "device": "cuda: NVIDIA H100",
        "torch": "2.14.1",
        "seconds": 60.0,
        "config": {
            "teacher": "resnet32x4",
            "student": "resnet8x4",
            "batch": 64,
            "amp": "bfloat16",
            "channels_last": True,
            "cpu_threads": 16,
        },
    }
    scaling = {
        "procs": 4,
        "device": "cuda",
        "threads_per_process": 4,
        "one_images_per_s": spread(10_000.0),
        "many_images_per_s": spread(36_000.0),
        "speedup": 3.6,
        "efficiency": 0.9,
    }
    console = Console(width=160, record=True)
    console.print(render({**base, "scaling": scaling}))
    text = console.export_text()
    assert "engine SimKD step, 1 GPU" in text and "10,000" in text
    assert "4 × that, data-parallel (DDP), batch 64 each" in text and "36,000" in text
    assert "×3.60, efficiency 90%" in text
    console = Console(width=160, record=True)
    console.print(render({**base, "scaling": {"skipped": "1 GPU visible: it needs two"}}))
    assert "skipped: 1 GPU visible: it needs two" in console.export_text()
