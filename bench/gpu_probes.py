"""The probes of `kdtui bench --gpu-check`: issue 17's invariants, measured on the device.

Each probe returns a dict with `passed` (True, False, or None where the CPU cannot show
it) and the figures behind it. On the GPU the compiled probes use Inductor with the
run's own compile mode (reduce-overhead: CUDA graphs); in a dry run on the CPU they use
Dynamo's "eager" backend, which has the same guards and caching (what decides
recompiles) without minutes of CPU code generation.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.cache import TeacherCache
from engine.core import layout, planning, reading, schema
from engine.core.schema import DataConfig
from engine.data import build_data
from engine.models import build_model
from engine.train import (
    CachedTeacherSource,
    NullCallbacks,
    build_member,
    evaluate,
    fit,
    pick_runtime,
    plain_teacher_source,
    train_step,
)

NAMES = ("recompiles", "host_syncs", "eval_dtype", "rng_restore", "device_mapping")
ROOT = Path(__file__).resolve().parent.parent


def _experiment(method: str, device: str, *, epochs: int, sweep: str = ""):
    # 4 steps an epoch on the GPU; 2 on the CPU (a dry run)
    train, test, batch = (256, 128, 64) if device == "cuda" else (64, 32, 32)
    return reading.loads(
        f"""
name = "gpu-check-{method}"
[data]
dataset = "synthetic"
train_size = {train}
test_size = {test}
batch_size = {batch}
num_classes = 10
[teacher]
arch = "resnet8"
checkpoint = "unused.pth"
[student]
arch = "resnet8"
[distill]
method = "{method}"
[optim]
epochs = {epochs}
[run]
device = "{device}"
compile = true
log_every = 4
{sweep}
"""
    )


class _Counting(logging.Handler):
    def __init__(self, needle: str):
        super().__init__(logging.DEBUG)
        self.needle, self.count = needle, 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.count += 1


class _EpochSnapshots(NullCallbacks):
    """Counts (graphs compiled, CUDA graphs recorded) at the end of every epoch."""

    def __init__(self, read: Callable[[], tuple[int, int]]):
        self.read, self.seen = read, {}

    def on_epoch(self, m, epoch, metrics):
        self.seen[epoch] = self.read()


class Probes:
    def __init__(self, dry: bool, out: Path, log: Callable[[str], None] = print):
        self.dry = dry
        self.out = out
        self.log = log
        self.cuda = torch.cuda.is_available() and not dry
        self.device = "cuda" if self.cuda else "cpu"
        self.tmp = Path(tempfile.mkdtemp(prefix="kdtui-probes-"))

    def _runtime(self, **kw):
        run = schema.RunConfig(device=self.device, threads=0 if self.cuda else 1, **kw)
        return pick_runtime(run)

    def _teacher(self, runtime):
        torch.manual_seed(0)
        return build_model("resnet8", num_classes=10).to(runtime.device).eval()

    def _members(self, exp, runtime, teacher, backend):
        out = []
        for i, plan in enumerate(planning.expand(exp)):
            d = self.tmp / f"{exp.name}-{i}-{time.monotonic_ns()}"
            d.mkdir()
            out.append(build_member(f"m{i}", plan.config, teacher, 10, runtime, d, backend=backend))
        return out

    # ------------------------------------------------------------ 1 and 6
    def recompiles(self) -> dict:
        """A DKD run over 3 epochs (its warm-up changes every epoch) and a fused 2-member
        temperature sweep over 2: graphs compiled and CUDA graphs recorded after the first
        epoch must not grow afterwards; no CUDA-graph skips."""
        import torch._dynamo
        from torch._dynamo.utils import counters

        runtime = self._runtime()
        teacher = self._teacher(runtime)
        backend = None if self.cuda else "eager"
        recorded = _Counting("Recording function")
        graph_log = logging.getLogger("torch._inductor.cudagraph_trees.__cudagraphs")
        if self.cuda:  # count cudagraph_trees' debug records, without printing them
            torch._logging.set_logs(cudagraphs=True)
            graph_log.addHandler(recorded)
            graph_log.propagate = False
        out: dict[str, Any] = {"backend": backend or "inductor", "passed": True}
        try:
            cases = {
                "dkd": _experiment("dkd", self.device, epochs=3),
                "kd_temperature_sweep": _experiment(
                    "kd", self.device, epochs=2, sweep='[sweep]\n"distill.temperature" = [4.0, 2.0]'
                ),
            }
            for name, exp in cases.items():
                torch._dynamo.reset()
                counters.clear()
                recorded.count = 0
                data = build_data(exp.data, seed=0, device=runtime.device)
                members = self._members(exp, runtime, teacher, backend)
                logits_only = exp.method.teacher_outputs == "logits"
                source = plain_teacher_source(teacher, runtime, logits_only=logits_only)
                snaps = _EpochSnapshots(
                    lambda: (counters["stats"]["unique_graphs"], recorded.count)
                )
                fit(members, data, source, runtime, snaps)
                first, last = snaps.seen[0], snaps.seen[max(snaps.seen)]
                skips = counters["inductor"]["cudagraph_skips"]
                syncs = self._syncs_per_step(members, data, source, runtime)
                res = {
                    "members": len(members),
                    "epochs": exp.optim.epochs,
                    "graphs_after_epoch_1": first[0],
                    "graphs_at_end": last[0],
                    "cudagraphs_recorded_after_epoch_1": first[1] if self.cuda else None,
                    "cudagraphs_recorded_at_end": last[1] if self.cuda else None,
                    "cudagraph_skips": skips,
                    "compiled_syncs_per_step": syncs,
                    "status": [m.status for m in members],
                }
                res["passed"] = (
                    first == last
                    and first[0] >= 1
                    and skips == 0
                    and syncs in (0, None)
                    and all(m.status == "done" for m in members)
                )
                out[name] = res
                out["passed"] = out["passed"] and res["passed"]
        finally:
            if self.cuda:
                torch._logging.set_logs()
                graph_log.removeHandler(recorded)
                graph_log.propagate = True
        return out

    def _syncs_per_step(self, members, data, source, runtime) -> float | None:
        """Host syncs per fused step (every member once) over a few more steps (CUDA only)."""
        if not self.cuda:
            return None
        batches = [b for b in data.train.batches(99) if b.x.shape[0] == data.train.batch_size]
        for m in members:
            m.distiller.train()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for b in batches:
                    t_out = source(b)
                    for m in members:
                        train_step(m, b, t_out, 0, runtime)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        return sum("synchroniz" in str(w.message) for w in caught) / len(batches)

    # ------------------------------------------------------------ 2
    def host_syncs(self) -> dict:
        """Steady-state steps of KD through the teacher cache (memory, then disk) and of an
        eager SimKD step: host syncs per step from torch.cuda.set_sync_debug_mode."""
        runtime = self._runtime()
        teacher = self._teacher(runtime)
        out: dict[str, Any] = {}
        for name, method, cache in (
            ("kd_memory_cache", "kd", "memory"),
            ("kd_disk_cache", "kd", "disk"),
            ("simkd", "simkd", None),
        ):
            exp = _experiment(method, self.device, epochs=1)
            exp.run.compile = False
            data = build_data(exp.data, seed=0, device=runtime.device)
            (m,) = self._members(exp, runtime, teacher, None)
            if cache:
                c = TeacherCache(
                    data.train.num_samples,
                    10,
                    dtype=torch.float16,
                    limit_bytes=64 * 2**20,
                    device=runtime.device,
                    path=self.tmp / f"cache-{time.monotonic_ns()}" if cache == "disk" else None,
                )
                source = CachedTeacherSource(teacher, runtime, c)
            else:
                source = plain_teacher_source(teacher, runtime)
            batches = [b for e in range(3) for b in data.train.batches(e)]
            warm, timed = batches[:4], batches[4:]
            for b in warm:
                train_step(m, b, source(b), 0, runtime)
            if not self.cuda:
                for b in timed:
                    train_step(m, b, source(b), 0, runtime)
                out[name] = {"syncs_per_step": None, "steps": len(timed)}
                continue
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for b in timed:
                        train_step(m, b, source(b), 0, runtime)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
            syncs = [
                str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)
            ]
            out[name] = {
                "syncs_per_step": len(syncs) / len(timed),
                "steps": len(timed),
                "first": syncs[:3],
            }
        if self.cuda:
            out["passed"] = all(v["syncs_per_step"] == 0 for v in out.values())
        else:
            out["passed"] = None  # CPU: no device to wait for (tests/test_cuda_path.py checks
            # the cache path on the meta device)
        return out

    # ------------------------------------------------------------ 3
    def eval_dtype(self) -> dict:
        runtime = self._runtime(amp="bf16")
        model = self._teacher(runtime)
        seen: set[torch.dtype] = set()
        hooks = [
            mod.register_forward_hook(lambda _m, _i, o: seen.add(o.dtype))
            for mod in model.modules()
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))
        ]
        data = build_data(
            DataConfig(dataset="synthetic", train_size=64, test_size=128, num_classes=10),
            seed=0,
            device=runtime.device,
        )
        try:
            with runtime.autocast():
                model(data.test.images[:2].float())
            trained_in = sorted(str(d) for d in seen)
            seen.clear()
            evaluate(model, data.test, runtime)
        finally:
            for h in hooks:
                h.remove()
        got = sorted(str(d) for d in seen)
        return {"train_dtype": trained_in, "eval_dtypes": got, "passed": got == ["torch.float32"]}

    # ------------------------------------------------------------ 4
    def rng_restore(self) -> dict:
        runtime = self._runtime()
        exp = _experiment("vanilla", self.device, epochs=1)
        exp.run.compile = False
        (m,) = self._members(exp, runtime, None, None)
        torch.manual_seed(5)
        if self.cuda:
            torch.cuda.manual_seed_all(6)
        m.save("last")
        want = [torch.rand(4)] + ([torch.rand(4, device="cuda")] if self.cuda else [])
        torch.manual_seed(7)
        if self.cuda:
            torch.cuda.manual_seed_all(8)
        m.restore(m.dir / layout.LAST)
        got = [torch.rand(4)] + ([torch.rand(4, device="cuda")] if self.cuda else [])
        same = [bool(torch.equal(a, b.to(a.device))) for a, b in zip(want, got)]
        return {
            "cpu_restored": same[0],
            "cuda_restored": same[1] if self.cuda else None,
            "passed": all(same),
        }

    # ------------------------------------------------------------ 5
    def device_mapping(self) -> dict:
        """The engine for real: a `device = "cpu"` run goes to a CPU slot, a `cuda:0` run to
        GPU 0's slot (on a CPU box: refused with the fix), both in a fresh store."""
        from engine.core.store import Store

        home = self.tmp / "engine-home"
        env = {**os.environ, "KDTUI_HOME": str(home)}
        gpus = "0" if self.cuda else "none"

        def cli(*args, timeout=120):
            return subprocess.run(
                [sys.executable, "-m", "kdtui.cli", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )

        exp_dir = self.tmp / "exps"
        exp_dir.mkdir(exist_ok=True)
        files = {}
        for name, device in (("on-cpu", "cpu"), ("on-gpu0", "cuda:0")):
            path = exp_dir / f"{name}.toml"
            path.write_text(
                f'name = "{name}"\n[data]\ndataset = "digits"\n[student]\narch = "resnet8"\n'
                f'[optim]\nepochs = 1\n[run]\ndevice = "{device}"\nmax_steps = 2\nthreads = 1\n'
            )
            files[name] = path
        started = cli("engine", "start", "--gpus", gpus)
        out: dict[str, Any] = {"engine_start": started.stdout.strip() or started.stderr.strip()}
        try:
            for path in files.values():
                cli("submit", str(path), "--no-start")
            store = Store(home)
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                runs = store.runs()
                if runs and all(r.status in ("done", "failed", "cancelled") for r in runs):
                    break
                time.sleep(1)
            runs = {r.experiment: r for r in store.runs()}
            store.close()
        finally:
            cli("engine", "stop", "--runs", timeout=60)
        cpu_run, gpu_run = runs.get("on-cpu"), runs.get("on-gpu0")
        out["cpu_run"] = cpu_run and {
            "status": cpu_run.status,
            "slot_gpu": cpu_run.gpu,
            "device": cpu_run.device,
            "error": cpu_run.error,
        }
        out["gpu_run"] = gpu_run and {
            "status": gpu_run.status,
            "slot_gpu": gpu_run.gpu,
            "device": gpu_run.device,
            "error": gpu_run.error,
        }
        cpu_ok = bool(cpu_run and cpu_run.status == "done" and cpu_run.gpu is None)
        if self.cuda:
            gpu_ok = bool(
                gpu_run
                and gpu_run.status == "done"
                and gpu_run.gpu == "0"
                and (gpu_run.device or "").startswith("cuda:0")
            )
        else:
            gpu_ok = bool(
                gpu_run and gpu_run.status == "failed" and "no GPU" in (gpu_run.error or "")
            )
        out["passed"] = cpu_ok and gpu_ok
        return out
