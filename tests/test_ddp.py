"""One run on several processes: `[run] nproc_per_node = 2` on the CPU (gloo), on digits.

The end-to-end cases start real processes the way a user does (`kdtui run`, `kdtui resume`),
which launch the ranks under torchrun; the step check runs tests/ddp_step.py under torchrun
and compares it with one process. Sharding, refusals and the failure report are checked
in this process.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engine import launch
from engine.core import faults, layout, reading, schema
from engine.core import fingerprint as fp
from engine.core import metrics as M
from engine.core.store import Store, StoreError
from engine.data import DeviceLoader, ShardSampler, TorchDataLoader, shard_positions
from engine.distributed import SINGLE, Group
from engine.train import build_member, pick_runtime
from engine.worker import Folder, SetupError, execute, resume_member

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import ddp_step  # noqa: E402

EXP = """
name = "ddp"
seeds = [0]
[data]
dataset = "digits"
batch_size = 32
[teacher]
arch = "resnet14"
checkpoint = "{teacher}"
[student]
arch = "resnet8"
[distill]
method = "kd"
[optim]
lr = 0.05
epochs = 3
[run]
max_steps = 4
log_every = 2
nproc_per_node = 2
"""
EPOCH_METRICS = (M.EPOCH_LR, M.TRAIN_TOP1, M.IMAGES_PER_S, M.EPOCH_TIME, M.TEST_TOP1, M.TEST_TOP5)


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def kdtui(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdtui.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails the test instead of the suite
        env=env(COLUMNS="200", **extra),
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """An untrained resnet14 as a teacher checkpoint (what KD reads; its accuracy is moot)."""
    from engine.models import build_model

    path = tmp_path_factory.mktemp("teacher") / "resnet14.pth"
    torch.manual_seed(1)
    torch.save({"model": build_model("resnet14", num_classes=10).state_dict()}, path)
    return path


def write_exp(folder: Path, teacher: Path, extra: str = "") -> Path:
    f = folder / "ddp.toml"
    f.write_text(EXP.format(teacher=teacher) + extra)
    return f


def epoch_counts(store: Store, run_id: int) -> collections.Counter:
    return collections.Counter(
        (m.epoch, m.name) for m in store.metrics(run_id) if m.name in EPOCH_METRICS
    )


# ---------------------------------------------------------------- the shards


@pytest.mark.parametrize("n", [1, 5, 359, 1438])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_pad_training_and_partition_evaluation(n, world):
    train = [shard_positions(n, r, world, pad=True) for r in range(world)]
    assert {len(s) for s in train} == {-(-n // world)}  # every rank takes as many steps
    assert set(torch.cat(train).tolist()) == set(range(n))
    test = [shard_positions(n, r, world, pad=False) for r in range(world)]
    assert sorted(torch.cat(test).tolist()) == list(range(n))  # each sample exactly once


def test_the_ranks_first_batches_are_the_one_process_first_batch():
    images = torch.randint(0, 256, (103, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(103) % 10
    common = dict(mean=(0.5,) * 3, std=(0.25,) * 3, seed=7)
    one = DeviceLoader(images, labels, batch_size=24, **common)
    ranks = [
        DeviceLoader(images, labels, batch_size=8, rank=r, world=3, **common) for r in range(3)
    ]
    assert {len(r) for r in ranks} == {5} and len(one) == 5
    first = next(iter(one.batches(4)))
    parts = [next(iter(r.batches(4))) for r in ranks]
    # the same images with the same crops and flips, rank r holding every 3rd from r on
    order = torch.stack([p.index for p in parts], 1).flatten()
    assert torch.equal(order, first.index)
    x = torch.stack([p.x for p in parts], 1).flatten(0, 1)
    assert torch.equal(x, first.x)


def test_the_dataloader_path_shards_one_permutation():
    loaders = [
        SimpleNamespace(num_samples=11, shuffle=True, seed=3, rank=r, world=2, pad=True)
        for r in range(2)
    ]
    shards = [list(ShardSampler(lo, epoch=5)) for lo in loaders]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(shards[0] + shards[1]) == set(range(11))
    again = list(ShardSampler(loaders[0], epoch=5))
    assert again == shards[0]  # a pure function of (seed, epoch)
    assert list(ShardSampler(loaders[0], epoch=6)) != shards[0]
    test = SimpleNamespace(num_samples=11, shuffle=False, seed=3, rank=1, world=2, pad=False)
    assert list(ShardSampler(test, epoch=0)) == [1, 3, 5, 7, 9]


def test_a_dataloader_rank_reports_its_shard_length():
    ds = torch.utils.data.TensorDataset(torch.zeros(11))
    lo = TorchDataLoader(ds, batch_size=4, rank=1, world=2)
    assert lo.shard_size == 6 and len(lo) == 2


# ---------------------------------------------------------------- one step, two processes


@pytest.mark.slow
def test_first_step_on_two_processes_equals_one_step_on_the_concatenated_batch(tmp_path, teacher):
    """DDP's averaged gradient after the first step of 2 x 16 images equals one process's
    gradient on those 32 images, for a plain, a logit, a feature and a contrastive method.

    Exact only where the loss is a mean of per-sample terms: with BatchNorm in training
    mode each process normalises its 16 images with their own mean and variance, which is
    another function than normalising 32 (sync_bn removes that on GPUs; torch's
    SyncBatchNorm refuses CPU tensors). So the step is compared with BatchNorm in eval mode
    (it normalises with running statistics), and in training mode it must differ.
    """
    out = tmp_path / "ddp.pt"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(ddp_step.WORLD),
            str(ROOT / "tests" / "ddp_step.py"),
            str(out),
            str(teacher),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(out, weights_only=False)
    for method in ddp_step.METHODS:
        for bn in ("eval", "train"):
            one = ddp_step.first_step(method, str(teacher), SINGLE, bn=bn)
            ddp = two[(method, bn)]
            assert one["samples"] == ddp["samples"] == 32
            grads = [(n, g, ddp["grads"][n]) for n, g in one["grads"].items() if g is not None]
            unused = {n for n, g in one["grads"].items() if g is None}
            assert unused == {n for n, g in ddp["grads"].items() if g is None}
            worst = max(float((g - h).abs().max() / g.abs().max()) for _, g, h in grads)
            if bn == "eval":
                assert worst < 1e-4, (method, worst)
                for n, p in one["params"].items():  # and so the SGD step
                    torch.testing.assert_close(ddp["params"][n], p, rtol=1e-5, atol=1e-6)
                assert ddp["loss"] == pytest.approx(one["loss"], rel=1e-5)
                # each test image scored once over the uneven shards (180 + 179)
                assert ddp["eval"]["top1"] == one["eval"]["top1"]
                assert ddp["eval"]["top5"] == one["eval"]["top5"]
                assert ddp["eval"]["loss"] == pytest.approx(one["eval"]["loss"], rel=1e-5)
                if "banks" in one:  # CRD: both ranks' rows moved the banks
                    for k, v in one["banks"].items():
                        torch.testing.assert_close(ddp["banks"][k], v, rtol=1e-5, atol=1e-6)
            else:
                assert worst > 1e-2, (method, worst)  # per-process batch statistics
        if method == "simkd":  # the student's own classifier is unused: DDP copes
            assert "student.fc.weight" in unused
    # the DataLoader path shards a permutation of its own (not the one-process order), so its
    # step differs; its evaluation of the initial model must not
    loader = two[("dataloader", "eval")]
    assert loader["samples"] == 32
    one = ddp_step.first_step("vanilla", str(teacher), SINGLE, bn="eval", loader="dataloader")
    for k in ("top1", "top5"):
        assert one["eval_before"][k] == loader["eval_before"][k]
    assert one["eval_before"]["loss"] == pytest.approx(loader["eval_before"]["loss"], rel=1e-6)


# ---------------------------------------------------------------- kdtui run, kill, resume


@pytest.fixture(scope="module")
def finished(tmp_path_factory, teacher):
    """A fused two-point lr sweep trained by `kdtui run` on 2 processes, uninterrupted."""
    folder = tmp_path_factory.mktemp("ddp-run")
    home = folder / "home"
    f = write_exp(folder, teacher, '[sweep]\n"optim.lr" = [0.05, 0.1]\n')
    result = kdtui("run", str(f), "--home", str(home))
    store = Store(home)
    yield SimpleNamespace(result=result, store=store, home=home)
    store.close()


@pytest.mark.slow
def test_a_two_process_run_trains_to_done_and_records_each_metric_once(finished):
    assert finished.result.returncode == 0, finished.result.stdout + finished.result.stderr
    store = finished.store
    runs = store.runs()
    assert len(runs) == 2 and {r.status for r in runs} == {"done"}
    assert len({r.fuse_key for r in runs}) == 1  # one teacher pass, one launcher for both
    for r in runs:
        assert epoch_counts(store, r.id) == {(e, n): 1 for e in range(3) for n in EPOCH_METRICS}
        steps = collections.Counter((m.epoch, m.step) for m in store.metrics(r.id, names=[M.LOSS]))
        assert set(steps.values()) == {1}  # rank 1 logs nothing
        assert (r.world_size, r.effective_batch) == (2, 64)
        log = (r.path / layout.LOG).read_text()
        assert log.count("2 processes (gloo), batch 32 per process, effective batch 64") == 1
        assert log.count("epoch 3/3") == 1
        assert r.teacher_top1 is not None
        ident = fp.flatten(__import__("json").loads(r.identity))
        assert (ident["run.world_size"], ident["run.effective_batch"]) == (2, 64)


@pytest.mark.slow
def test_world_size_and_effective_batch_show_in_ls_the_leaderboard_and_every_export(finished):
    home = str(finished.home)
    runs = finished.store.runs()
    ls = kdtui("ls", "--home", home).stdout
    assert "eff. batch" in ls and ls.count("64 = 2×32") == len(runs)
    board = kdtui("leaderboard", "--home", home).stdout
    assert "eff. batch" in board and board.count("64 = 2×32") == 2  # one row per lr
    md = kdtui("export", "-f", "md", "--home", home).stdout
    assert md.count("| 64 = 2×32 |") == 2
    csv_text = kdtui("export", "-f", "csv", "--home", home).stdout
    rows = list(__import__("csv").DictReader(csv_text.splitlines()))
    assert [(r["world_size"], r["effective_batch"]) for r in rows] == [("2", "64")] * 2
    tex = kdtui("export", "-f", "latex", "--home", home).stdout
    assert tex.count("2 processes, effective batch 64") == 2
    js = __import__("json").loads(kdtui("ls", "--json", "--home", home).stdout)
    assert {(r["world_size"], r["effective_batch"]) for r in js["runs"]} == {(2, 64)}
    js = __import__("json").loads(kdtui("leaderboard", "--json", "--home", home).stdout)
    assert {(r["world_size"], r["effective_batch"]) for r in js["rows"]} == {(2, 64)}


@pytest.mark.slow
def test_sigkill_of_one_rank_fails_the_run_cleanly_and_resume_completes_it(
    tmp_path, teacher, finished
):
    home = tmp_path / "home"
    f = write_exp(tmp_path, teacher)
    # rank 1 dies by SIGKILL at the first logged step of epoch 2; rank 0 is then waiting in
    # a collective: gloo fails it, torchrun stops it, the launcher names rank 1
    killed = kdtui(
        "run", str(f), "--home", str(home), **{faults.ENV: "step@2", faults.RANK_ENV: "1"}
    )
    assert killed.returncode == 1, killed.stdout + killed.stderr
    store = Store(home)
    (run,) = store.runs()
    assert run.status == "failed" and run.epoch == 1
    assert re.match(r"rank 1 of 2 was killed by SIGKILL \(pid \d+\)", run.error), run.error
    assert f"kdtui resume {run.id}" in run.error
    alive = subprocess.run(
        ["pgrep", "-f", f"engine.worker --home {home} {run.path}"], capture_output=True
    )
    assert alive.returncode == 1, alive.stdout  # no rank left behind

    resumed = kdtui("run", "--resume", str(run.id), "--home", str(home))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = store.run(run.id)
    assert run.status == "done" and run.epoch == 3
    assert epoch_counts(store, run.id) == {(e, n): 1 for e in range(3) for n in EPOCH_METRICS}
    # exactly where the uninterrupted run (the sweep's lr = 0.05 point) ended
    reference = next(r for r in finished.store.runs() if "lr=0.05" in r.label)

    def top1(s: Store, i: int) -> list[float]:
        return [m.value for m in s.metrics(i, names=[M.TEST_TOP1])]

    assert top1(store, run.id) == top1(finished.store, reference.id)
    store.close()


# ---------------------------------------------------------------- refusals


def test_what_a_data_parallel_run_cannot_combine_with_is_refused_by_key():
    base = "name = 'x'\n[run]\nnproc_per_node = 2\n"
    cases = {
        "compile = true": "run.compile",
        'teacher_cache = "memory"': "run.teacher_cache",
        'device = "cuda:1"': "run.device",
        'device = "mps"': "run.device",
        'device = "cpu"\nsync_bn = true': "run.sync_bn",
    }
    for extra, key in cases.items():
        with pytest.raises(schema.ConfigError) as e:
            reading.loads(base + extra, file="x.toml")
        assert e.value.key == key, (extra, str(e.value))
        assert "nproc_per_node = 2" in str(e.value) or key == "run.sync_bn"
    reading.loads(base + 'device = "cuda"\nsync_bn = true', file="x.toml")  # fine on GPUs
    reading.loads("name = 'x'\n[run]\ncompile = true\nsync_bn = true", file="x.toml")  # one process
    with pytest.raises(schema.ConfigError, match="run.nproc_per_node"):
        reading.loads("name = 'x'\n[run]\nnproc_per_node = 0", file="x.toml")


def test_several_nodes_need_the_slurm_backend(tmp_path, store):
    f = tmp_path / "nodes.toml"
    f.write_text("name = 'nodes'\n[run]\nnproc_per_node = 2\nnnodes = 2\n")
    exp = reading.load(f)  # a valid experiment...
    assert schema.world_size(exp) == 4 and schema.effective_batch(exp) == 4 * 64
    with pytest.raises(StoreError, match=r"nodes.toml: run.nnodes: 2 nodes: .*Slurm backend"):
        store.submit(exp, source=str(f), holder=os.getpid())  # ...that `kdtui run` cannot run
    assert store.runs() == []  # nothing is stored
    result = kdtui("run", str(f), "--home", str(store.home))
    assert result.returncode == 2 and "run.nnodes" in result.stdout + result.stderr
    assert "Slurm backend" in result.stdout + result.stderr and store.runs() == []


def test_sync_bn_on_a_cpu_run_is_refused_at_start():
    run = schema.RunConfig(device="auto", nproc_per_node=2, sync_bn=True, threads=1)
    if torch.cuda.is_available():
        pytest.skip("this box has a GPU: auto means CUDA")
    with pytest.raises(RuntimeError, match=r"run.sync_bn = true .* GPUs only"):
        pick_runtime(run, Group(0, 2, 0))


def test_more_processes_than_gpus_is_an_error_naming_both():
    run = schema.RunConfig(device="cuda", nproc_per_node=64, threads=1)
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(
        RuntimeError, match=rf"nproc_per_node = 64 but this process sees {seen} GPU"
    ):
        pick_runtime(run, Group(0, 64, 0))


ONE = """
name = "one"
[data]
dataset = "digits"
[student]
arch = "resnet8"
[optim]
epochs = 1
[run]
max_steps = 2
threads = 1
"""


def test_a_checkpoint_of_another_world_size_is_refused_on_resume(store):
    exp = reading.loads(ONE, file="one.toml")
    (run,) = store.submit(exp)
    assert execute(store, [run.id])[0].status == "done"
    # the same run built as one of two processes (what a resume under another world size is)
    runtime = pick_runtime(exp.run)
    m = build_member(str(run.id), exp, None, 10, runtime, run.path)
    m.world_size = 2
    with pytest.raises(SetupError) as e:
        resume_member(Folder(run.path), m)
    text = str(e.value)
    assert "trained on 1 process and this resume runs 2 processes" in text
    assert "nproc_per_node x run.nnodes = 1" in text and f"kdtui resume {run.id} --restart" in text


def test_a_worker_started_outside_its_group_is_refused(store):
    exp = reading.loads("name = 'x'\n[run]\nnproc_per_node = 2\nthreads = 1\n", file="x.toml")
    (run,) = store.submit(exp)
    (row,) = execute(store, [run.id])  # one process for a run of two
    assert row.status == "failed" and "trains on 2 processes" in row.error


# ---------------------------------------------------------------- what the launcher reports


def failure(exitcode: int, message="", pid=11):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    f = ProcessFailure(local_rank=0, pid=pid, exitcode=exitcode, error_file="/nonexistent")
    if message:
        f.message = {"message": message}
    return f


def test_the_launcher_runs_the_workers_own_command_line_under_torchrun(tmp_path):
    from engine.daemon.processes import worker_command

    dirs = [tmp_path / "runs" / "7-a", tmp_path / "runs" / "8-b"]
    argv = launch.torchrun_args(dirs, tmp_path, 2)
    # run folders, never run ids: the ranks, like every worker, never open the database
    assert argv[argv.index("--module") + 1 :] == worker_command(tmp_path, dirs)[2:]
    assert argv[argv.index("--module") + 1 :][-2:] == [str(d) for d in dirs]
    assert argv[argv.index("--nproc-per-node") + 1] == "2"


def test_the_failure_named_is_the_cause_not_the_rank_that_saw_it():
    peer = failure(1, "RuntimeError: [gloo/transport/tcp/pair.cc:545] Connection reset by peer")
    killed = failure(-9, pid=42)
    stopped = failure(-15)
    # rank 0 reported first (it saw rank 1 vanish), rank 1 was killed
    reason = launch.failure_reason({0: peer, 1: killed}, (0, peer), 2)
    assert reason == "rank 1 of 2 was killed by SIGKILL (pid 42); the others were stopped"
    own = failure(1, "ValueError: the data set is empty")
    reason = launch.failure_reason({0: stopped, 1: own}, (0, stopped), 2)
    assert reason == "rank 1 of 2 failed (exit code 1): ValueError: the data set is empty"
    # only torchrun's SIGTERMs: its first observed failure
    reason = launch.failure_reason({0: stopped, 1: stopped}, (1, stopped), 2)
    assert reason.startswith("rank 1 of 2 was killed by SIGTERM")


# ---------------------------------------------------------------- identity and the store

FP = """
name = "fp"
[data]
dataset = "digits"
batch_size = {batch}
[student]
arch = "resnet8"
[optim]
epochs = 3
[run]
{run}
"""


def fingerprint(batch: int, run: str = "") -> tuple[str, dict]:
    exp = reading.loads(FP.format(batch=batch, run=run), file="fp.toml")
    return fp.fingerprint(exp), fp.identity(exp)["run"]


def test_world_size_and_effective_batch_enter_the_fingerprint_above_one_process():
    one, ident = fingerprint(32)
    # computed by the code before these keys existed: one-process runs keep their identity
    assert one == "59771f9f0e4d4006"
    assert not {"world_size", "effective_batch", "sync_bn", "nproc_per_node"} & ident.keys()
    assert fingerprint(32, "sync_bn = true")[0] == one  # nothing to synchronise alone
    two, ident = fingerprint(32, "nproc_per_node = 2")
    assert ident["world_size"] == 2 and ident["effective_batch"] == 64
    assert ident["sync_bn"] is False
    # the same images per step on one process is another experiment (BatchNorm sees 64)
    assert len({one, two, fingerprint(64)[0]}) == 3
    assert fingerprint(32, "nproc_per_node = 2\nsync_bn = true")[0] != two
    assert fingerprint(32, "nproc_per_node = 2\ndevice = 'cpu'\nthreads = 3")[0] == two


def test_every_run_stores_its_world_size_and_effective_batch(store):
    exp = reading.loads(FP.format(batch=32, run="nproc_per_node = 4"), file="x.toml")
    (run,) = store.submit(exp)
    assert (run.world_size, run.effective_batch) == (4, 128)


def test_a_store_from_before_world_sizes_backfills_one_process(tmp_path):
    first = Store(tmp_path / "home")
    (run,) = first.submit(reading.loads(FP.format(batch=48, run=""), file="x.toml"))
    first.conn.execute("UPDATE runs SET world_size=NULL, effective_batch=NULL")
    first.conn.execute("PRAGMA user_version = 2")
    first.close()
    again = Store(tmp_path / "home")
    row = again.run(run.id)
    assert (row.world_size, row.effective_batch) == (1, 48)
    again.close()


def test_runs_of_other_world_sizes_never_fuse(store):
    exp = reading.loads(
        EXP.format(teacher=ROOT / "pyproject.toml").replace("nproc_per_node = 2", "")
        + '[sweep]\n"run.nproc_per_node" = [1, 2, 2]\n',
        file="x.toml",
    )
    one, two, three = store.submit(exp)
    assert one.fuse_key and one.fuse_key != two.fuse_key == three.fuse_key
    assert "world=" not in one.fuse_key  # one process: the key it always had
