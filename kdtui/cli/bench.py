"""The `kdtui bench` command (torch is imported only when it runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdtui.cli.common import console, err, fail
from kdtui.inert import text

PART_NAMES = (
    "threads",
    "loader",
    "step",
    "fused",
    "cache",
    "scaling",
    "compile",
    "app",
    "ingest",
)
# compile and ingest: only with --only
DEFAULT = tuple(p for p in PART_NAMES if p not in ("compile", "ingest"))
APP_ONLY = ("app", "ingest")  # torch-free parts


def _parts(value: str | None) -> tuple[str, ...]:
    if not value:
        return DEFAULT
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in parts if p not in PART_NAMES]
    if bad:
        raise fail(f"--only: unknown part(s) {', '.join(bad)}; choose from {', '.join(PART_NAMES)}")
    return parts


def bench(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Small models (resnet20→resnet8), few steps: under a minute on 2 CPU cores.",
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON only.")
    ] = False,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help=f"Comma-separated parts to run ({', '.join(PART_NAMES)}); every part but "
            "compile (torch.compile vs eager, with the cold compile) by default.",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
    ] = "auto",
    teacher: Annotated[str | None, typer.Option("--teacher", help="Teacher architecture.")] = None,
    student: Annotated[str | None, typer.Option("--student", help="Student architecture.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size.")] = 64,
    steps: Annotated[
        int,
        typer.Option("--steps", min=0, help="Timed steps per measurement (0: mode default)."),
    ] = 0,
    repeats: Annotated[
        int,
        typer.Option("--repeats", min=0, help="Interleaved repetitions (0: mode default)."),
    ] = 0,
    sweep: Annotated[
        int, typer.Option("--sweep", min=1, help="Students in the fused-sweep part.")
    ] = 5,
    images: Annotated[
        int, typer.Option("--images", min=0, help="Synthetic training images (0: default).")
    ] = 0,
    workers: Annotated[
        int,
        typer.Option("--workers", help="Reference DataLoader workers (-1: 8 on CUDA, 0 on CPU)."),
    ] = -1,
    compile_: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the engine step (default: on for the full mode on CUDA).",
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option("--threads", min=0, help="CPU threads (0: measure 1 vs the default)."),
    ] = 0,
    procs: Annotated[
        int,
        typer.Option(
            "--procs",
            min=0,
            help="Scaling part: processes of the data-parallel step (0: every visible "
            "GPU, skipped with fewer than two; on a CPU box N CPU processes).",
        ),
    ] = 0,
    gpu_check: Annotated[
        bool,
        typer.Option(
            "--gpu-check",
            help="The prepared first run on a GPU box (a few minutes, no internet): "
            "machine and versions, the compiled SimKD step against the reference, the "
            "CUDA-path probes, the quickstart and the fast tests on the GPU; writes "
            "summary.json and summary.md to --out.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="With --gpu-check: every stage on the CPU at tiny sizes (what CI runs; "
            "also KDTUI_GPU_CHECK_CPU=1).",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="With --gpu-check: where to write the summary."),
    ] = None,
) -> None:
    """Speed of our engine against a reference-style KD loop on this device, and of the app."""
    from engine.core.registry import ARCHS

    if gpu_check:
        from bench.gpu_check import dry_from_env, run_check

        summary = run_check(out, dry_run or dry_from_env(), lambda s: err.print(s, highlight=False))
        print((Path(summary["out"]) / "summary.md").read_text())
        console.print(
            f"GPU check {'passed' if summary['ok'] else 'FAILED'} in {summary['seconds']} s; "
            f"summary in {summary['out']}",
            highlight=False,
        )
        raise typer.Exit(0 if summary["ok"] else 1)

    for name, arch in (("--teacher", teacher), ("--student", student)):
        if arch and arch not in ARCHS:
            raise fail(f"{name}: unknown architecture {arch!r}; see `kdtui models`")
    parts = _parts(only)

    def log(line: str) -> None:
        if not json_out:
            err.print(text(line, style="dim"))

    result: dict = {"quick": quick}
    engine_parts = tuple(p for p in parts if p not in APP_ONLY)
    if engine_parts:
        result = _engine_bench(
            {
                "quick": quick,
                "device": device,
                "teacher": teacher or "",
                "student": student or "",
                "batch": batch,
                "images": images,
                "steps": steps,
                "repeats": repeats,
                "sweep": sweep,
                "workers": workers,
                "compile": compile_,
                "threads": threads,
                "procs": procs,
                "parts": engine_parts,
            },
            log,
        )
    if "app" in parts:
        from kdtui.appbench import run_app_bench  # torch-free, like the app

        result["app"] = run_app_bench(
            repeats=repeats or (3 if quick else 5), writes=5 if quick else 10, log=log
        )
    if "ingest" in parts:
        from bench.ingest import run_ingest_bench  # torch-free

        result["ingest"] = run_ingest_bench(
            folders=1000, repeats=repeats or (3 if quick else 5), log=log
        )
    if json_out:
        print(json.dumps(result, indent=1, default=str))
        return
    if engine_parts:
        console.print(render(result))
    if "app" in result:
        console.print(render_app(result["app"]))
    if "ingest" in result:
        console.print(render_ingest(result["ingest"]))


def _engine_bench(options: dict, log) -> dict:
    """The training-side parts (torch from here on)."""
    from bench.core import BenchConfig, run_bench

    try:
        return run_bench(BenchConfig(**options), log)
    except RuntimeError as e:
        raise fail(str(e)) from None


def _rate(d: dict) -> tuple[str, str]:
    """Median and spread (min–max, n) of an images/s measurement."""
    fmt = "{:,.0f}" if d["median"] >= 100 else "{:,.1f}"
    return fmt.format(d["median"]), f"{fmt.format(d['min'])}–{fmt.format(d['max'])} (n={d['n']})"


def _seconds(d: dict) -> tuple[str, str]:
    return f"{d['median']:.2f} s", f"{d['min']:.2f}–{d['max']:.2f} (n={d['n']})"


def _table(title: str, figure: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("part")
    t.add_column("what")
    t.add_column(figure, justify="right")
    t.add_column("spread (min–max)", justify="right")
    t.add_column("vs", justify="right")
    return t


def _row(t: Table, part: str, what: str, figure: tuple[str, str], vs: str = "") -> None:
    t.add_row(part, what, *figure, vs)


def render(r: dict) -> Table:
    c = r["config"]
    t = _table(
        f"kdtui bench{' --quick' if r['quick'] else ''}: {r['device']}, torch {r['torch']}, "
        f"{c['teacher']}→{c['student']}, batch {c['batch']}, {c['amp']}"
        f"{', channels_last' if c['channels_last'] else ''}, {c['cpu_threads']} CPU threads",
        "images/s",
    )
    if "threads" in r and "chosen" in r["threads"]:
        th = r["threads"]
        for k, v in th.items():
            if k.startswith("threads_"):
                n = k.removeprefix("threads_")
                what = f"engine SimKD step, {n} thread{'s' * (n != '1')}"
                _row(t, "threads", what, _rate(v["images_per_s"]))
        what = f"used below: {th['chosen']} (engine default here: {th['engine_default']})"
        _row(t, "", what, ("", ""), f"1 vs all ×{th['ratio_1_vs_all']:.2f}")
    if "loader" in r:
        lo = r["loader"]
        what = f"DataLoader + PIL ({lo['reference_workers']} workers)"
        _row(t, "loader", what, _rate(lo["reference_images_per_s"]))
        what = "device-resident (uint8, batched crop/flip)"
        _row(t, "", what, _rate(lo["engine_images_per_s"]), f"×{lo['speedup']:.1f}")
    if "step" in r:
        s = r["step"]
        fp32 = "fp32, TF32 convs" if r["device"].startswith("cuda") else "fp32"
        what = f"reference (DataLoader, {fp32}, eager, teacher each step)"
        _row(t, "step", what, _rate(s["reference_images_per_s"]))
        what = f"engine (device loader{', compiled' if s['compile'] else ''})"
        _row(t, "", what, _rate(s["engine_images_per_s"]), f"×{s['speedup']:.2f}")
        what = f"teacher forward alone: {100 * s['teacher_share']:.0f}% of the engine step"
        epoch = f"epoch {s['cifar_epoch_s']:.0f} s"
        _row(t, "", what, _rate(s["teacher_forward_images_per_s"]), epoch)
    if "fused" in r:
        f = r["fused"]
        what = f"{f['students']} separate runs (student images/s)"
        _row(t, "fused", what, _rate(f["separate_images_per_s"]))
        what = f"{f['students']} students, one teacher pass"
        _row(t, "", what, _rate(f["fused_images_per_s"]), f"×{f['speedup']:.2f}")
    if "scaling" in r:
        k = r["scaling"]
        if "skipped" in k:
            _row(t, "scaling", f"skipped: {k['skipped']}", ("", ""))
        else:
            th = k["threads_per_process"]
            unit = "GPU" if k["device"] == "cuda" else f"CPU process, {th} thread{'s' * (th != 1)}"
            n = k["procs"]
            _row(t, "scaling", f"engine SimKD step, 1 {unit}", _rate(k["one_images_per_s"]))
            what = f"{n} × that, data-parallel (DDP), batch {c['batch']} each"
            vs = f"×{k['speedup']:.2f}, efficiency {100 * k['efficiency']:.0f}%"
            _row(t, "", what, _rate(k["many_images_per_s"]), vs)
    if "compile" in r:
        k = r["compile"]
        _row(t, "compile", "engine SimKD step, eager", _rate(k["eager_images_per_s"]))
        what = (
            f"compiled (cold compile {k['compile_cold_s']:.0f} s, "
            f"{k['compile_cached_s']:.0f} s from the on-disk cache)"
        )
        _row(t, "", what, _rate(k["compiled_images_per_s"]), f"×{k['speedup']:.2f}")
        if k["break_even_steps_cold"] is not None:
            what = (
                f"pays off after {k['break_even_steps_cold']:,.0f} steps "
                f"({k['break_even_steps_cached']:,.0f} with the cache)"
            )
        else:
            what = "never pays off here (not faster than eager)"
        _row(t, "", what, ("", ""))
    if "cache" in r:
        k = r["cache"]
        _row(t, "cache", "KD, no cache", _rate(k["uncached_images_per_s"]))
        rows = (
            ("cold", "cold cache (all misses)"),
            ("run240", f"240-epoch run average (hit rate {100 * k['run240_hit_rate']:.0f}%)"),
            (
                "second_run",
                f"2nd run, same teacher, other data seed ({100 * k['second_run_hit_rate']:.0f}%)",
            ),
            ("warm", f"warm: same teacher and data order ({100 * k['warm_hit_rate']:.0f}%)"),
        )
        for key, what in rows:
            vs = f"×{k[f'speedup_{key}']:.2f}"
            _row(t, "", what, _rate(k[f"{key}_images_per_s"]), vs)
    t.caption = (
        f"{r['seconds']:.0f} s; medians of interleaved repeats; ratios against the row above"
    )
    return t


def _ms(d: dict) -> tuple[str, str]:
    return f"{d['median']:.1f} ms", f"{d['min']:.1f}–{d['max']:.1f} (n={d['n']})"


def render_ingest(a: dict) -> Table:
    t = _table("kdtui bench: ingesting run folders (torch-free)", "median")
    n = a["folders"]
    _row(t, "ingest", f"idle poll, {n} queued run folders", _ms(a["idle_poll_queued_ms"]))
    _row(t, "", f"idle poll, {n} running run folders (worst case)", _ms(a["idle_poll_ms"]))
    _row(t, "", f"the app's poll read (ingest + rows), {n} runs", _ms(a["app_poll_read_ms"]))
    what = f"{a['ingest_runs']} runs x {a['ingest_metrics_per_run']:,} new metrics, metrics/s"
    _row(t, "", what, _rate(a["metrics_per_s"]))
    t.caption = "medians of repeats on this machine; a loaded machine reads slower"
    return t


def render_app(a: dict) -> Table:
    t = _table("kdtui bench: the app (torch-free)", "median")
    paint, live = a["first_paint_s"], a["live_latency_s"]
    what = "bare Textual app, start to first paint"
    _row(t, "paint", what, _seconds(a["bare_textual_paint_s"]))
    what = f"kdtui, start to the runs table ({a['runs_in_store']} runs)"
    _row(t, "", what, _seconds(paint), f"×{a['ratio_vs_bare']:.2f}")
    _row(t, "", "python -c 'import torch' (what the app never pays)", _seconds(a["import_torch_s"]))
    what = f"store write → the run's panels (poll every {a['poll_s']:g} s)"
    _row(t, "live", what, _seconds(live))
    paint_ok = "under" if paint["median"] < a["first_paint_target_s"] else "OVER"
    live_ok = "within" if live["max"] <= a["live_target_s"] else "NOT within"
    t.caption = (
        f"targets: first paint {paint_ok} {a['first_paint_target_s']:g} s; "
        f"metrics in view {live_ok} {a['live_target_s']:g} s (worst of {live['n']})"
    )
    return t
