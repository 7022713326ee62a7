"""The `kdtui bench` command (torch is imported only when it runs)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from kdtui.options import console, err, fail

PART_NAMES = ("threads", "loader", "step", "fused", "cache", "app")
APP_ONLY = ("app",)


def _parts(value: str | None) -> tuple[str, ...]:
    if not value:
        return PART_NAMES
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in parts if p not in PART_NAMES]
    if bad:
        raise fail(f"--only: unknown part(s) {', '.join(bad)}; choose from {', '.join(PART_NAMES)}")
    return parts


def register(app: typer.Typer) -> None:
    """Add `bench` to the main app."""

    @app.command()
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
            typer.Option("--only", help=f"Comma-separated parts to run ({', '.join(PART_NAMES)})."),
        ] = None,
        device: Annotated[
            str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
        ] = "auto",
        teacher: Annotated[
            str | None, typer.Option("--teacher", help="Teacher architecture.")
        ] = None,
        student: Annotated[
            str | None, typer.Option("--student", help="Student architecture.")
        ] = None,
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
            typer.Option(
                "--workers", help="Reference DataLoader workers (-1: 8 on CUDA, 0 on CPU)."
            ),
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
    ) -> None:
        """Speed of our engine against a reference-style KD loop, on this device."""
        from engine.registry import ARCHS

        for name, arch in (("--teacher", teacher), ("--student", student)):
            if arch and arch not in ARCHS:
                raise fail(f"{name}: unknown architecture {arch!r}; see `kdtui models`")
        parts = _parts(only)

        def log(line: str) -> None:
            if not json_out:
                err.print(f"[dim]{line}[/]", highlight=False)

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
                    "parts": engine_parts,
                },
                log,
            )
        if "app" in parts:
            from bench.app import run_app_bench  # torch-free, like the app

            result["app"] = run_app_bench(
                repeats=repeats or (3 if quick else 5), writes=5 if quick else 10, log=log
            )
        if json_out:
            print(json.dumps(result, indent=1, default=str))
            return
        if engine_parts:
            console.print(render(result))
        if "app" in result:
            console.print(render_app(result["app"]))


def _engine_bench(options: dict, log) -> dict:
    """The training-side parts (torch from here on)."""
    from bench.core import BenchConfig, run_bench

    try:
        return run_bench(BenchConfig(**options), log)
    except RuntimeError as e:
        raise fail(str(e)) from None


def _rate(d: dict | None) -> str:
    if not d:
        return ""
    med = d["median"]
    return f"{med:,.0f}" if med >= 100 else f"{med:,.1f}"


def _spread(d: dict | None) -> str:
    if not d:
        return ""
    fmt = "{:,.0f}" if d["median"] >= 100 else "{:,.1f}"
    return f"{fmt.format(d['min'])}–{fmt.format(d['max'])} (n={d['n']})"


def render(r: dict) -> Table:
    c = r["config"]
    title = (
        f"kdtui bench{' --quick' if r['quick'] else ''}: {r['device']}, torch {r['torch']}, "
        f"{c['teacher']}→{c['student']}, batch {c['batch']}, {c['amp']}"
        f"{', channels_last' if c['channels_last'] else ''}, {c['cpu_threads']} CPU threads"
    )
    t = Table(title=title, title_justify="left")
    t.add_column("part")
    t.add_column("what")
    t.add_column("images/s", justify="right")
    t.add_column("spread (min–max)", justify="right")
    t.add_column("vs", justify="right")

    if "threads" in r and "chosen" in r["threads"]:
        th = r["threads"]
        for k, v in th.items():
            if k.startswith("threads_"):
                n = k.removeprefix("threads_")
                t.add_row(
                    "threads",
                    f"engine SimKD step, {n} thread{'s' * (n != '1')}",
                    _rate(v["images_per_s"]),
                    _spread(v["images_per_s"]),
                    "",
                )
        t.add_row(
            "",
            f"used below: {th['chosen']} (engine default here: {th['engine_default']})",
            "",
            "",
            f"1 vs all ×{th['ratio_1_vs_all']:.2f}",
        )
    if "loader" in r:
        lo = r["loader"]
        t.add_row(
            "loader",
            f"DataLoader + PIL ({lo['reference_workers']} workers)",
            _rate(lo["reference_images_per_s"]),
            _spread(lo["reference_images_per_s"]),
            "",
        )
        t.add_row(
            "",
            "device-resident (uint8, batched crop/flip)",
            _rate(lo["engine_images_per_s"]),
            _spread(lo["engine_images_per_s"]),
            f"×{lo['speedup']:.1f}",
        )
    if "step" in r:
        s = r["step"]
        t.add_row(
            "step",
            "reference (DataLoader, fp32, eager, teacher each step)",
            _rate(s["reference_images_per_s"]),
            _spread(s["reference_images_per_s"]),
            "",
        )
        t.add_row(
            "",
            f"engine (device loader{', compiled' if s['compile'] else ''})",
            _rate(s["engine_images_per_s"]),
            _spread(s["engine_images_per_s"]),
            f"×{s['speedup']:.2f}",
        )
        t.add_row(
            "",
            f"teacher forward alone: {100 * s['teacher_share']:.0f}% of the engine step",
            _rate(s["teacher_forward_images_per_s"]),
            _spread(s["teacher_forward_images_per_s"]),
            f"epoch {s['cifar_epoch_s']:.0f} s",
        )
    if "fused" in r:
        f = r["fused"]
        t.add_row(
            "fused",
            f"{f['students']} separate runs (student images/s)",
            _rate(f["separate_images_per_s"]),
            _spread(f["separate_images_per_s"]),
            "",
        )
        t.add_row(
            "",
            f"{f['students']} students, one teacher pass",
            _rate(f["fused_images_per_s"]),
            _spread(f["fused_images_per_s"]),
            f"×{f['speedup']:.2f}",
        )
    if "cache" in r:
        k = r["cache"]
        t.add_row(
            "cache",
            "KD, no cache",
            _rate(k["uncached_images_per_s"]),
            _spread(k["uncached_images_per_s"]),
            "",
        )
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
            t.add_row(
                "",
                what,
                _rate(k[f"{key}_images_per_s"]),
                _spread(k[f"{key}_images_per_s"]),
                f"×{k[f'speedup_{key}']:.2f}",
            )
    t.caption = (
        f"{r['seconds']:.0f} s; medians of interleaved repeats; ratios against the row above"
    )
    return t


def _seconds(d: dict) -> str:
    return f"{d['median']:.2f} s"


def _seconds_spread(d: dict) -> str:
    return f"{d['min']:.2f}–{d['max']:.2f} (n={d['n']})"


def render_app(a: dict) -> Table:
    t = Table(title="kdtui bench: the app (torch-free)", title_justify="left")
    t.add_column("part")
    t.add_column("what")
    t.add_column("median", justify="right")
    t.add_column("spread (min–max)", justify="right")
    t.add_column("vs", justify="right")
    paint = a["first_paint_s"]
    verdict = "under" if paint["median"] < a["first_paint_target_s"] else "OVER"
    t.add_row(
        "paint",
        "bare Textual app, start to first paint",
        _seconds(a["bare_textual_paint_s"]),
        _seconds_spread(a["bare_textual_paint_s"]),
        "",
    )
    t.add_row(
        "",
        f"kdtui, start to the runs table ({a['runs_in_store']} runs)",
        _seconds(paint),
        _seconds_spread(paint),
        f"×{a['ratio_vs_bare']:.2f}",
    )
    t.add_row(
        "",
        "python -c 'import torch' (what the app never pays)",
        _seconds(a["import_torch_s"]),
        _seconds_spread(a["import_torch_s"]),
        "",
    )
    live = a["live_latency_s"]
    t.add_row(
        "live",
        f"store write → the run's panels (poll every {a['poll_s']:g} s)",
        _seconds(live),
        _seconds_spread(live),
        "",
    )
    t.caption = (
        f"targets: first paint {verdict} {a['first_paint_target_s']:g} s; "
        f"metrics in view {'within' if live['max'] <= a['live_target_s'] else 'NOT within'} "
        f"{a['live_target_s']:g} s (worst of {live['n']})"
    )
    return t
