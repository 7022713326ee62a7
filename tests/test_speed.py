"""Speed features that must not change results: fused sweeps, the device loader, compile."""

from __future__ import annotations

import pytest
import torch

from engine import data as D
from engine import worker
from engine.core import planning, reading, schema
from engine.core import views as V
from engine.core.schema import DataConfig
from engine.models import build_model
from engine.worker import execute


@pytest.fixture
def teacher_ckpt(tmp_path):
    torch.manual_seed(7)
    path = tmp_path / "teacher_resnet8.pth"
    torch.save({"model": build_model("resnet8", num_classes=10).state_dict()}, path)
    return path


def sweep(
    ckpt, lrs: str = "[0.05, 0.2]", method: str = "simkd", more: str = ""
) -> schema.Experiment:
    return reading.loads(
        f"""
name = "fused"
seeds = [3]
[data]
dataset = "digits"
batch_size = 64
[teacher]
arch = "resnet8"
checkpoint = "{ckpt}"
[student]
arch = "resnet8"
[distill]
method = "{method}"
[optim]
lr = {lrs}
epochs = 2
[run]
device = "cpu"  # fused = alone to 1e-6 is checked on the CPU
max_steps = 4
log_every = 1
threads = 1
{more}
"""
    )


def step_losses(store, run_id: int) -> dict[tuple[int, str], float]:
    return {(m.step, m.name): m.value for m in store.metrics(run_id) if m.name.startswith("train/")}


@pytest.mark.parametrize("method", ["simkd", "kd"])
def test_fused_students_get_the_losses_they_get_alone(store, teacher_ckpt, monkeypatch, method):
    teacher_passes = []
    make = worker.make_teacher_source

    def counting(*args, **kwargs):
        source = make(*args, **kwargs)

        def wrapped(batch):
            teacher_passes.append(batch.x.shape[0])
            return source(batch)

        return wrapped

    monkeypatch.setattr(worker, "make_teacher_source", counting)
    a, b = store.submit(sweep(teacher_ckpt, method=method))
    assert a.fuse_key and a.fuse_key == b.fuse_key  # the engine would place them together
    results = execute(store, [a.id, b.id])
    assert [r.status for r in results] == ["done", "done"]
    assert len(teacher_passes) == 2 * 4  # one teacher pass per batch for both students

    alone_a, alone_b = store.submit(sweep(teacher_ckpt, method=method))
    for r in (alone_a, alone_b):
        assert execute(store, [r.id])[0].status == "done"
    assert len(teacher_passes) == 3 * 2 * 4
    for fused, alone in ((a, alone_a), (b, alone_b)):
        got, want = step_losses(store, fused.id), step_losses(store, alone.id)
        assert got.keys() == want.keys() and len(want) >= 2 * 4 * 2
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
        assert store.run(fused.id).last_top1 == store.run(alone.id).last_top1
    # different lrs really train differently: the check above is not vacuous
    assert step_losses(store, a.id) != step_losses(store, b.id)


def test_opting_out_of_fusion_gives_runs_their_own_key(teacher_ckpt):
    exp = sweep(teacher_ckpt, more="fuse = false")
    assert all(planning.fuse_key(p.config) is None for p in planning.expand(exp))
    keys = {planning.fuse_key(p.config) for p in planning.expand(sweep(teacher_ckpt))}
    assert len(keys) == 1 and None not in keys


# ---------------------------------------------------------------- device-resident data
def test_in_memory_data_sets_use_the_device_loader_by_default(monkeypatch):
    def fake_cifar(cfg):  # CIFAR files are not here: synthetic arrays under CIFAR's name
        loaded = D._load_synthetic(DataConfig(dataset="synthetic", train_size=64, test_size=8))
        info = D.DatasetInfo("cifar100", 100, 3, 32, D.CIFAR100_MEAN, D.CIFAR100_STD, 64, 8)
        return loaded._replace(info=info)

    monkeypatch.setattr(D, "_load_cifar", fake_cifar)
    for dataset in ("cifar100", "digits", "synthetic"):
        d = D.build_data(DataConfig(dataset=dataset), seed=0)
        assert isinstance(d.train, D.DeviceLoader) and isinstance(d.test, D.DeviceLoader)
        assert d.train.images.dtype == torch.uint8  # kept as uint8, augmented per batch
    ref = D.build_data(DataConfig(dataset="synthetic", loader="dataloader"), seed=0)
    assert isinstance(ref.train, D.TorchDataLoader)


def test_device_loader_batches_equal_torchvisions_pil_pipeline_for_their_views():
    """The loader itself (not only the helper) reproduces pad(4, fill=0) -> crop -> hflip ->
    ToTensor -> Normalize bit for bit, for the offsets and flips it drew."""
    from torchvision.transforms import Normalize, ToTensor
    from torchvision.transforms import functional as TF

    cfg = DataConfig(dataset="synthetic", train_size=96, batch_size=48, num_classes=10)
    d = D.build_data(cfg, seed=5)
    x_train, *_ = D.load_arrays(cfg)
    mean, std = d.info.mean, d.info.std
    checked = 0
    for b in d.train.batches(3):
        dy, dx, flip = V.decode_view(b.view)
        for i in range(0, b.x.shape[0], 5):
            img = x_train[b.index[i]]
            pil = TF.to_pil_image(img)
            pil = TF.crop(TF.pad(pil, 4, fill=0), int(dy[i]), int(dx[i]), 32, 32)
            if flip[i]:
                pil = TF.hflip(pil)
            assert torch.equal(b.x[i], Normalize(mean, std)(ToTensor()(pil)))
            checked += 1
    assert checked >= 18


# ---------------------------------------------------------------- compile
def test_compiled_members_run_partial_batches_eagerly(store, teacher_ckpt, monkeypatch):
    """`[run] compile`: full batches go through the compiled step, the last partial batch
    through the eager one (no recompile, no second CUDA graph)."""
    import engine.train as T

    calls = []

    def fake_compile(fn, mode=None):
        def compiled(*args, **kwargs):
            first = args[0]  # the student's step gets a Batch, the teacher's forward a tensor
            calls.append(("compiled", (first.x if hasattr(first, "x") else first).shape[0]))
            return fn(*args, **kwargs)

        return compiled

    monkeypatch.setattr(T.torch, "compile", fake_compile)
    text = f"""
name = "compiled"
[data]
dataset = "synthetic"
train_size = 80
batch_size = 32
[teacher]
arch = "resnet8"
checkpoint = "{teacher_ckpt}"
[student]
arch = "resnet8"
[distill]
method = "kd"
[optim]
epochs = 1
[run]
compile = true
threads = 1
log_every = 1
"""
    (run,) = store.submit(reading.loads(text))
    assert execute(store, [run.id])[0].status == "done"
    student_calls = [n for kind, n in calls if kind == "compiled"]
    # 80 = 32 + 32 + 16: the teacher's and the student's compiled fns see only full batches
    assert student_calls and set(student_calls) == {32}
    assert len(store.series(run.id, "train/loss")) == 3
