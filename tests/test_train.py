"""The training loop: losses by hand, exact resume, NaN stop, teachers from earlier runs."""

from __future__ import annotations

import math

import pytest
import torch

from engine.core import reading
from engine.core.store import Store
from engine.data import Batch
from engine.distill.base import TeacherOut, build_distiller
from engine.models import build_model
from engine.worker import execute

TINY = """
name = "tiny"
seeds = [0]
[data]
dataset = "digits"
batch_size = 64
[student]
arch = "resnet8"
[distill]
method = "vanilla"
[optim]
lr = 0.05
epochs = 2
schedule = "cosine"
[run]
device = "cpu"  # bit-exact resume is a CPU property (a GPU box would train in bf16)
max_steps = 6
log_every = 2
"""


# ---------------------------------------------------------------- losses by hand
def test_kd_loss_equals_the_formula_computed_by_hand():
    s = [[1.0, 2.0, 0.5]]
    t = [[3.0, 1.0, 0.0]]
    T, ce_w, kd_w = 2.0, 0.3, 0.7
    label = 1

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    p_t = softmax([x / T for x in t[0]])
    p_s = softmax([x / T for x in s[0]])
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    ce = -math.log(softmax(s[0])[label])
    expected = {"ce": ce_w * ce, "kd": kd_w * T * T * kl}

    student = build_model("resnet8", num_classes=3)
    teacher = build_model("resnet8", num_classes=3)
    d = build_distiller(
        "kd",
        student,
        teacher,
        {"temperature": T, "ce_weight": ce_w, "kd_weight": kd_w},
        num_classes=3,
    )
    d.student.forward = lambda x: torch.tensor(s, requires_grad=True)  # fixed logits
    _, losses = d.forward_train(
        Batch.of(torch.zeros(1, 3, 32, 32), torch.tensor([label])),
        TeacherOut(None, torch.tensor(t)),
    )
    for k, v in expected.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-6)


def _constant_projector(d, value: float):
    """Zero convs, BN shift = value: the projector outputs ReLU(value) everywhere."""
    for m in d.projectors[0].modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.zeros_(m.weight)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.constant_(m.bias, value)


def test_simkd_l2_loss_and_reused_classifier_by_hand():
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=10)
    teacher = build_model("resnet14", num_classes=10)
    d = build_distiller("simkd", student, teacher, {}, num_classes=10)
    d.train()
    _constant_projector(d, 0.5)
    x = torch.randn(2, 3, 32, 32)
    t_feats, t_logits = teacher.forward_all(x)
    target = t_feats[-1]  # 64 x 8 x 8 for both resnet8 and resnet14
    logits, losses = d.forward_train(
        Batch.of(x, torch.tensor([0, 1])), TeacherOut(t_feats, t_logits)
    )
    # l2: mean over all elements of (0.5 - target)^2
    expected = ((0.5 - target) ** 2).mean().item()
    assert losses["feat"].item() == pytest.approx(expected, rel=1e-5)
    # logits: the teacher's own fc applied to GAP(0.5) = W @ [0.5]*64 + b
    W, b = teacher.head.weight, teacher.head.bias
    by_hand = 0.5 * W.sum(dim=1) + b
    assert torch.allclose(logits, by_hand.expand(2, -1), atol=1e-5)
    assert set(losses) == {"feat"}


def test_simkd_reused_classifier_gets_no_gradient_and_stays_frozen():
    student = build_model("resnet8", num_classes=10)
    teacher = build_model("resnet14", num_classes=10)
    d = build_distiller(
        "simkd", student, teacher, {"loss": "l2+kl", "labels": "ce"}, num_classes=10
    )
    d.train()
    assert not teacher.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t = TeacherOut(*teacher.forward_all(x))
    _, losses = d.forward_train(Batch.of(x, torch.tensor([0, 1, 2, 3])), t)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.head.parameters())
    assert any(p.grad is not None for p in d.projectors.parameters())
    trainable = {id(p) for p in d.trainable_parameters()}
    assert not any(id(p) in trainable for p in teacher.parameters())


def test_simkd_test_time_logits_come_from_the_teacher_head():
    student = build_model("resnet8", num_classes=10)
    teacher = build_model("resnet14", num_classes=10)
    d = build_distiller("simkd", student, teacher, {}, num_classes=10).eval()
    _constant_projector(d, 0.25)
    out = d.forward_test(torch.randn(3, 3, 32, 32))
    expected = 0.25 * teacher.head.weight.sum(dim=1) + teacher.head.bias
    assert torch.allclose(out, expected.expand(3, -1), atol=1e-5)


# ---------------------------------------------------------------- the loop, for real
class CrashAfterEpoch:
    """Callbacks that make the run die right after an epoch, like a killed process."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_start(self, m, info):
        pass

    def on_step(self, m, epoch, step, losses, lr):
        pass

    def on_epoch(self, m, epoch, metrics):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")

    def on_end(self, m):
        pass

    def should_stop(self, m):
        return False

    def log(self, m, message):
        pass


def _final(store: Store, run_id: int) -> dict:
    return {(m.epoch, m.step, m.name): m.value for m in store.metrics(run_id)}


def test_a_run_resumed_after_epoch_1_ends_exactly_like_an_uninterrupted_one(store):
    exp = reading.loads(TINY)
    (a,) = store.submit(exp)
    (b,) = store.submit(exp)
    assert execute(store, [a.id])[0].status == "done"

    assert execute(store, [b.id], callbacks=CrashAfterEpoch(0))[0].status == "failed"
    crashed = store.run(b.id)
    assert "simulated crash" in crashed.error
    assert (crashed.path / "last.pth").exists()
    store.requeue(b.id, resume=True)
    done = execute(store, [b.id])[0]
    assert done.status == "done" and done.epoch == 2

    ra, rb = store.run(a.id), store.run(b.id)
    assert rb.last_top1 == ra.last_top1 and rb.best_top1 == ra.best_top1
    fa, fb = _final(store, a.id), _final(store, b.id)
    assert fa.keys() == fb.keys()  # every epoch's metrics exactly once
    for key in fa:
        if key[2] not in ("images_per_s", "epoch_time"):
            assert fb[key] == pytest.approx(fa[key], rel=1e-6, abs=1e-7), key
    sa = torch.load(ra.path / "last.pth", weights_only=True)["model"]
    sb = torch.load(rb.path / "last.pth", weights_only=True)["model"]
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6), k


class PoisonAfterEpoch(CrashAfterEpoch):
    def on_epoch(self, m, epoch, metrics):
        if epoch == self.epoch:
            with torch.no_grad():
                m.distiller.student.head.weight.fill_(float("nan"))


def test_nan_loss_stops_the_run_with_a_clear_message_and_keeps_checkpoints(store):
    (run,) = store.submit(reading.loads(TINY))
    result = execute(store, [run.id], callbacks=PoisonAfterEpoch(0))[0]
    assert result.status == "failed"
    assert "not finite" in result.error and "epoch 2" in result.error
    ckpt = torch.load(result.path / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 1
    assert torch.isfinite(ckpt["model"]["fc.weight"]).all()
    assert "not finite" in (result.path / "log.txt").read_text()


def test_kd_from_a_teacher_trained_first_records_teacher_accuracy_and_head(store):
    text = TINY.replace('method = "vanilla"', 'method = "kd"').replace(
        "[student]", '[teacher]\narch = "resnet8"\ntrain = true\n[student]'
    )
    runs = store.submit(reading.loads(text))
    teacher, student = runs
    assert execute(store, [teacher.id])[0].status == "done"
    result = execute(store, [student.id])[0]
    assert result.status == "done", result.error
    assert result.teacher_top1 is not None and result.best_top1 is not None
    assert result.head == "student"
    names = {m.name for m in store.metrics(result.id)}
    assert {"train/loss", "train/loss_ce", "train/loss_kd", "test/top1", "test/top5"} <= names


def test_a_student_whose_teacher_run_failed_fails_with_the_reason(store):
    text = TINY.replace('method = "vanilla"', 'method = "kd"').replace(
        "[student]", '[teacher]\narch = "resnet8"\ntrain = true\n[student]'
    )
    teacher, student = store.submit(reading.loads(text))
    store.finish(teacher.id, "failed", "out of memory")
    result = execute(store, [student.id])[0]
    assert result.status == "failed"
    assert f"teacher run {teacher.id}" in result.error and "failed" in result.error


def test_a_wrong_teacher_checkpoint_names_the_mismatched_keys(store, tmp_path):
    path = tmp_path / "r14.pth"
    torch.save({"model": build_model("resnet14", num_classes=10).state_dict()}, path)
    text = TINY.replace('method = "vanilla"', 'method = "kd"').replace(
        "[student]", f'[teacher]\narch = "resnet8"\ncheckpoint = "{path}"\n[student]'
    )
    (run,) = store.submit(reading.loads(text))
    result = execute(store, [run.id])[0]
    assert result.status == "failed"
    assert "unexpected" in result.error.lower() or "missing" in result.error.lower()
