"""`kdtui bench`: our engine against a reference-style KD loop, in one process.

Everything runs on the current device over the same synthetic CIFAR-shaped
data (uint8 32x32 images, 100 classes by default):

- reference: the published recipe: a torchvision DataLoader with PIL
  transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
  Normalize), fp32 with PyTorch's default switches (on CUDA its convolutions
  run in TF32, as stock scripts' do), eager, the teacher recomputed every step, plain
  `torch.optim.SGD`, `loss.item()` and top-1 every step (as RepDistiller's
  meters do);
- engine: the device-resident loader, the engine's teacher source and
  `train_step` (bf16 autocast, channels_last and fused SGD on CUDA,
  `torch.compile` when asked), loss sums kept on the device like `fit`.

Parts: loader alone, the SimKD step (and the teacher's share of it), a fused
sweep (N students behind one teacher pass vs N separate runs), the exact
teacher-logit cache on a KD run (cold, at the hit rate a 240-epoch run
averages, warm) and data-parallel scaling (the step on every visible GPU
against one, bench/scaling.py; skipped with fewer than two GPUs unless
`--procs N` asks for N CPU processes). Every figure is the median of `repeats` interleaved
measurements, with the spread (min-max) next to it: on a shared box timings
are noisy, ratios measured side by side much less so.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from bench.setup import (  # noqa: F401 (re-exported: bench.core.BenchConfig, PARTS)
    DEFAULT_PARTS,
    MEAN,
    PARTS,
    STD,
    BenchConfig,
    _data_config,
    _device_loader,
    _endless,
    _endless_reference,
    _experiment,
    _reference_loader,
    _sync,
    _synthetic_arrays,
)
from bench.stats import median_spread
from engine.cache import TeacherCache, cached_logits
from engine.core import schema
from engine.core.views import NUM_VIEWS
from engine.data import Batch, time_loader
from engine.distill.base import TeacherOut, build_distiller
from engine.models import build_model
from engine.train import (
    Runtime,
    auto_threads,
    build_member,
    lr_at,
    pick_runtime,
    plain_teacher_source,
    train_step,
)

# expected hit rate of a 240-epoch run over a cold cache: at epoch e a view was seen
# before with probability 1 - (161/162)^e; the mean over e = 0..239
EPOCHS_240 = 240


def expected_hit_rate(epochs: int, views: int = NUM_VIEWS, before: int = 0) -> float:
    """Mean hit rate over `epochs` epochs when `before` epochs already filled the cache."""
    q = 1 - 1 / views
    return 1 - q**before * (1 - q**epochs) / (epochs * (1 - q))


class Timer:
    """Times a step function: `warmup` calls, then `steps` calls, CUDA-synchronised."""

    def __init__(self, device: torch.device):
        self.device = device

    def images_per_s(self, step: Callable[[], int], steps: int, warmup: int) -> float:
        for _ in range(warmup):
            step()
        _sync(self.device)
        n = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            n += step()
        _sync(self.device)
        return n / max(time.perf_counter() - t0, 1e-9)


@contextlib.contextmanager
def stock_precision():
    """PyTorch's default precision switches, as the published scripts run: on CUDA the
    reference's fp32 convolutions use TF32 (cuDNN's default, allow_tf32 = True) and its
    matmuls full fp32 (matmul.allow_tf32 = False), whatever the engine set for itself."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------- the bench
class Bench:
    def __init__(self, cfg: BenchConfig, log: Callable[[str], None] = lambda s: None):
        run = schema.RunConfig()
        run.device = cfg.device
        self.runtime = pick_runtime(run)
        self.cuda = self.runtime.device.type == "cuda"
        self.c = cfg.resolve(self.cuda)
        self.run_cfg = run
        self.log = log
        self.timer = Timer(self.runtime.device)
        self.tmp = Path(tempfile.mkdtemp(prefix="kdtui-bench-"))
        if self.c.threads:
            torch.set_num_threads(self.c.threads)
        self.x, self.y = _synthetic_arrays(self.c)
        torch.manual_seed(0)
        self.teacher = build_model(self.c.teacher, num_classes=self.c.classes)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        mf = torch.channels_last if self.runtime.channels_last else torch.preserve_format
        self.teacher_dev = copy.deepcopy(self.teacher).to(self.runtime.device, memory_format=mf)

    # ---- helpers
    def _members(self, method: str, lrs: list[float], compile: bool = False):
        run = copy.deepcopy(self.run_cfg)
        run.compile = compile
        out = []
        for i, lr in enumerate(lrs):
            exp = _experiment(self.c, method, lr, run)
            d = self.tmp / f"{method}-{i}"
            d.mkdir(exist_ok=True)
            out.append(
                build_member(
                    f"{method}-{i}",
                    exp,
                    self.teacher_dev,
                    self.c.classes,
                    self.runtime,
                    d,
                )
            )
        return out

    def _engine_step(self, members, source, stream, *, separate: bool = False):
        """One engine step for every member (like `fit`'s inner loop); returns images."""
        runtime = self.runtime
        sums = {m.name: torch.zeros((), device=runtime.device) for m in members}
        correct = {m.name: torch.zeros((), device=runtime.device) for m in members}
        step_i = [0]

        def step() -> int:
            batch = next(stream)
            t_out = None if separate else source(batch)
            for m in members:
                if separate:
                    t_out = source(batch)
                lr = lr_at(m.cfg.optim, 0, step_i[0] / 1000)
                for g in m.optimizer.param_groups:
                    g["lr"] = lr
                loss, _, logits = train_step(m, batch, t_out, 0, runtime)
                sums[m.name] += loss  # on the device, like fit's log windows
                correct[m.name] += logits.argmax(1).eq(batch.y).sum()
            step_i[0] += 1
            return batch.x.shape[0] * len(members)

        return step

    def _interleaved(self, phases: dict[str, Callable[[], int]], steps: int) -> dict[str, dict]:
        """images/s of each phase, `repeats` rounds of all phases in turn."""
        out: dict[str, list[float]] = {k: [] for k in phases}
        for r in range(self.c.repeats):
            for name, step in phases.items():
                warm = self.c.warmup if r == 0 else min(1, self.c.warmup)
                out[name].append(self.timer.images_per_s(step, steps, warm))
                self.log(f"  {name}: {out[name][-1]:.1f} images/s")
        return {k: median_spread(v) for k, v in out.items()}

    # ---- parts
    def part_threads(self) -> dict:
        """1 thread vs the default count on the engine's SimKD step (CPU only)."""
        most = os.cpu_count() or 1
        if self.cuda or most == 1 or self.c.threads:
            return {"skipped": "CUDA, a single core or --threads given", "threads": most}
        members = self._members("simkd", [0.05])
        source = plain_teacher_source(self.teacher_dev, self.runtime)
        stream = _endless(_device_loader(self.c, self.x, self.y, self.runtime))
        step = self._engine_step(members, source, stream)
        res: dict[int, list[float]] = {most: [], 1: []}
        steps = 1 if self.c.quick else max(2, self.c.steps // 2)
        for _ in range(1 if self.c.quick else self.c.repeats):
            for n in (most, 1):
                torch.set_num_threads(n)
                res[n].append(self.timer.images_per_s(step, steps, 1))
        best = max(res, key=lambda n: statistics.median(res[n]))
        torch.set_num_threads(best)
        return {f"threads_{n}": {"images_per_s": median_spread(v)} for n, v in res.items()} | {
            "chosen": best,
            "engine_default": auto_threads(),
            "ratio_1_vs_all": statistics.median(res[1]) / statistics.median(res[most]),
        }

    def part_loader(self) -> dict:
        ref = _reference_loader(self.c, self.x, self.y, self.runtime.device)
        dev = _device_loader(self.c, self.x, self.y, self.runtime)
        n_batches = max(4, min(len(dev), 4 * self.c.steps))
        ref_rates, dev_rates = [], []
        for _ in range(self.c.repeats):
            t0 = time.perf_counter()
            seen = 0
            for i, (xb, _yb, _ib) in enumerate(ref):
                xb = xb.to(self.runtime.device, non_blocking=True)
                seen += xb.shape[0]
                if i + 1 >= n_batches:
                    break
            _sync(self.runtime.device)
            ref_rates.append(seen / (time.perf_counter() - t0))
            dev_rates.append(time_loader(dev, 1))
        r, d = statistics.median(ref_rates), statistics.median(dev_rates)
        return {
            "reference_images_per_s": median_spread(ref_rates),
            "engine_images_per_s": median_spread(dev_rates),
            "speedup": d / r,
            "reference_us_per_image": 1e6 / r,
            "reference_workers": self.c.workers,
        }

    def _reference_step(self):
        """The published recipe, written out: DataLoader + PIL, fp32, eager, teacher each step."""
        dev = self.runtime.device
        teacher = copy.deepcopy(self.teacher).to(dev).eval()
        torch.manual_seed(0)
        student = build_model(self.c.student, num_classes=self.c.classes)
        distiller = build_distiller("simkd", student, teacher, {}, num_classes=self.c.classes).to(
            dev
        )
        params = distiller.trainable_parameters()
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
        loader = _reference_loader(self.c, self.x, self.y, dev)
        it = _endless_reference(loader)
        distiller.train()
        meters = [0.0, 0.0]

        def step() -> int:
            with stock_precision():
                x, y, _ = next(it)
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.no_grad():
                    feats, logits_t = teacher.forward_all(x)
                batch, t_out = Batch.of(x, y), TeacherOut(feats, logits_t)
                logits, losses = distiller.forward_train(batch, t_out)
                loss = sum(losses.values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                meters[0] += loss.item()  # AverageMeter.update(loss.item()) every step
                meters[1] += logits.argmax(1).eq(y).float().mean().item()
            return x.shape[0]

        return step

    def part_step(self) -> dict:
        members = self._members("simkd", [0.05], compile=bool(self.c.compile))
        source = plain_teacher_source(
            self.teacher_dev, self.runtime, compile=bool(self.c.compile), batch_size=self.c.batch
        )
        stream = _endless(_device_loader(self.c, self.x, self.y, self.runtime))
        engine = self._engine_step(members, source, stream)
        reference = self._reference_step()
        t_stream = _endless(_device_loader(self.c, self.x, self.y, self.runtime, seed=1))

        def teacher_only() -> int:
            b = next(t_stream)
            source(b)
            return b.x.shape[0]

        if self.c.compile:  # compile outside the timed rounds
            self.log("  compiling the engine step (torch.compile)…")
            for _ in range(3):
                engine()
                teacher_only()
        res = self._interleaved(
            {"reference": reference, "engine": engine, "teacher_forward": teacher_only},
            self.c.steps,
        )
        ref, eng = res["reference"]["median"], res["engine"]["median"]
        teacher = res["teacher_forward"]["median"]
        return {
            "reference_images_per_s": res["reference"],
            "engine_images_per_s": res["engine"],
            "teacher_forward_images_per_s": res["teacher_forward"],
            "speedup": eng / ref,
            # time per image of the teacher's forward over time per image of the whole step
            "teacher_share": (1 / teacher) / (1 / eng),
            "cifar_epoch_s": 50_000 / eng,
            "compile": bool(self.c.compile),
        }

    def part_fused(self) -> dict:
        n = self.c.sweep
        lrs = [0.001, 0.005, 0.01, 0.05, 0.1][:n] if n <= 5 else [0.05] * n
        fused_members = self._members("simkd", lrs)
        separate_members = self._members("simkd", lrs)
        source = plain_teacher_source(self.teacher_dev, self.runtime)
        s1 = _endless(_device_loader(self.c, self.x, self.y, self.runtime))
        s2 = _endless(_device_loader(self.c, self.x, self.y, self.runtime))
        res = self._interleaved(
            {
                "separate": self._engine_step(separate_members, source, s2, separate=True),
                "fused": self._engine_step(fused_members, source, s1),
            },
            max(1, self.c.steps // 2) if self.c.quick else self.c.steps,
        )
        sep, fus = res["separate"]["median"], res["fused"]["median"]
        return {
            "students": n,
            "lrs": lrs,
            "separate_images_per_s": res["separate"],
            "fused_images_per_s": res["fused"],
            "speedup": fus / sep,
        }

    def part_cache(self) -> dict:
        """KD with the exact teacher-logit cache (fp16, in memory on the device)."""
        c = self.c
        dtype = torch.float16
        h240 = expected_hit_rate(EPOCHS_240)
        h_second = expected_hit_rate(EPOCHS_240, before=EPOCHS_240)
        plain = plain_teacher_source(self.teacher_dev, self.runtime, logits_only=True)

        def cache_source(cache):
            def source(batch):
                return TeacherOut(
                    None,
                    cached_logits(cache, plain.logits, batch.x, batch.index_cpu, batch.view_cpu),
                )

            return source

        def fresh_cache():
            return TeacherCache(
                c.images,
                c.classes,
                dtype=dtype,
                limit_bytes=c.images * NUM_VIEWS * 4 + c.images * NUM_VIEWS * c.classes * 2,
                device=self.runtime.device,
            )

        loader = _device_loader(c, self.x, self.y, self.runtime, seed=7)
        steps = c.steps
        per_round = c.warmup + steps
        rounds = c.repeats
        # each phase reads its own, never repeated batches (fresh epochs), except `warm`,
        # which replays the batches `cold` just stored

        def prefill(cache, first_epoch: int, p: float) -> None:
            """Store round(p * batch) random views of each of the next batches: the state a
            cache is in, on average, when a fraction p of the views recur."""
            g = torch.Generator().manual_seed(first_epoch)
            left = per_round
            e = first_epoch
            while left > 0:
                for b in loader.batches(e):
                    if b.x.shape[0] != c.batch or left <= 0:
                        continue
                    k = round(p * b.x.shape[0])
                    if k:
                        idx = torch.randperm(b.x.shape[0], generator=g)[:k].to(b.x.device)
                        logits = plain.logits(b.x.index_select(0, idx))
                        cache.insert(b.index[idx], b.view[idx], logits.to(dtype))
                    left -= 1
                e += 1

        results: dict[str, list[float]] = {
            k: [] for k in ("uncached", "cold", "run240", "second_run", "warm")
        }
        hits: dict[str, list[float]] = {k: [] for k in results}
        members = self._members("kd", [0.05])
        for r in range(rounds):
            base = 1000 * (r + 1)
            plan = {
                "uncached": (base, 0.0),
                "cold": (base + 100, 0.0),
                "run240": (base + 200, h240),
                "second_run": (base + 300, h_second),
            }
            cold_cache = None
            phases = list(plan.items())
            phases = phases[r % len(phases) :] + phases[: r % len(phases)]  # no fixed first
            for name, (epoch, p) in phases:
                cache = None if name == "uncached" else fresh_cache()
                if name == "cold":
                    cold_cache = cache
                if cache is not None and p > 0:
                    prefill(cache, epoch, p)
                stream = _endless(loader, epoch)
                source = plain if cache is None else cache_source(cache)
                step = self._engine_step(members, source, stream)
                for _ in range(c.warmup):
                    step()
                if cache is not None:
                    cache.stats.reset()
                results[name].append(self.timer.images_per_s(step, steps, 0))
                hits[name].append(cache.stats.hit_rate if cache is not None else 0.0)
                self.log(f"  {name}: {results[name][-1]:.1f} images/s")
            del cache
            assert cold_cache is not None
            stream = _endless(loader, base + 100)  # the batches `cold` stored: all hits
            step = self._engine_step(members, cache_source(cold_cache), stream)
            cold_cache.stats.reset()
            results["warm"].append(self.timer.images_per_s(step, c.warmup + steps, 0))
            hits["warm"].append(cold_cache.stats.hit_rate)
            self.log(f"  warm: {results['warm'][-1]:.1f} images/s")
        med = {k: statistics.median(v) for k, v in results.items()}
        u = med["uncached"]
        return {
            "dtype": "fp16",
            "method": "kd",
            **{f"{k}_images_per_s": median_spread(v) for k, v in results.items()},
            **{f"{k}_hit_rate": statistics.median(v) for k, v in hits.items() if k != "uncached"},
            "expected_hit_rate_240": h240,
            "expected_hit_rate_second_run": h_second,
            "speedup_cold": med["cold"] / u,
            "speedup_run240": med["run240"] / u,
            "speedup_second_run": med["second_run"] / u,
            "speedup_warm": med["warm"] / u,
        }

    def part_compile(self) -> dict:
        """`[run] compile = true` against eager for the engine's SimKD step (student step and
        teacher forward, as the worker compiles them): the cold compile with an empty Inductor
        cache, a second compile that finds the on-disk cache (a later run), the steady speeds
        interleaved, and the training steps after which compiling has paid for itself."""
        import torch._dynamo

        c = self.c
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.tmp / "inductor")  # cold: empty
        torch._dynamo.reset()
        loader = _device_loader(c, self.x, self.y, self.runtime)

        def engine(compiled: bool, stream):
            members = self._members("simkd", [0.05], compile=compiled)
            source = plain_teacher_source(
                self.teacher_dev, self.runtime, compile=compiled, batch_size=c.batch
            )
            return self._engine_step(members, source, stream)

        eager = engine(False, _endless(loader))
        for _ in range(max(1, c.warmup)):
            eager()
        first: list[float] = []
        for kind in ("cold", "cached"):
            if kind == "cached":
                torch._dynamo.reset()  # compile again; Inductor finds its on-disk cache
            compiled = engine(True, _endless(loader))
            _sync(self.runtime.device)
            t0 = time.perf_counter()
            compiled()
            _sync(self.runtime.device)
            first.append(time.perf_counter() - t0)
            self.log(f"  first compiled step ({kind} cache): {first[-1]:.1f} s")
        for _ in range(max(1, c.warmup)):
            compiled()
        res = self._interleaved({"eager": eager, "compiled": compiled}, c.steps)
        e, k = res["eager"]["median"], res["compiled"]["median"]
        step_eager, step_compiled = c.batch / e, c.batch / k
        cold, cached = (t - step_compiled for t in first)
        saved = step_eager - step_compiled
        return {
            "eager_images_per_s": res["eager"],
            "compiled_images_per_s": res["compiled"],
            "speedup": k / e,
            "compile_cold_s": cold,
            "compile_cached_s": cached,
            "step_eager_s": step_eager,
            "step_compiled_s": step_compiled,
            # steps of this size a run must train before the compile has paid for itself
            "break_even_steps_cold": cold / saved if saved > 0 else None,
            "break_even_steps_cached": cached / saved if saved > 0 else None,
        }

    def part_scaling(self) -> dict:
        """The SimKD step on N processes (DDP) against one: images/s and efficiency."""
        from bench.scaling import launch, threads_per_process

        gpus = torch.cuda.device_count() if self.cuda else 0
        procs = self.c.procs or gpus
        if procs < 2:
            where = f"{gpus} GPU visible" if self.cuda else "no GPU visible (CPU)"
            return {
                "skipped": f"{where}: it needs two or more devices "
                "(`--procs N` measures N CPU processes)"
            }
        if self.cuda and procs > gpus:
            raise RuntimeError(f"--procs {procs} but this box shows {gpus} GPUs")
        device = "cuda" if self.cuda else "cpu"
        one: list[float] = []
        many: list[float] = []
        for _ in range(self.c.repeats):  # interleaved: a neighbour's load hits both alike
            one.append(launch(self.c, 1, device))
            self.log(f"  1 process: {one[-1]:.1f} images/s")
            many.append(launch(self.c, procs, device))
            self.log(f"  {procs} processes: {many[-1]:.1f} images/s")
        a, b = median_spread(one), median_spread(many)
        return {
            "procs": procs,
            "device": device,
            "threads_per_process": threads_per_process(procs),
            "one_images_per_s": a,
            "many_images_per_s": b,
            "speedup": b["median"] / a["median"],
            "efficiency": b["median"] / (procs * a["median"]),
        }

    # ---- everything
    def run(self) -> dict:
        c = self.c
        out = {
            "device": _device_name(self.runtime),
            "torch": torch.__version__,
            "quick": c.quick,
            "config": {k: v for k, v in asdict(c).items() if k not in ("notes", "quick", "device")}
            | {
                "amp": str(self.runtime.amp_dtype).removeprefix("torch.")
                if self.runtime.amp_dtype
                else "fp32",
                "channels_last": self.runtime.channels_last,
                "cpu_threads": torch.get_num_threads(),
            },
        }
        t0 = time.perf_counter()
        for part in PARTS:
            if part not in c.parts:
                continue
            self.log(f"{part}…")
            t = time.perf_counter()
            out[part] = getattr(self, f"part_{part}")()
            out[part]["seconds"] = time.perf_counter() - t
        out["config"]["cpu_threads"] = torch.get_num_threads()
        out["seconds"] = time.perf_counter() - t0
        return out


def _device_name(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(runtime.device)}"
    import platform

    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    return Bench(cfg, log).run()
