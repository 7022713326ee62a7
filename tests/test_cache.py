"""The exact teacher-logit cache: same losses as the uncached path, bounded, reused."""

from __future__ import annotations

import pytest
import torch

from engine import cache as cachemod
from engine.cache import TeacherCache, cached_logits, capacity_for, miss_bucket
from engine.core import reading, schema
from engine.core.views import NUM_VIEWS
from engine.models import build_model
from engine.worker import execute

# fp16 storage rounds each logit to 11 significant bits (relative error <= 2^-11 ~ 4.9e-4);
# every logged loss of a short KD run stays within 2e-3 relative or 2e-4 absolute of the
# uncached fp32 path (the README states the same tolerance)
FP16_REL_TOL, FP16_ABS_TOL = 2e-3, 2e-4


@pytest.fixture(autouse=True)
def _fresh_memory_caches():
    cachemod.forget_memory_caches()
    yield
    cachemod.forget_memory_caches()


@pytest.fixture
def teacher_ckpt(tmp_path):
    torch.manual_seed(123)
    path = tmp_path / "teacher_resnet8.pth"
    torch.save({"model": build_model("resnet8", num_classes=10).state_dict()}, path)
    return path


def kd_experiment(
    ckpt, cache: str = "off", dtype: str = "fp32", seed: int = 0
) -> schema.Experiment:
    return reading.loads(
        f"""
name = "kd-cache"
seeds = [{seed}]
[data]
dataset = "digits"
batch_size = 64
[teacher]
arch = "resnet8"
checkpoint = "{ckpt}"
[student]
arch = "resnet8"
[distill]
method = "kd"
[optim]
lr = 0.05
epochs = 2
[run]
device = "cpu"  # bit-exact comparisons are a CPU property
max_steps = 5
log_every = 1
threads = 1
teacher_cache = "{cache}"
teacher_cache_dtype = "{dtype}"
"""
    )


def losses(store, run_id: int) -> dict[tuple[int, str], float]:
    return {
        (m.step, m.name): m.value for m in store.metrics(run_id) if m.name.startswith("train/loss")
    }


def hit_rates(store, run_id: int) -> list[float]:
    return [v for _, _, v in store.series(run_id, "teacher_cache/hit_rate")]


# ---------------------------------------------------------------- through the real worker
def test_fp32_cache_gives_the_uncached_losses_bit_for_bit_cold_and_warm(store, teacher_ckpt):
    (plain,) = store.submit(kd_experiment(teacher_ckpt, "off"))
    (cold,) = store.submit(kd_experiment(teacher_ckpt, "memory", "fp32"))
    (warm,) = store.submit(kd_experiment(teacher_ckpt, "memory", "fp32"))
    for r in (plain, cold, warm):
        assert execute(store, [r.id])[0].status == "done"
    base = losses(store, plain.id)
    assert len(base) >= 10 * 3  # 2 epochs x 5 steps x (loss, ce, kd)
    assert losses(store, cold.id) == base  # exact equality, not approx
    assert losses(store, warm.id) == base
    assert hit_rates(store, plain.id) == []
    assert hit_rates(store, cold.id)[0] < 0.05  # a fresh cache: (almost) all misses
    assert hit_rates(store, warm.id) == [1.0, 1.0]  # same teacher, same data order: all hits
    log = (store.run(warm.id).path / "log.txt").read_text()
    assert "teacher cache (memory, fp32" in log and "hits" in log


def test_fp16_cache_stays_within_the_stated_tolerance(store, teacher_ckpt):
    (plain,) = store.submit(kd_experiment(teacher_ckpt, "off"))
    (half,) = store.submit(kd_experiment(teacher_ckpt, "memory", "fp16"))
    for r in (plain, half):
        assert execute(store, [r.id])[0].status == "done"
    base, got = losses(store, plain.id), losses(store, half.id)
    assert base.keys() == got.keys()
    for k, v in base.items():
        assert got[k] == pytest.approx(v, rel=FP16_REL_TOL, abs=FP16_ABS_TOL), k


def test_disk_cache_is_reused_by_a_later_run_in_another_worker(store, teacher_ckpt):
    (first,) = store.submit(kd_experiment(teacher_ckpt, "disk", "fp16"))
    assert execute(store, [first.id])[0].status == "done"
    cachemod.forget_memory_caches()  # nothing shared in memory: only the files
    (second,) = store.submit(kd_experiment(teacher_ckpt, "disk", "fp16"))
    assert execute(store, [second.id])[0].status == "done"
    assert hit_rates(store, second.id) == [1.0, 1.0]
    assert losses(store, second.id) == losses(store, first.id)
    folders = list((store.home / "cache").glob("teacher-*"))
    assert len(folders) == 1 and (folders[0] / "values.bin").exists()


def test_a_group_with_a_feature_method_keeps_the_full_teacher_pass(store, teacher_ckpt):
    text = f"""
name = "simkd-cache"
[data]
dataset = "digits"
[teacher]
arch = "resnet8"
checkpoint = "{teacher_ckpt}"
[student]
arch = "resnet8"
[distill]
method = "simkd"
[optim]
epochs = 1
[run]
max_steps = 2
threads = 1
teacher_cache = "memory"
"""
    (run,) = store.submit(reading.loads(text))
    assert execute(store, [run.id])[0].status == "done"
    assert "teacher cache off: simkd" in (run.path / "log.txt").read_text()


# ---------------------------------------------------------------- the cache itself
def _teacher():
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=10).eval()


def test_partial_hits_return_exactly_the_teachers_logits_in_fp32():
    t = _teacher()
    n = 40
    x_all = torch.randn(n, 3, 32, 32)
    index = torch.arange(n)
    view = torch.randint(0, NUM_VIEWS, (n,))
    cache = TeacherCache(n, 10, dtype=torch.float32, limit_bytes=2**20)
    calls = []

    def logits_fn(x):
        calls.append(x.shape[0])
        with torch.no_grad():
            return t(x)

    with torch.no_grad():
        expected = t(x_all)
    # warm a random third, then ask for everything in shuffled batches of 24
    seen = torch.randperm(n)[:13]
    cached_logits(cache, logits_fn, x_all[seen], index[seen], view[seen])
    order = torch.randperm(n)
    for s in range(0, n, 24):
        b = order[s : s + 24]
        got = cached_logits(cache, logits_fn, x_all[b], index[b], view[b])
        assert torch.equal(got, expected[b])
    assert cache.stats.hits == 13 and cache.stats.misses == 13 + (n - 13)
    assert all(k >= cachemod.MIN_TEACHER_BATCH or k == 13 for k in calls[1:])


def test_the_byte_limit_is_respected_and_overflow_is_dropped_not_stored():
    n, classes = 50, 10
    limit = n * NUM_VIEWS * 4 + 100 * classes * 2 + 7  # slot table + 100 fp16 rows (+ slack)
    cache = TeacherCache(n, classes, dtype=torch.float16, limit_bytes=limit)
    assert cache.capacity == 100 and cache.nbytes <= limit
    index = torch.arange(n).repeat(3)  # 150 distinct (index, view) pairs
    view = torch.cat([torch.full((n,), v) for v in (0, 1, 2)])
    logits = torch.randn(150, classes)
    cache.insert(index, view, logits.half())
    assert cache.count == 100 and cache.stats.stored == 100 and cache.stats.dropped == 50
    hit, values = cache.lookup(index, view)
    assert hit[:100].all() and not hit[100:].any()
    assert torch.equal(values[:100], logits[:100].half())
    assert cache.nbytes <= limit


def test_disk_tables_are_bounded_and_shared_between_instances(tmp_path):
    n, classes = 30, 10
    limit = capacity_bytes = n * NUM_VIEWS * 4 + 64 * classes * 2
    a = TeacherCache(n, classes, dtype=torch.bfloat16, limit_bytes=limit, path=tmp_path / "c")
    assert a.capacity == 64
    a.insert(torch.arange(n), torch.zeros(n, dtype=torch.long), torch.randn(n, classes))
    b = TeacherCache(n, classes, dtype=torch.bfloat16, limit_bytes=limit, path=tmp_path / "c")
    hit, values = b.lookup(torch.arange(n), torch.zeros(n, dtype=torch.long))
    assert hit.all() and torch.equal(values, a.values[:n])
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c").glob("*.*") if p.suffix != ".json")
    assert on_disk <= capacity_bytes + 8  # + the row counter
    with pytest.raises(cachemod.CacheError, match="another teacher"):
        TeacherCache(n, 100, dtype=torch.bfloat16, limit_bytes=limit, path=tmp_path / "c")


def test_a_limit_below_the_slot_table_is_a_clear_error():
    with pytest.raises(cachemod.CacheError, match="at least"):
        capacity_for(1000, 50_000, 100, torch.float16)


def test_miss_buckets_keep_small_batches_whole_and_round_up_on_cuda():
    assert miss_bucket(3, 64) == 16 and miss_bucket(17, 64) == 17 and miss_bucket(64, 64) == 64
    assert miss_bucket(17, 64, round_up=True) == 32 and miss_bucket(63, 64, round_up=True) == 64
    assert miss_bucket(3, 10) == 10  # a small batch is computed whole, as uncached
    assert miss_bucket(60, 50) == 50


def test_kdtui_cache_ls_shows_fill_and_clear_removes_the_files(store):
    from typer.testing import CliRunner

    from kdtui.cli import app

    folder = store.home / "cache" / "teacher-0123abcd"
    cache = TeacherCache(10, 5, dtype=torch.float16, limit_bytes=1 << 20, path=folder, key="k")
    index = torch.arange(4)
    cache.insert(index, torch.zeros(4, dtype=torch.long), torch.randn(4, 5).half())
    del cache
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "ls"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "0123abcd" in line)
    # 4 of 10 samples x 162 views stored; all 1,620 views fit in 1 MiB at fp16
    assert "fp16" in row and "4 / 1,620" in row and "0.2%" in row
    unknown = runner.invoke(app, ["cache", "clear", "nope", "--yes"])
    assert unknown.exit_code == 2 and "0123abcd" in unknown.output
    asked = runner.invoke(app, ["cache", "clear"], input="n\n")
    assert asked.exit_code == 1 and folder.exists()  # declined: nothing removed
    cleared = runner.invoke(app, ["cache", "clear", "0123", "--yes"])
    assert cleared.exit_code == 0 and "removed 1 cache" in cleared.output
    assert not folder.exists()
    assert "no teacher caches" in runner.invoke(app, ["cache", "ls"]).output
