"""`kdtui bench --gpu-check`: the first run on a GPU box, prepared in advance.

One command, no internet, a few minutes on one GPU. It records the machine,
times the SimKD resnet32x4 -> resnet8x4 step (compiled) against the reference
loop, probes the CUDA-path invariants (no recompiles, CUDA graphs recorded once
per member and never skipped, no host syncs per step, fp32 evaluation, RNG
restore, device placement under the engine), runs the quickstart on the GPU and
the fast tests with the GPU visible, and writes `summary.json` and `summary.md`.

Every stage goes through public entry points (`kdtui` commands, `bench.core`,
`engine.train`), so it keeps working as the internals change. `--dry-run` (or
KDTUI_GPU_CHECK_CPU=1) runs every stage on the CPU with tiny sizes: that is how
CI keeps it from rotting; its figures mean nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("env", "probes", "step", "quickstart", "tests")


def dry_from_env() -> bool:
    return os.environ.get("KDTUI_GPU_CHECK_CPU", "") not in ("", "0")


class Check:
    """Runs the stages, each on its own: a failing stage is recorded and the next one runs."""

    def __init__(self, out: Path, *, dry: bool, log: Callable[[str], None] = print):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dry = dry
        self.log = log
        self.summary: dict[str, Any] = {
            "dry_run": dry,
            "started": time.strftime("%F %T"),
            "out": str(self.out),
        }

    # ------------------------------------------------------------ plumbing
    def run(self, stages: tuple[str, ...] = STAGES) -> dict:
        t0 = time.perf_counter()
        for name in stages:
            self.log(f"== {name}")
            t = time.perf_counter()
            try:
                result = getattr(self, f"stage_{name}")()
                status = "ok" if result.pop("_ok", True) else "failed"
            except Exception as e:  # one broken stage must not hide the others
                result = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
                status = "error"
            result["status"] = status
            result["seconds"] = round(time.perf_counter() - t, 1)
            self.summary[name] = result
            self.log(f"   {status} in {result['seconds']} s")
            self.write()
        self.summary["seconds"] = round(time.perf_counter() - t0, 1)
        self.summary["ok"] = all(self.summary[s]["status"] == "ok" for s in stages)
        self.write()
        return self.summary

    def write(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str))
        (self.out / "summary.md").write_text(render_markdown(self.summary))

    def _subprocess(self, name: str, cmd: list[str], timeout: float, env: dict) -> dict:
        log_path = self.out / f"{name}.log"
        t = time.perf_counter()
        with open(log_path, "w") as f:
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    stdin=subprocess.DEVNULL,
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
        text = log_path.read_text(errors="replace")
        return {
            "command": " ".join(cmd),
            "returncode": code,
            "timed_out": code is None,
            "wall_s": round(time.perf_counter() - t, 1),
            "log": str(log_path),
            "tail": text.strip().splitlines()[-15:],
            "_ok": code == 0,
        }

    # ------------------------------------------------------------ stages
    def stage_env(self) -> dict:
        import torch

        out: dict[str, Any] = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "cuda_available": torch.cuda.is_available(),
            "commit": _git(["rev-parse", "HEAD"]),
            "dirty": bool(_git(["status", "--porcelain"])),
        }
        with contextlib.suppress(ImportError):
            import triton

            out["triton"] = triton.__version__
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out.update(
                gpu=p.name,
                capability=f"{p.major}.{p.minor}",
                gpu_memory_gib=round(p.total_memory / 2**30, 1),
                gpu_count=torch.cuda.device_count(),
            )
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit"
            with contextlib.suppress(Exception):
                out["nvidia_smi"] = subprocess.run(
                    [smi, q, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
                ).stdout.strip()
        out["_ok"] = self.dry or torch.cuda.is_available()
        if not out["_ok"]:
            out["error"] = "no CUDA device visible: run with --dry-run on a CPU box"
        return out

    def stage_step(self) -> dict:
        """SimKD resnet32x4 -> resnet8x4, compiled, against the reference loop (bench.core)."""
        from bench.core import BenchConfig, run_bench

        if self.dry:
            cfg = BenchConfig(
                device="cpu",
                teacher="resnet8",
                student="resnet8",
                images=256,
                steps=1,
                warmup=1,
                repeats=1,
                compile=False,
                threads=1,
                parts=("step",),
            )
        else:  # 30 timed steps x 3 repeats: the full mode's 50 would not fit the budget
            cfg = BenchConfig(device="cuda", compile=True, steps=30, warmup=5, parts=("step",))
        from torch._dynamo.utils import counters

        skips = counters["inductor"]["cudagraph_skips"]
        r = run_bench(cfg, lambda s: self.log(f"   {s.strip()}"))
        skips = counters["inductor"]["cudagraph_skips"] - skips
        s = r["step"]
        ref, eng = s["reference_images_per_s"]["median"], s["engine_images_per_s"]["median"]
        return {
            "device": r["device"],
            "pair": f"{r['config']['teacher']}->{r['config']['student']}",
            "batch": r["config"]["batch"],
            "amp": r["config"]["amp"],
            "compile": s["compile"],
            "reference_images_per_s": s["reference_images_per_s"],
            "engine_images_per_s": s["engine_images_per_s"],
            "reference_epoch_s": 50_000 / ref,
            "engine_epoch_s": 50_000 / eng,
            "speedup": s["speedup"],
            "teacher_share": s["teacher_share"],
            "cudagraph_skips": skips,
            "_ok": skips == 0 or not s["compile"],
        }

    def stage_quickstart(self) -> dict:
        home = Path(tempfile.mkdtemp(prefix="kdtui-gpucheck-"))
        cmd = [sys.executable, "-m", "kdtui.cli", "run", "experiments/quickstart.toml"]
        if self.dry:  # the same file, cut to a few steps
            cmd += ["--set", "optim.epochs=1", "--set", "teacher.optim.epochs=1"]
            cmd += ["--set", "run.max_steps=2"]
        else:
            cmd += ["--set", "run.device=cuda"]
        env = {"KDTUI_HOME": str(home)}
        res = self._subprocess("quickstart", cmd, 180, env)
        board = subprocess.run(
            [sys.executable, "-m", "kdtui.cli", "leaderboard"],
            cwd=ROOT,
            env={**os.environ, "KDTUI_HOME": str(home), "COLUMNS": "160"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        res["leaderboard"] = board.stdout.strip().splitlines()
        shutil.rmtree(home, ignore_errors=True)
        return res

    def stage_tests(self) -> dict:
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
        if self.dry:  # the wiring only: the suite itself runs in CI already
            cmd += ["tests/test_layering.py"]
        else:
            cmd += ["-m", "not slow", "--deselect", "tests/test_gpu_check.py"]
        return self._subprocess("tests", cmd, 120 if self.dry else 180, {})

    def stage_probes(self) -> dict:
        from bench import gpu_probes

        probes = gpu_probes.Probes(self.dry, self.out, self.log)
        results: dict[str, Any] = {}
        ok = True
        for name in gpu_probes.NAMES:
            self.log(f"   probe {name}")
            try:
                res = getattr(probes, name)()
            except Exception as e:
                res = {"passed": False, "error": f"{type(e).__name__}: {e}"}
                (self.out / f"probe-{name}.trace").write_text(traceback.format_exc())
            results[name] = res
            ok = ok and res.get("passed") is not False
            self.log(f"     {json.dumps(res, default=str)[:300]}")
        results["_ok"] = ok
        return results


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except Exception:
        return None


def render_markdown(s: dict) -> str:
    lines = [
        f"# kdtui GPU check{' (dry run on the CPU: figures mean nothing)' if s.get('dry_run') else ''}",
        "",
        f"started {s.get('started')}, {s.get('seconds', '…')} s, ok: {s.get('ok', '…')}",
        "",
    ]
    env = s.get("env", {})
    if env:
        lines += [
            f"- machine: {env.get('gpu', 'no GPU')} ({env.get('capability', '-')}, "
            f"{env.get('gpu_memory_gib', '-')} GiB), {env.get('cpu_count')} CPUs",
            f"- torch {env.get('torch')}, CUDA {env.get('cuda_runtime')}, cuDNN "
            f"{env.get('cudnn')}, triton {env.get('triton', '-')}, Python {env.get('python')}",
            f"- nvidia-smi: {env.get('nvidia_smi', '-')}",
            f"- kdtui commit {env.get('commit')}{' (dirty)' if env.get('dirty') else ''}",
            "",
        ]
    step = s.get("step", {})
    if step.get("status") == "ok":
        lines += [
            f"## Step: {step['pair']}, batch {step['batch']}, {step['amp']}, "
            f"compile {step['compile']} ({step['device']})",
            "",
            "| loop | images/s (median) | s per 50k-image epoch |",
            "| --- | ---: | ---: |",
            f"| reference (DataLoader, fp32, eager) | "
            f"{step['reference_images_per_s']['median']:,.0f} | {step['reference_epoch_s']:.1f} |",
            f"| engine | {step['engine_images_per_s']['median']:,.0f} | "
            f"{step['engine_epoch_s']:.1f} |",
            "",
            f"speed-up ×{step['speedup']:.2f}; teacher forward "
            f"{100 * step['teacher_share']:.0f} % of the engine step; CUDA-graph skips "
            f"{step['cudagraph_skips']}",
            "",
        ]
    lines += ["## Stages", "", "| stage | status | seconds | note |", "| --- | --- | ---: | --- |"]
    for name in STAGES:
        st = s.get(name)
        if not st:
            continue
        note = st.get("error", "")
        if name == "probes":
            bad = [k for k, v in st.items() if isinstance(v, dict) and v.get("passed") is False]
            note = note or ("failed: " + ", ".join(bad) if bad else "all passed")
        if "returncode" in st:
            note = note or f"exit {st['returncode']}{' (timed out)' if st['timed_out'] else ''}"
        lines.append(f"| {name} | {st.get('status')} | {st.get('seconds')} | {note} |")
    probes = s.get("probes", {})
    if probes:
        lines += ["", "## Probes", ""]
        for k, v in probes.items():
            if isinstance(v, dict):
                lines.append(f"- **{k}**: {json.dumps(v, default=str)}")
    return "\n".join(lines) + "\n"


def run_check(out: Path | None, dry: bool, log: Callable[[str], None] = print) -> dict:
    out = out or Path(f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}")
    logging.getLogger("torch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        return Check(out, dry=dry, log=log).run()
