"""Every distillation loss against numbers computed by hand, and the SimKD study's variants."""

from __future__ import annotations

import math

import pytest
import torch

from engine.data import Batch
from engine.distill.at import attention_map
from engine.distill.base import TeacherOut, build_distiller, stage_shapes
from engine.distill.dkd import dkd_parts
from engine.distill.simkd import Projector
from engine.distill.stages import align_stages
from engine.models import Features, build_model


def softmax(v):
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


S = [[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 3.0, -0.5]]
T = [[1.0, 2.5, 0.0, -0.7], [-1.0, 0.4, 2.0, 1.5]]
Y = [1, 2]


def hand_dkd(s, t, y, temp):
    """TCKD and NCKD of one sample, straight from the paper's definitions."""
    ps, pt = softmax([x / temp for x in s]), softmax([x / temp for x in t])
    b_s, b_t = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
    tckd = kl(b_t, b_s)
    ns = [p / (1 - ps[y]) for k, p in enumerate(ps) if k != y]
    nt = [p / (1 - pt[y]) for k, p in enumerate(pt) if k != y]
    nckd = kl(nt, ns)
    return tckd * temp**2, nckd * temp**2, pt[y]


# ---------------------------------------------------------------- DKD
def test_dkd_parts_equal_the_definitions_computed_by_hand():
    temp = 2.0
    tckd, nckd = dkd_parts(torch.tensor(S), torch.tensor(T), torch.tensor(Y), temp)
    for k in range(2):
        h_tckd, h_nckd, _ = hand_dkd(S[k], T[k], Y[k], temp)
        assert tckd[k].item() == pytest.approx(h_tckd, rel=1e-5)
        assert nckd[k].item() == pytest.approx(h_nckd, rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_decomposes_into_tckd_plus_weighted_nckd_per_sample(temp):
    tckd, nckd = dkd_parts(torch.tensor(S), torch.tensor(T), torch.tensor(Y), temp)
    for k in range(2):
        ps = softmax([x / temp for x in S[k]])
        pt = softmax([x / temp for x in T[k]])
        kd = kl(pt, ps) * temp**2
        assert kd == pytest.approx(tckd[k].item() + (1 - pt[Y[k]]) * nckd[k].item(), rel=1e-5)


def test_dkd_is_finite_for_extreme_logits():
    s = torch.tensor([[80.0, -80.0, 0.0], [-200.0, 200.0, 0.0]])
    t = torch.tensor([[-80.0, 80.0, 0.0], [200.0, -200.0, 0.0]])
    s.requires_grad_(True)
    tckd, nckd = dkd_parts(s, t, torch.tensor([0, 1]), 1.0)
    (tckd.sum() + nckd.sum()).backward()
    assert torch.isfinite(tckd).all() and torch.isfinite(nckd).all()
    assert torch.isfinite(s.grad).all()


def test_dkd_loss_weights_and_warm_up():
    student, teacher = build_model("resnet8", num_classes=4), build_model("resnet8", num_classes=4)
    d = build_distiller(
        "dkd",
        student,
        teacher,
        {"tckd_weight": 0.5, "nckd_weight": 3.0, "temperature": 2.0, "warmup": 4, "ce_weight": 0.7},
        num_classes=4,
    )
    d.student.forward = lambda x: torch.tensor(S)
    t_out = TeacherOut(None, torch.tensor(T))
    hand = [hand_dkd(S[k], T[k], Y[k], 2.0) for k in range(2)]
    dkd_full = 0.5 * sum(h[0] for h in hand) / 2 + 3.0 * sum(h[1] for h in hand) / 2
    ce = -sum(math.log(softmax(S[k])[Y[k]]) for k in range(2)) / 2
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        _, losses = d.forward_train(Batch.of(None, torch.tensor(Y)), t_out)
        assert d.loss_scales(epoch) == {"dkd": factor}
        assert losses["dkd"].item() == pytest.approx(dkd_full, rel=1e-5)
        assert losses["ce"].item() == pytest.approx(0.7 * ce, rel=1e-5)


def test_dkd_refuses_two_class_data_with_a_reason():
    with pytest.raises(ValueError, match="at least 3 classes but the data set has 2: NCKD"):
        build_distiller(
            "dkd",
            build_model("resnet8", num_classes=2),
            build_model("resnet8", num_classes=2),
            {},
            num_classes=2,
        )


# ---------------------------------------------------------------- AT
def test_attention_map_and_loss_by_hand():
    # one sample, two channels, 1x2 spatial
    fs = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    ft = torch.tensor([[[[0.0, 1.0]], [[1.0, 1.0]]]])
    # mean over channels of F^2: s = [(1+9)/2, (4+0)/2] = [5, 2]; t = [0.5, 1]
    s = [5 / math.hypot(5, 2), 2 / math.hypot(5, 2)]
    t = [0.5 / math.hypot(0.5, 1), 1 / math.hypot(0.5, 1)]
    assert attention_map(fs, 2).flatten().tolist() == pytest.approx(s)
    student = build_model("resnet8", num_classes=10)
    teacher = build_model("resnet8", num_classes=10)
    d = build_distiller(
        "at", student, teacher, {"at_weight": 10.0, "ce_weight": 0.0}, num_classes=10
    )
    d.sizes = [(1, 2)] * 3  # the probe saw 32x32 inputs; these maps are 1x2
    d.student.forward_features = lambda x: Features([fs, fs, fs], fs)
    d.student.forward_head = lambda f: torch.zeros(1, 10)
    t_out = TeacherOut(Features([ft, ft, ft], ft), None)
    _, losses = d.forward_train(Batch.of(None, torch.tensor([0])), t_out)
    per_pair = ((s[0] - t[0]) ** 2 + (s[1] - t[1]) ** 2) / 2
    assert losses["at"].item() == pytest.approx(10.0 * 3 * per_pair, rel=1e-6)


def test_attention_map_uses_the_magnitude_for_odd_powers():
    """at(F) uses |F|^p (Zagoruyko & Komodakis): pre-activation nets give signed maps."""
    f = torch.tensor([[[[-1.0, 2.0]], [[1.0, 0.0]]]])  # |F|^3 mean over channels: [1, 4]
    assert attention_map(f, 3).flatten().tolist() == pytest.approx(
        [1 / math.hypot(1, 4), 4 / math.hypot(1, 4)]
    )


def resnet14_resnet8(num_classes: int = 10):
    """The small teacher/student pair of these tests: (teacher, student)."""
    return (
        build_model("resnet14", num_classes=num_classes),
        build_model("resnet8", num_classes=num_classes),
    )


def test_at_pools_the_larger_map_when_sizes_differ():
    student, teacher = build_model("resnet8", num_classes=10), build_model("vgg8", num_classes=10)
    d = build_distiller("at", student, teacher, {}, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = TeacherOut(*teacher.forward_all(x))
    _, losses = d.forward_train(Batch.of(x, torch.tensor([0, 1])), t)
    assert torch.isfinite(losses["at"])
    assert d.pairs == [(0, 0), (1, 1), (3, 2)]  # vgg8's 4x4 last stage meets resnet8's 8x8
    # the references' zip: stage k with stage k, vgg8's last stage left out
    d = build_distiller("at", student, teacher, {"pairs": "index"}, num_classes=10)
    assert d.pairs == [(0, 0), (1, 1), (2, 2)]


# ---------------------------------------------------------------- FitNet
def test_fitnet_hint_loss_by_hand_with_a_constant_regressor():
    torch.manual_seed(0)
    teacher, student = resnet14_resnet8()
    d = build_distiller(
        "fitnet", student, teacher, {"hint_weight": 100.0, "ce_weight": 1.0}, num_classes=10
    ).train()
    assert (d.t_stage, d.s_stage) == (1, 1)  # RepDistiller/mdistiller's hint_layer = 2
    conv, bn, _ = d.regressor
    assert conv.kernel_size == (1, 1)  # ConvReg's kernel 1 + s_H - t_H for equal sizes
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.constant_(bn.bias, 0.3)  # zero input -> BN output = bias -> ReLU(0.3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = TeacherOut(*teacher.forward_all(x))
    logits, losses = d.forward_train(Batch.of(x, torch.tensor([3, 4])), t)
    hint = t.feats.stages[1]  # 32 x 16 x 16
    assert losses["hint"].item() == pytest.approx(
        100.0 * ((0.3 - hint) ** 2).mean().item(), rel=1e-5
    )
    assert logits.shape == (2, 10)


def test_fitnet_hint_stage_is_configurable_and_checked():
    teacher, student = resnet14_resnet8()
    d = build_distiller(
        "fitnet", student, teacher, {"hint_stage": -1, "guided_stage": 0}, num_classes=10
    )
    assert (d.t_stage, d.s_stage) == (2, 0)
    with pytest.raises(ValueError, match="teacher stage 5 out of range"):
        build_distiller("fitnet", student, teacher, {"hint_stage": 5}, num_classes=10)


# ---------------------------------------------------------------- SimKD variants
@pytest.mark.parametrize("factor, expected", [(2, 214_016), (4, 70_400), (8, 26_240)])
def test_projector_parameter_counts(factor, expected):
    n = sum(p.numel() for p in Projector(256, 256, factor).parameters())
    assert n == expected  # 0.214 M, 0.070 M, 0.026 M


def test_projector_has_no_conv_bias_and_the_published_layout():
    layers = [type(m).__name__ for m in Projector(64, 256, 2)]
    assert layers == ["Conv2d", "BatchNorm2d", "ReLU"] * 3
    convs = [m for m in Projector(64, 256, 2) if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 128), (128, 128), (128, 256)]
    assert all(c.bias is None for c in convs)


@pytest.mark.parametrize(
    "teacher, student, pairs",
    [
        ("resnet32x4", "resnet8x4", [(0, 0), (1, 1), (2, 2)]),
        ("resnet32x4", "mobilenetv2", [(0, 0), (1, 1), (2, 3)]),
        ("wrn_40_2", "wrn_16_2", [(0, 0), (1, 1), (2, 2)]),
    ],
)
def test_all_layer_projectors_one_per_aligned_stage(teacher, student, pairs):
    t, s = build_model(teacher, num_classes=100), build_model(student, num_classes=100)
    d = build_distiller("simkd", s, t, {"projectors": "all"}, num_classes=100)
    assert [(p.teacher, p.student) for p in d.pairs] == pairs
    assert len(d.projectors) == len(pairs)
    assert all(p.weight == pytest.approx(1 / len(pairs)) for p in d.pairs)
    t_shapes, s_shapes = stage_shapes(t), stage_shapes(s)
    for proj, (ti, si) in zip(d.projectors, pairs):
        assert proj[0].in_channels == s_shapes[si][0] and proj[6].out_channels == t_shapes[ti][0]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = TeacherOut(*t.forward_all(x))
    logits, losses = d.forward_train(Batch.of(x, torch.tensor([0, 1])), out)
    assert logits.shape == (2, 100) and torch.isfinite(losses["feat"])


def test_align_stages_never_crosses_and_pairs_the_last_stages():
    shapes = lambda hs: [(8, h, h) for h in hs]  # noqa: E731
    assert align_stages(shapes([32, 16, 8, 4, 4]), shapes([32, 16, 8])) == [(0, 0), (1, 1), (4, 2)]
    assert align_stages(shapes([16, 8]), shapes([32, 16, 8, 4])) == [(0, 1), (1, 3)]


def _simkd_losses(projectors, labels, loss="l2"):
    torch.manual_seed(0)
    teacher, student = resnet14_resnet8()
    d = build_distiller(
        "simkd",
        student,
        teacher,
        {"projectors": projectors, "labels": labels, "loss": loss},
        num_classes=10,
    )
    d.train()
    torch.manual_seed(1)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        t = TeacherOut(*teacher.forward_all(x))
    y = t.logits.argmax(1).clone()
    y[:4] = (y[:4] + 1) % 10  # the teacher is wrong on half the batch
    _, losses = d.forward_train(Batch.of(x, y), t)
    return {k: v.item() for k, v in losses.items()}


PROJECTOR_MODES = ["last", "all", [{"stage": -1, "weight": 2 / 3}, {"stage": -2, "weight": 1 / 3}]]


@pytest.mark.parametrize("projectors", PROJECTOR_MODES, ids=["last", "all", "list"])
def test_labels_change_the_loss_in_every_projector_mode(projectors):
    none = _simkd_losses(projectors, "none")
    ce = _simkd_losses(projectors, "ce")
    mask = _simkd_losses(projectors, "mask-wrong-teacher")
    assert set(none) == {"feat"} and set(ce) == {"feat", "ce"}
    assert ce["feat"] == pytest.approx(none["feat"]) and ce["ce"] > 0
    assert mask["feat"] != pytest.approx(none["feat"])


def test_mask_wrong_teacher_averages_the_feature_loss_over_correct_samples_only():
    torch.manual_seed(0)
    teacher, student = resnet14_resnet8()
    d = build_distiller(
        "simkd", student, teacher, {"labels": "mask-wrong-teacher"}, num_classes=10
    ).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t = TeacherOut(*teacher.forward_all(x))
    y = t.logits.argmax(1).clone()
    y[0] = (y[0] + 1) % 10
    _, losses = d.forward_train(Batch.of(x, y), t)
    projected = d.project(0, student.forward_features(x).stages)
    per_sample = ((projected - t.feats.final) ** 2).flatten(1).mean(1)
    assert losses["feat"].item() == pytest.approx(per_sample[1:].mean().item(), rel=1e-5)


def test_simkd_kl_goes_through_the_reused_classifier_by_hand():
    torch.manual_seed(0)
    teacher, student = resnet14_resnet8(num_classes=3)
    d = build_distiller(
        "simkd", student, teacher, {"loss": "kl", "temperature": 2.0}, num_classes=3
    ).train()
    for m in d.projectors[0].modules():  # projector -> constant 0.5 map
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.zeros_(m.weight)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(m.bias, 0.5)
    t_logits = [[1.0, 0.0, -1.0]]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = teacher.forward_features(x)
    _, losses = d.forward_train(
        Batch.of(x, torch.tensor([0])), TeacherOut(feats, torch.tensor(t_logits))
    )
    W, b = teacher.head.weight.tolist(), teacher.head.bias.tolist()
    s_logits = [0.5 * sum(W[k]) + b[k] for k in range(3)]  # fc(GAP(0.5))
    expected = kl(softmax([v / 2 for v in t_logits[0]]), softmax([v / 2 for v in s_logits])) * 4
    assert set(losses) == {"kl"}
    assert losses["kl"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("projectors", PROJECTOR_MODES, ids=["last", "all", "list"])
def test_the_reused_classifier_gets_no_gradient_in_any_mode(projectors):
    teacher, student = resnet14_resnet8()
    d = build_distiller(
        "simkd",
        student,
        teacher,
        {"projectors": projectors, "loss": "l2+kl", "labels": "ce"},
        num_classes=10,
    )
    d.train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t = TeacherOut(*teacher.forward_all(x))
    _, losses = d.forward_train(Batch.of(x, torch.tensor([0, 1, 2, 3])), t)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("projectors", PROJECTOR_MODES[1:], ids=["all", "list"])
def test_kl_alone_with_several_projectors_is_refused_not_silently_left_untrained(projectors):
    """Only the projection feeding the reused classifier has a kl term; the others never train."""
    teacher, student = resnet14_resnet8()
    with pytest.raises(ValueError, match=r"never train.*l2\+kl"):
        build_distiller(
            "simkd", student, teacher, {"projectors": projectors, "loss": "kl"}, num_classes=10
        )
    d = build_distiller(
        "simkd", student, teacher, {"projectors": projectors, "loss": "l2+kl"}, num_classes=10
    )
    assert len(d.projectors) > 1


def test_a_projector_list_must_include_the_teachers_last_stage():
    teacher, student = resnet14_resnet8()
    with pytest.raises(ValueError, match="last stage"):
        build_distiller("simkd", student, teacher, {"projectors": [{"stage": 0}]}, num_classes=10)


# ---------------------------------------------------------------- every method trains
@pytest.mark.parametrize("method", ["vanilla", "kd", "fitnet", "at", "dkd", "simkd"])
def test_every_method_takes_optimiser_steps_that_lower_its_loss(method):
    torch.manual_seed(0)
    teacher, student = (
        build_model("resnet8", num_classes=10),
        build_model("resnet8", num_classes=10),
    )
    d = build_distiller(method, student, teacher, {}, num_classes=10).train()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with torch.no_grad():
        t = TeacherOut(*teacher.forward_all(x))
    totals = []
    for _ in range(8):
        _, losses = d.forward_train(Batch.of(x, y), t)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert all(math.isfinite(v) for v in totals)
    assert totals[-1] < totals[0]
