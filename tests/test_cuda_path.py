"""The CUDA path's invariants, checked where a CPU can show them.

- the compiled step never recompiles across epochs (no Python number in the graph), for
  every registered method, and a fused sweep over a float option shares one graph;
- the teacher cache decides hits on the host from the epoch plan and reads no device data;
- evaluation runs in fp32 whatever the training precision;
- checkpoints restore every RNG stream; `deterministic = true` sets what it promises;
- under the engine a worker maps `cuda:N` to the GPU it was given.

Recompiles are counted by Dynamo itself (torch._dynamo.testing.CompileCounter as the
backend: Dynamo's guards and caching are the ones Inductor gets, without Inductor's
minutes of code generation on a CPU). `kdtui bench --gpu-check` repeats these on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from engine import worker
from engine.cache import TeacherCache, cached_logits
from engine.core import planning, reading, schema
from engine.core.registry import METHODS
from engine.core.schema import DataConfig
from engine.core.views import NUM_VIEWS
from engine.data import build_data
from engine.distill.kd import KD
from engine.models import build_model
from engine.train import (
    NullCallbacks,
    Runtime,
    build_member,
    compile_step,
    evaluate,
    fit,
    pick_runtime,
    set_deterministic,
)

CPU = Runtime(torch.device("cpu"), None, False)


def tiny_data():
    cfg = DataConfig(
        dataset="synthetic", train_size=32, test_size=16, batch_size=16, num_classes=10
    )
    return build_data(cfg, seed=0)


def experiment(method: str, *, epochs: int = 3, sweep: str = ""):
    return reading.loads(
        f"""
name = "cuda-path"
[data]
dataset = "synthetic"
train_size = 32
test_size = 16
batch_size = 16
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
device = "cpu"
compile = true
log_every = 1
{sweep}
"""
    )


def members_for(exp, tmp_path, backend, teacher, data):
    out = []
    for i, plan in enumerate(planning.expand(exp)):
        d = tmp_path / f"m{i}"
        d.mkdir()
        out.append(
            build_member(
                f"m{i}",
                plan.config,
                teacher,
                10,
                CPU,
                d,
                train_labels=data.train.labels.cpu(),  # used by methods with a memory (CRD)
                backend=backend,
            )
        )
    return out


def data_for(exp):
    return build_data(exp.data, seed=0, strong=schema.strong_view(exp))


def teacher_source(exp, teacher, data):
    """The worker's own teacher source for this experiment's group (no cache: no store)."""
    if not exp.method.needs_teacher:
        return None
    cfgs = [p.config for p in planning.expand(exp)]
    return worker.make_teacher_source([], cfgs, teacher, None, data, CPU)


class FrameCounts(NullCallbacks):
    """Dynamo's count of compiled frames at the end of every epoch."""

    def __init__(self, counter):
        self.counter, self.seen = counter, []

    def on_epoch(self, m, epoch, metrics):
        self.seen.append(self.counter.frame_count)


class EpochCounting(KD):
    """A deliberately wrong method: reads the epoch as a Python number inside the step."""

    def loss_scales(self, epoch):
        self.epoch = epoch
        return {}

    def forward_train(self, batch, teacher):
        logits, losses = super().forward_train(batch, teacher)
        return logits, {k: v * (1 + self.epoch) for k, v in losses.items()}


@pytest.fixture
def dynamo():
    torch._dynamo.reset()  # Dynamo caches per code object, across tests
    yield
    torch._dynamo.reset()


# ---------------------------------------------------------------- 1: no recompile per epoch
@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_compiled_step_never_recompiles_across_epochs(method, tmp_path, dynamo):
    """DKD's and ReviewKD's warm-ups change every epoch; they are applied outside the step."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=10).eval()
    counter = CompileCounter()
    exp = experiment(method)
    data = data_for(exp)
    (m,) = members_for(exp, tmp_path, counter, teacher, data)
    if method == "dkd":
        assert m.distiller.loss_scales(0) != m.distiller.loss_scales(2)  # the test has teeth
    frames = FrameCounts(counter)
    with torch._dynamo.config.patch(error_on_recompile=True):
        fit([m], data, teacher_source(exp, teacher, data), CPU, frames)
    assert m.status == "done" and m.step == 3 * 2
    # compiled at the first step (graph breaks give more than one frame), then only reused
    assert frames.seen[0] >= 1 and frames.seen == [frames.seen[0]] * 3


def test_a_step_that_reads_the_epoch_is_caught_recompiling(tmp_path, dynamo):
    """The check above can fail: a Python number read inside the step recompiles."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=10).eval()
    counter = CompileCounter()
    exp = experiment("kd")
    data = data_for(exp)
    (m,) = members_for(exp, tmp_path, counter, teacher, data)
    m.distiller.__class__ = EpochCounting
    m.distiller.loss_scales(0)
    m.train_fn = compile_step(m.distiller, None, counter)
    fit([m], data, teacher_source(exp, teacher, data), CPU)
    assert counter.frame_count > 1


# ---------------------------------------------------------------- 6: options as buffers
def test_a_fused_temperature_sweep_compiles_once_and_never_again(tmp_path, dynamo):
    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=10).eval()
    counter = CompileCounter()
    exp = experiment("kd", epochs=2, sweep='[sweep]\n"distill.temperature" = [4.0, 2.0]')
    data = data_for(exp)
    a, b = members_for(exp, tmp_path, counter, teacher, data)
    assert a.distiller.hp["temperature"].item() == 4.0 and b.distiller.hp["temperature"] == 2.0
    with torch._dynamo.config.patch(error_on_recompile=True):
        fit([a, b], data, teacher_source(exp, teacher, data), CPU)
    assert a.status == b.status == "done" and a.step == b.step == 4
    # one graph for both members: the temperature is a tensor input, not a constant
    assert counter.frame_count == 1
    assert a.last["loss"] != b.last["loss"]  # and the members really differ


def test_a_python_float_option_would_recompile_for_the_second_member(tmp_path, dynamo):
    """What the buffers prevent: the same sweep with the temperature kept a Python float."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=10).eval()
    counter = CompileCounter()
    exp = experiment("kd", epochs=1, sweep='[sweep]\n"distill.temperature" = [4.0, 2.0]')
    data = data_for(exp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KD, "static_options", ("temperature",))
        a, b = members_for(exp, tmp_path, counter, teacher, data)
    assert a.distiller.hp["temperature"] == 4.0  # a Python float now
    fit([a, b], data, teacher_source(exp, teacher, data), CPU)
    assert counter.frame_count == 2


def test_float_options_are_non_persistent_buffers_on_the_device():
    from engine.distill.base import build_distiller

    d = build_distiller(
        "simkd",
        build_model("resnet8", num_classes=10),
        build_model("resnet8", num_classes=10),
        {"temperature": 2, "loss": "l2+kl"},  # an int for a float option: still a buffer
        num_classes=10,
    )
    hp = d.hp
    assert isinstance(hp["temperature"], torch.Tensor) and hp["temperature"].dim() == 0
    assert hp["temperature"].dtype == torch.float32 and hp["temperature"].item() == 2.0
    assert hp["loss"] == "l2+kl" and hp["factor"] == 2  # structure stays Python
    assert {f"hp_{k}" for k in ("feat_weight", "kl_weight", "temperature", "label_weight")} == {
        name for name, _ in d.named_buffers() if name.startswith("hp_")
    }
    assert not any(k.startswith("hp_") for k in d.state_dict())  # checkpoints unchanged
    d.to("meta")
    assert d.hp["kl_weight"].device.type == "meta"  # they follow the module's device
    at = build_distiller(
        "at",
        build_model("resnet8", num_classes=10),
        build_model("resnet8", num_classes=10),
        {},
        num_classes=10,
    )
    assert at.hp["at_p"] == 2.0 and not isinstance(at.hp["at_p"], torch.Tensor)


# ---------------------------------------------------------------- 2: cache without syncs
def test_the_plans_host_keys_give_the_same_hit_mask_as_the_device_keys():
    data = tiny_data()
    cache = TeacherCache(data.train.num_samples, 10, dtype=torch.float32, limit_bytes=2**20)
    logits = torch.randn(data.train.num_samples * NUM_VIEWS, 10)
    for epoch in range(3):
        for b in data.train.batches(epoch):
            assert torch.equal(b.index_cpu, b.index.cpu()) and torch.equal(b.view_cpu, b.view.cpu())
            host, _ = cache.lookup(b.index_cpu, b.view_cpu)
            device, _ = cache.lookup(b.index, b.view)
            assert torch.equal(host, device)
            keys = b.index_cpu * NUM_VIEWS + b.view_cpu
            cache.insert(b.index_cpu[::2], b.view_cpu[::2], logits[keys[::2]])  # half of them
            hit, values = cache.lookup(b.index_cpu, b.view_cpu)
            assert hit[::2].all() and torch.equal(values[::2], logits[keys[::2]])
    assert 0 < cache.fill < 1


def test_cached_logits_reads_no_device_data():
    """A 'device' whose tensors hold no data (meta): any host read of device data (a sync on
    a GPU: .item(), int(), nonzero, a copy to the host) raises; the cache path must not."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=10).to("meta").eval()
    n = 48
    cache = TeacherCache(n, 10, dtype=torch.float16, limit_bytes=2**20, device="meta")
    teacher_rows = []

    def logits_fn(x):
        teacher_rows.append(x.shape[0])
        with torch.no_grad():
            return teacher(x)

    x = torch.empty(24, 3, 32, 32, device="meta")
    g = torch.Generator().manual_seed(1)
    keys = [(torch.randperm(n, generator=g)[:24], torch.randint(0, NUM_VIEWS, (24,), generator=g))]
    keys += [keys[0], (torch.randperm(n, generator=g)[:24], keys[0][1])]  # a replay: all hits
    for index, view in keys:
        out = cached_logits(cache, logits_fn, x, index, view)
        assert out.device.type == "meta" and out.shape == (24, 10) and out.dtype == torch.float32
    assert cache.stats.hits >= 24 and cache.stats.misses > 24
    assert len(teacher_rows) == 2  # the replay needed no teacher pass


# ---------------------------------------------------------------- 3: fp32 evaluation
def test_evaluation_runs_in_fp32_under_a_bf16_runtime():
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10).eval()
    bf16 = Runtime(torch.device("cpu"), torch.bfloat16, False)
    seen = []
    hooks = [
        mod.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        for mod in model.modules()
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with bf16.autocast():  # what training runs in: the hooks see bf16
        model(torch.randn(2, 3, 32, 32))
    assert set(seen) == {torch.bfloat16}
    seen.clear()
    data = tiny_data()
    fp32 = evaluate(model, data.test, CPU)
    under_bf16 = evaluate(model, data.test, bf16)
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.float32}
    assert under_bf16 == fp32  # the same numbers whatever the run trains in


# ---------------------------------------------------------------- 4: RNG and determinism
def test_a_checkpoint_restores_every_rng_stream(tmp_path):
    torch.manual_seed(0)
    exp = experiment("vanilla")
    exp.run.compile = False
    (m,) = members_for(exp, tmp_path, None, None, tiny_data())
    torch.manual_seed(11)
    if torch.cuda.is_available():
        torch.cuda.init()  # a CUDA run has used its GPU before any checkpoint
        torch.cuda.manual_seed_all(12)
    m.save("last")
    ckpt = torch.load(m.dir / "last.pth", weights_only=True)
    assert "rng" in ckpt and ("cuda_rng" in ckpt) == torch.cuda.is_available()
    want = torch.rand(5)
    want_cuda = torch.rand(5, device="cuda") if torch.cuda.is_available() else None
    torch.manual_seed(99)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(99)
    m.restore(m.dir / "last.pth")
    assert torch.equal(torch.rand(5), want)
    if want_cuda is not None:
        assert torch.equal(torch.rand(5, device="cuda"), want_cuda)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_checkpoint_restores_the_cuda_rng(tmp_path):
    from engine.train import rng_state, set_rng_state

    torch.cuda.init()
    torch.cuda.manual_seed_all(3)
    state = rng_state()
    want = torch.randn(8, device="cuda")
    torch.cuda.manual_seed_all(4)
    set_rng_state(state)
    assert torch.equal(torch.randn(8, device="cuda"), want)


def test_deterministic_true_switches_to_deterministic_kernels_and_off_again(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    run = schema.RunConfig(device="cpu", deterministic=True, threads=1)
    try:
        pick_runtime(run)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os

        import torch._inductor.config as inductor

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and inductor.deterministic
        run.deterministic = False
        pick_runtime(run)
        assert not torch.are_deterministic_algorithms_enabled() and not inductor.deterministic
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
    finally:
        set_deterministic(False)


# ---------------------------------------------------------------- 5: devices under the engine
def test_a_worker_refuses_a_gpu_it_was_not_given(monkeypatch):
    from engine.core.devices import ENGINE_GPU_ENV, DeviceError

    monkeypatch.setenv(ENGINE_GPU_ENV, "3")
    with pytest.raises(DeviceError, match="placed this run on GPU 3"):
        pick_runtime(schema.RunConfig(device="cuda:1", threads=1))
    monkeypatch.setenv(ENGINE_GPU_ENV, "")  # a CPU slot
    assert pick_runtime(schema.RunConfig(device="cpu", threads=1)).device.type == "cpu"
    assert pick_runtime(schema.RunConfig(device="auto", threads=1)).device.type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_run_device_becomes_the_current_cuda_device(monkeypatch):
    from engine.core.devices import ENGINE_GPU_ENV

    monkeypatch.setenv(ENGINE_GPU_ENV, "0")
    rt = pick_runtime(schema.RunConfig(device="cuda:0", threads=1))
    assert rt.device == torch.device("cuda", 0) and torch.cuda.current_device() == 0
