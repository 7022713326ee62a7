"""The methods the field compares against today (issue 15): CRD, DIST, MLKD and logit
standardization, each loss against numbers computed by hand from the paper's formula, and
each method for real through the worker."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from engine.core import reading, schema
from engine.core.registry import METHODS, method_label
from engine.data import Batch, build_data
from engine.distill.base import TeacherOut, build_distiller
from engine.distill.crd import draw_negatives, mix32, nce_loss
from engine.distill.losses import standardize
from engine.distill.mlkd import mlkd_masks
from engine.models import build_model


# ---------------------------------------------------------------- formulas in plain Python
def softmax(v):
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def kd(s, t, temp):
    """T^2 KL(softmax(t/T) || softmax(s/T)) averaged over the rows."""
    per = [
        kl(softmax([v / temp for v in tr]), softmax([v / temp for v in sr])) for sr, tr in zip(s, t)
    ]
    return temp * temp * sum(per) / len(per)


def zscore(row):
    """(z - mean) / (1e-7 + sample std), the LS paper's pre-process."""
    return [(v - statistics.mean(row)) / (1e-7 + statistics.stdev(row)) for v in row]


def pearson(a, b):
    ma, mb = statistics.mean(a), statistics.mean(b)
    da, db = [v - ma for v in a], [v - mb for v in b]
    num = sum(x * y for x, y in zip(da, db))
    return num / (math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(y * y for y in db)) + 1e-8)


def probs(rows, temp):
    return [softmax([v / temp for v in r]) for r in rows]


def gram(p, transpose):
    """P P^T (batch level) or P^T P (class level) as nested lists."""
    if transpose:
        p = [list(col) for col in zip(*p)]
    return [[sum(x * y for x, y in zip(a, b)) for b in p] for a in p]


def gram_loss(s, t, temp, level):
    ps, pt = probs(s, temp), probs(t, temp)
    gs, gt = gram(ps, level == "class"), gram(pt, level == "class")
    total = sum((x - y) ** 2 for ra, rb in zip(gt, gs) for x, y in zip(ra, rb))
    return total / (len(s[0]) if level == "class" else len(s))


S = [[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 3.0, -0.5], [1.5, -0.3, 0.2, 0.9]]
T = [[1.0, 2.5, 0.0, -0.7], [-1.0, 0.4, 2.0, 1.5], [2.2, 0.1, -0.4, 0.6]]
Y = [1, 2, 0]


def pair(num_classes: int = 4):
    torch.manual_seed(0)
    return build_model("resnet14", num_classes=num_classes), build_model(
        "resnet8", num_classes=num_classes
    )


def fixed_student(d, table: dict):
    """Make the distiller's student return fixed logits for marker inputs."""
    d.student.forward = lambda x: table[id(x)]


# ---------------------------------------------------------------- logit standardization
def test_standardize_is_the_z_score_with_the_sample_std():
    z = standardize(torch.tensor(S))
    for row, expected in zip(z.tolist(), map(zscore, S)):
        assert row == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_logit_stand_runs_the_softened_terms_on_z_scored_logits(method):
    teacher, student = pair()
    options = {"logit_stand": True, "temperature": 2.0}
    d = build_distiller(method, student, teacher, options, num_classes=4)
    x = torch.zeros(3, 3, 32, 32)
    fixed_student(d, {id(x): torch.tensor(S)})
    _, losses = d.forward_train(Batch.of(x, torch.tensor(Y)), TeacherOut(None, torch.tensor(T)))
    zs, zt = [zscore(r) for r in S], [zscore(r) for r in T]
    ce = -sum(math.log(softmax(S[k])[Y[k]]) for k in range(3)) / 3  # CE keeps the raw logits
    if method == "kd":
        assert losses["kd"].item() == pytest.approx(0.9 * kd(zs, zt, 2.0), rel=1e-5)
        assert losses["ce"].item() == pytest.approx(0.1 * ce, rel=1e-5)
    else:  # DKD: TCKD + 8 NCKD on the standardised logits
        plain = build_distiller("dkd", student, teacher, {"temperature": 2.0}, num_classes=4)
        fixed_student(plain, {id(x): torch.tensor(zs)})
        _, ref = plain.forward_train(
            Batch.of(x, torch.tensor(Y)), TeacherOut(None, torch.tensor(zt))
        )
        assert losses["dkd"].item() == pytest.approx(ref["dkd"].item(), rel=1e-5)
        assert losses["ce"].item() == pytest.approx(ce, rel=1e-5)


def test_logit_stand_is_an_option_of_every_logit_method_and_names_the_run():
    for name in ("kd", "dkd", "dist", "mlkd"):
        assert METHODS[name].options["logit_stand"].default is False, name
    assert method_label("kd", {"logit_stand": True}) == "kd+ls"
    assert method_label("dkd", {"logit_stand": False}) == "dkd"
    assert method_label("simkd", {}) == "simkd"


def test_the_leaderboard_method_column_says_kd_plus_ls(store):
    from engine.core import export as x
    from engine.core import leaderboard as lb

    exp = reading.loads(
        """
name = "ls"
[data]
dataset = "digits"
[teacher]
arch = "resnet8"
checkpoint = "t.pth"
[student]
arch = "resnet8"
[distill]
method = "kd"
logit_stand = true
temperature = 2.0
kd_weight = 9.0
"""
    )
    (run,) = store.submit(exp)
    assert store.run(run.id).method == "kd+ls"
    rows = lb.build_rows(store.runs())
    assert [r.method for r in rows] == ["kd+ls"]
    assert "kd+ls" in x.export(rows, "md")


# ---------------------------------------------------------------- DIST
def test_dist_inter_and_intra_relations_by_hand():
    teacher, student = pair()
    options = {"kd_weight": 2.0, "inter_weight": 1.0, "intra_weight": 0.5, "temperature": 3.0}
    d = build_distiller("dist", student, teacher, options, num_classes=4)
    x = torch.zeros(3, 3, 32, 32)
    fixed_student(d, {id(x): torch.tensor(S)})
    _, losses = d.forward_train(Batch.of(x, torch.tensor(Y)), TeacherOut(None, torch.tensor(T)))
    ps, pt = probs(S, 3.0), probs(T, 3.0)
    inter = 1 - sum(pearson(a, b) for a, b in zip(ps, pt)) / 3  # each sample over classes
    cols_s, cols_t = list(zip(*ps)), list(zip(*pt))
    intra = 1 - sum(pearson(a, b) for a, b in zip(cols_s, cols_t)) / 4  # each class over samples
    assert losses["inter"].item() == pytest.approx(2.0 * 1.0 * 9 * inter, rel=1e-5)
    assert losses["intra"].item() == pytest.approx(2.0 * 0.5 * 9 * intra, rel=1e-5)
    assert set(losses) == {"ce", "inter", "intra"}


def test_dist_is_zero_for_a_student_that_ranks_like_the_teacher():
    """Pearson relations ignore scale and shift of the probabilities: a relation, not a match."""
    teacher, student = pair()
    d = build_distiller(
        "dist", student, teacher, {"temperature": 1.0, "ce_weight": 0.0}, num_classes=4
    )
    x = torch.zeros(3, 3, 32, 32)
    t = torch.tensor(T)
    fixed_student(d, {id(x): t.clone()})
    _, losses = d.forward_train(Batch.of(x, torch.tensor(Y)), TeacherOut(None, t))
    assert losses["inter"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["intra"].item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- MLKD
def test_mlkd_masks_are_the_fractions_at_or_below_the_median_like_np_percentile():
    t = torch.tensor(T + [[0.0, 0.0, 0.0, 5.0]])
    m, cfrac = mlkd_masks(t)
    p = torch.softmax(t, dim=1).numpy()
    conf, cls = p.max(axis=1), p.sum(axis=0)
    assert m.item() == pytest.approx(np.mean(conf <= np.percentile(conf, 50)))
    assert cfrac.item() == pytest.approx(np.mean(cls <= np.percentile(cls, 50)))
    # ties (a saturated teacher): every sample is at the median, so nothing is scaled down
    m_tied, _ = mlkd_masks(torch.tensor([[50.0, 0, 0, 0]] * 4))
    assert m_tied.item() == 1.0


S2 = [[0.3, -1.0, 2.0, 0.1], [1.0, 0.0, -0.5, 0.4], [-0.2, 0.8, 0.3, 1.1]]
T2 = [[0.0, -0.5, 1.5, 0.2], [2.0, 0.1, -1.0, 0.0], [0.1, 1.4, 0.0, 0.6]]


@pytest.mark.parametrize("reference_strong_terms", [True, False])
@pytest.mark.parametrize("logit_stand", [False, True])
def test_mlkd_loss_by_hand(reference_strong_terms, logit_stand):
    teacher, student = pair()
    temps = [4.0, 3.0, 5.0, 2.0, 6.0]
    options = {
        "temperatures": temps,
        "reference_strong_terms": reference_strong_terms,
        "logit_stand": logit_stand,
        "ce_weight": 0.1,
        "kd_weight": 0.9,
    }
    d = build_distiller("mlkd", student, teacher, options, num_classes=4)
    xw, xs = torch.zeros(3, 3, 32, 32), torch.ones(3, 3, 32, 32)
    fixed_student(d, {id(xw): torch.tensor(S), id(xs): torch.tensor(S2)})
    t_out = TeacherOut(None, torch.tensor(T), strong_logits=torch.tensor(T2))
    batch = Batch(xw, torch.tensor(Y), torch.arange(3), None, strong=xs)
    logits, losses = d.forward_train(batch, t_out)
    assert torch.equal(logits, torch.tensor(S))  # the weak view's logits train

    conf = [max(softmax(r)) for r in T]
    m = sum(v <= statistics.median(conf) for v in conf) / 3
    cls = [sum(col) for col in zip(*(softmax(r) for r in T))]
    cf = sum(v <= statistics.median(cls) for v in cls) / 4
    prep = (lambda rows: [zscore(r) for r in rows]) if logit_stand else (lambda rows: rows)
    instance = batch_level = class_level = 0.0
    for k, temp in enumerate(temps):
        weak = kd(prep(S), prep(T), temp)
        strong = weak if reference_strong_terms and k in (3, 4) else kd(prep(S2), prep(T2), temp)
        instance += m * weak + strong
        batch_level += m * gram_loss(S, T, temp, "batch")  # never standardised, weak view only
        class_level += cf * gram_loss(S, T, temp, "class")
    ce = -sum(math.log(softmax(S[k])[Y[k]]) + math.log(softmax(S2[k])[Y[k]]) for k in range(3)) / 3
    assert losses["ce"].item() == pytest.approx(0.1 * ce, rel=1e-5)
    assert losses["instance"].item() == pytest.approx(0.9 * instance, rel=1e-5)
    assert losses["batch"].item() == pytest.approx(0.9 * batch_level, rel=1e-5)
    assert losses["class"].item() == pytest.approx(0.9 * class_level, rel=1e-5)


def test_mlkd_without_the_strong_view_says_what_to_set():
    teacher, student = pair()
    d = build_distiller("mlkd", student, teacher, {}, num_classes=4)
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="strong_view"):
        d.forward_train(Batch.of(x, torch.tensor([0, 1])), TeacherOut(None, torch.zeros(2, 4)))


def test_mlkd_with_the_strong_view_turned_off_is_refused_naming_the_key():
    text = """
name = "m"
[data]
dataset = "digits"
strong_view = "off"
[teacher]
arch = "resnet8"
checkpoint = "t.pth"
[student]
arch = "resnet8"
[distill]
method = "mlkd"
"""
    with pytest.raises(
        schema.ConfigError, match=r"x\.toml:5: data\.strong_view: method 'mlkd' trains"
    ):
        reading.loads(text, file="x.toml")
    exp = reading.loads(text.replace('"off"', '"auto"'))
    assert schema.strong_view(exp)
    assert not schema.strong_view(
        reading.loads(text.replace('"off"', '"auto"').replace("mlkd", "kd"))
    )


# ---------------------------------------------------------------- CRD
def test_nce_loss_by_hand():
    h = [[0.8, 0.1, 0.3], [0.2, 0.5, 0.05]]  # column 0: positive; K = 2 negatives
    n = 10  # training samples: noise probability 1/10, K/N = 0.2
    eps = 1e-7
    expected = 0.0
    for row in h:
        expected += math.log(row[0] / (row[0] + 0.2 + eps))
        expected += sum(math.log(0.2 / (v + 0.2 + eps)) for v in row[1:])
    assert nce_loss(torch.tensor(h), n).item() == pytest.approx(-expected / 2, rel=1e-6)


def test_crd_negatives_come_uniformly_from_other_classes_and_replay_exactly():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3] * 10)
    from engine.distill.crd import class_tables

    order, start, count = class_tables(labels, 4)
    index = torch.tensor([0, 1, 9, 33])
    y = labels[index]
    args = (torch.tensor(123), torch.tensor(7), index, y, 4000, order, start, count)
    neg = draw_negatives(*args)
    assert neg.shape == (4, 4000)
    assert (labels[neg] != y[:, None]).all()  # never the anchor's own class
    for i in range(4):  # every other-class sample about equally often
        hits = torch.bincount(neg[i], minlength=100)[labels != y[i]].float()
        assert hits.min() > 0 and hits.std() / hits.mean() < 0.25
    assert torch.equal(draw_negatives(*args), neg)  # a pure function of (seed, step, index)
    later = draw_negatives(torch.tensor(123), torch.tensor(8), *args[2:])
    assert (later != neg).float().mean() > 0.9


def test_mix32_stays_in_32_bits_and_spreads_neighbours():
    x = torch.arange(0, 1 << 16, dtype=torch.int64)
    h = mix32(x)
    assert h.min() >= 0 and h.max() < (1 << 32)
    assert h.unique().numel() == x.numel()  # a bijection on 32 bits
    bits = torch.stack([(h >> b) & 1 for b in range(32)]).float().mean(dim=1)
    assert ((bits - 0.5).abs() < 0.01).all()


class FixedEmbed(torch.nn.Module):
    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x):
        return self.v


def test_crd_loss_and_memory_update_by_hand():
    """Scores against the banks, NCE both ways, Z fixed at step 1, momentum 0.5 by index."""
    teacher, student = pair(3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    options = {"nce_k": 3, "feat_dim": 2, "nce_t": 0.5, "nce_momentum": 0.5, "crd_weight": 0.8}
    d = build_distiller(
        "crd", student, teacher, options, num_classes=3, train_labels=labels
    ).train()
    v_s = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), dim=1)
    v_t = torch.nn.functional.normalize(torch.tensor([[0.3, -1.0], [2.0, 1.0]]), dim=1)
    d.embed_s, d.embed_t = FixedEmbed(v_s), FixedEmbed(v_t)
    index, y = torch.tensor([4, 0]), torch.tensor([1, 0])
    neg = d.negatives(index, y).tolist()  # what this step draws (step 0)
    bank_s = d.memory.student_bank.clone().tolist()
    bank_t = d.memory.teacher_bank.clone().tolist()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t_out = TeacherOut(*teacher.forward_all(x))
    _, losses = d.forward_train(Batch.of(x, y, index), t_out)

    def dot(a, b):
        return sum(p * q for p, q in zip(a, b))

    def scores(anchor, bank):
        rows = [[index[i].item()] + neg[i] for i in range(2)]
        return [[math.exp(dot(anchor[i], bank[j]) / 0.5) for j in r] for i, r in enumerate(rows)]

    def nce(h):
        noise = 3 / 6  # K / N
        out = 0.0
        for row in h:
            out += math.log(row[0] / (row[0] + noise + 1e-7))
            out += sum(math.log(noise / (v + noise + 1e-7)) for v in row[1:])
        return -out / 2

    raw_s, raw_t = scores(v_s.tolist(), bank_t), scores(v_t.tolist(), bank_s)
    z_s = statistics.mean(v for r in raw_s for v in r) * 6
    z_t = statistics.mean(v for r in raw_t for v in r) * 6
    h_s = [[v / z_s for v in r] for r in raw_s]
    h_t = [[v / z_t for v in r] for r in raw_t]
    assert losses["crd"].item() == pytest.approx(0.8 * (nce(h_s) + nce(h_t)), rel=1e-4)
    assert d.memory.z_student.item() == pytest.approx(z_s, rel=1e-5)
    # the banks moved towards this batch's embeddings at its dataset indices only
    for bank, before, v in (
        (d.memory.student_bank, bank_s, v_s),
        (d.memory.teacher_bank, bank_t, v_t),
    ):
        for i, n in enumerate(index.tolist()):
            mixed = [0.5 * a + 0.5 * b for a, b in zip(before[n], v[i].tolist())]
            norm = math.sqrt(sum(m * m for m in mixed))
            assert bank[n].tolist() == pytest.approx([m / norm for m in mixed], rel=1e-5)
        for n in (1, 2, 3, 5):
            assert bank[n].tolist() == before[n]
    assert d.step.item() == 1
    z_before = d.memory.z_student.item()
    d.forward_train(Batch.of(x, y, index), t_out)
    assert d.memory.z_student.item() == z_before  # Z is fixed after the first step


def test_crd_gradients_reach_the_student_and_both_heads_never_the_teacher_or_banks():
    teacher, student = pair(3)
    labels = torch.arange(30) % 3
    d = build_distiller(
        "crd", student, teacher, {"nce_k": 16, "kd_weight": 1.0}, num_classes=3, train_labels=labels
    ).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t_out = TeacherOut(*teacher.forward_all(x))
    index = torch.tensor([0, 1, 2, 3])
    _, losses = d.forward_train(Batch.of(x, labels[index], index), t_out)
    assert set(losses) == {"ce", "crd", "kd"}
    sum(losses.values()).backward()
    trainable = {n for n, p in d.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("embed_")} == {
        "embed_s.linear.weight",
        "embed_s.linear.bias",
        "embed_t.linear.weight",
        "embed_t.linear.bias",
    }
    assert all(p.grad is not None for n, p in d.named_parameters() if n in trainable)
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(b.requires_grad for b in d.memory.buffers())
    assert {id(p) for p in d.trainable_parameters()} == {
        id(p) for n, p in d.named_parameters() if n in trainable
    }


def test_crd_needs_the_training_labels():
    teacher, student = pair(3)
    with pytest.raises(ValueError, match="needs the training set's labels"):
        build_distiller("crd", student, teacher, {}, num_classes=3)


# ---------------------------------------------------------------- ReviewKD
def mean(values):
    values = list(values)
    return sum(values) / len(values)


def avg_pool(m, size):
    """Adaptive average pooling of an (H, W) nested list whose sides size divides."""
    k = len(m) // size
    return [
        [
            mean(m[r][c] for r in range(i * k, i * k + k) for c in range(j * k, j * k + k))
            for j in range(size)
        ]
        for i in range(size)
    ]


def mse(a, b):
    return mean((x - y) ** 2 for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_hierarchical_context_loss_by_hand():
    from engine.distill.reviewkd import hcl_level

    fs = [[float((3 * r + 5 * c) % 7) for c in range(4)] for r in range(4)]
    ft = [[float((r * c) % 5) - 1 for c in range(4)] for r in range(4)]
    # 4x4 maps: the full MSE, then pyramids 2x2 (weight 1/2) and 1x1 (1/4); 4x4 is not smaller
    expected = (
        mse(fs, ft)
        + mse(avg_pool(fs, 2), avg_pool(ft, 2)) / 2
        + mse(avg_pool(fs, 1), avg_pool(ft, 1)) / 4
    ) / 1.75
    got = hcl_level(torch.tensor(fs)[None, None], torch.tensor(ft)[None, None])
    assert got.item() == pytest.approx(expected, rel=1e-6)
    one = hcl_level(torch.tensor([[[[2.0]]]]), torch.tensor([[[[0.5]]]]))  # the pooled level
    assert one.item() == pytest.approx(2.25)


def test_attention_based_fusion_by_hand():
    """1-channel maps: conv1 = w1 * x (BN at init is x / sqrt(1 + eps)), attention
    a = sigmoid(att(x, up(y))), fused = x a0 + y a1, conv2 = centre tap 3 (then BN)."""
    from engine.distill.reviewkd import ABF

    abf = ABF(1, 1, 1, fuse=True).eval()
    bn = 1 / math.sqrt(1 + 1e-5)
    with torch.no_grad():
        abf.conv1[0].weight.fill_(2.0)
        att = abf.att_conv[0]
        att.weight.copy_(torch.tensor([[0.5, -1.0], [1.0, 0.25]]).view(2, 2, 1, 1))
        att.bias.copy_(torch.tensor([0.1, -0.2]))
        abf.conv2[0].weight.zero_()
        abf.conv2[0].weight[0, 0, 1, 1] = 3.0
    x = [[1.0, -2.0], [0.5, 3.0]]
    y = 0.7  # the deeper level's fused 1x1 map, upsampled (nearest) to 2x2
    out, fused = abf(torch.tensor(x)[None, None], torch.tensor([[[[y]]]]), (2, 2))

    def sig(v):
        return 1 / (1 + math.exp(-v))

    for r in range(2):
        for col in range(2):
            xv = 2.0 * x[r][col] * bn
            a0 = sig(0.5 * xv - 1.0 * y + 0.1)
            a1 = sig(1.0 * xv + 0.25 * y - 0.2)
            f = xv * a0 + y * a1
            assert fused[0, 0, r, col].item() == pytest.approx(f, rel=1e-5)
            assert out[0, 0, r, col].item() == pytest.approx(3 * f * bn, rel=1e-5)


def test_reviewkd_levels_are_mdistillers_for_resnet32x4_to_resnet8x4():
    """mdistiller's CIFAR config: in/out channels [64, 128, 256, 256], shapes [32, 16, 8, 1],
    mid = min(512, 256); the student's activated maps, the teacher's pre-activation ones."""
    teacher = build_model("resnet32x4", num_classes=100).eval()
    student = build_model("resnet8x4", num_classes=100)
    d = build_distiller("reviewkd", student, teacher, {}, num_classes=100)
    convs = [
        (a.conv1[0].in_channels, a.conv1[0].out_channels, a.conv2[0].out_channels) for a in d.abfs
    ]
    assert convs == [(64, 256, 64), (128, 256, 128), (256, 256, 256), (256, 256, 256)]
    assert [a.att_conv is not None for a in d.abfs] == [True, True, True, False]
    assert d.out_sizes == [(32, 32), (16, 16), (8, 8), (1, 1)]
    assert d.loss_scales(0) == {"review": pytest.approx(1 / 20)}
    assert d.loss_scales(19) == {"review": 1.0}
    assert METHODS["reviewkd"].options["review_weight"].default == 5.0


# ReviewKD's build_review_kd (CIFAR-100): student in_channels, teacher out_channels and
# out_shapes of each level, listed shallow to deep (it lists them deep to shallow)
REVIEWKD_LEVELS = [
    ("resnet32x4", "resnet8x4", [64, 128, 256, 256], [64, 128, 256, 256], [32, 16, 8, 1]),
    ("resnet56", "resnet20", [16, 32, 64, 64], [16, 32, 64, 64], [32, 16, 8, 1]),
    ("resnet110", "resnet32", [16, 32, 64, 64], [16, 32, 64, 64], [32, 16, 8, 1]),
    ("wrn_40_2", "wrn_16_2", [32, 64, 128, 128], [32, 64, 128, 128], [32, 16, 8, 1]),
    ("wrn_40_2", "wrn_40_1", [16, 32, 64, 64], [32, 64, 128, 128], [32, 16, 8, 1]),
    (
        "vgg13",
        "mobilenetv2_0_5",
        [12, 16, 48, 160, 1280],
        [128, 256, 512, 512, 512],
        [16, 8, 4, 4, 1],
    ),
    (
        "ResNet50",
        "mobilenetv2_0_5",
        [12, 16, 48, 160, 1280],
        [256, 512, 1024, 2048, 2048],
        [32, 16, 8, 4, 1],
    ),
    (
        "ResNet50",
        "vgg8",
        [128, 256, 512, 512, 512],
        [256, 512, 1024, 2048, 2048],
        [32, 16, 8, 4, 1],
    ),
    ("resnet32x4", "shufflenetv1", [240, 480, 960, 960], [64, 128, 256, 256], [32, 16, 8, 1]),
    ("resnet32x4", "shufflenetv2", [116, 232, 464, 1024], [64, 128, 256, 256], [32, 16, 8, 1]),
    ("wrn_40_2", "shufflenetv1", [240, 480, 960, 960], [32, 64, 128, 128], [32, 16, 8, 1]),
]


@pytest.mark.parametrize(
    "t, s, ins, outs, sizes", REVIEWKD_LEVELS, ids=[f"{r[0]}-{r[1]}" for r in REVIEWKD_LEVELS]
)
def test_reviewkd_levels_are_the_references_for_every_published_pair(t, s, ins, outs, sizes):
    teacher = build_model(t, num_classes=100).eval()
    student = build_model(s, num_classes=100)
    d = build_distiller("reviewkd", student, teacher, {}, num_classes=100)
    assert [a.conv1[0].in_channels for a in d.abfs] == ins
    assert [a.conv2[0].out_channels for a in d.abfs] == outs
    assert [h for h, _ in d.out_sizes] == sizes
    assert {a.conv1[0].out_channels for a in d.abfs} == {min(512, ins[-1])}


def test_reviewkd_loss_against_the_teachers_preactivation_maps():
    torch.manual_seed(0)
    teacher, student = pair(10)
    d = build_distiller(
        "reviewkd", student, teacher, {"review_weight": 2.0}, num_classes=10
    ).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats, logits = teacher.forward_all(x)
        pre = teacher.forward_features(x, preact=True)
    assert not torch.equal(pre.stages[-1], feats.stages[-1])  # ResNet: before the last ReLU
    t_out = TeacherOut(feats, logits, preact_feats=pre)
    _, losses = d.forward_train(Batch.of(x, torch.tensor([0, 1, 2, 3])), t_out)
    from engine.distill.reviewkd import hcl_level

    outs = d.review(student.forward_features(x))
    targets = list(pre.stages) + [teacher.pool(pre.final)[:, :, None, None]]
    expected = 2.0 * sum(hcl_level(o, t) for o, t in zip(outs, targets))
    assert losses["review"].item() == pytest.approx(expected.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in d.abfs.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(RuntimeError, match="pre-activation"):
        d.forward_train(Batch.of(x, torch.tensor([0, 1, 2, 3])), TeacherOut(feats, logits))


def test_the_teacher_source_gives_preactivation_maps_to_the_methods_that_read_them():
    from engine.core.schema import RunConfig
    from engine.train import pick_runtime, plain_teacher_source

    runtime = pick_runtime(RunConfig(device="cpu", threads=1))
    teacher = build_model("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    batch = Batch.of(x, torch.tensor([0, 1]))
    with torch.no_grad():
        pre = teacher.forward_features(x, preact=True)
        feats = teacher.forward_features(x)
    only = plain_teacher_source(teacher, runtime, logits_only=True, preact=True)(batch)
    both = plain_teacher_source(teacher, runtime, preact=True)(batch)
    assert only.feats is None and both.feats is not None
    for out in (only, both):
        assert all(torch.equal(a, b) for a, b in zip(out.preact_feats.stages, pre.stages))
    assert all(torch.equal(a, b) for a, b in zip(both.feats.stages, feats.stages))
    assert plain_teacher_source(teacher, runtime)(batch).preact_feats is None


# ---------------------------------------------------------------- every new method's gradients
@pytest.mark.parametrize("method", ["dist", "mlkd", "kd", "dkd"])
def test_logit_methods_train_the_student_only(method):
    teacher, student = pair()
    d = build_distiller(method, student, teacher, {"logit_stand": True}, num_classes=4).train()
    x, xs = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t_out = TeacherOut(*teacher.forward_all(x), strong_logits=teacher(xs))
    _, losses = d.forward_train(
        Batch(x, torch.tensor([0, 1, 2, 3]), torch.arange(4), None, strong=xs), t_out
    )
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert len(d.trainable_parameters()) == len(list(student.parameters()))


# ---------------------------------------------------------------- the strong view
def _pil_op(img, op, v):
    from PIL import Image, ImageEnhance, ImageOps

    w, h = img.size
    return {
        "autocontrast": lambda: ImageOps.autocontrast(img),
        "brightness": lambda: ImageEnhance.Brightness(img).enhance(v),
        "color": lambda: ImageEnhance.Color(img).enhance(v),
        "contrast": lambda: ImageEnhance.Contrast(img).enhance(v),
        "equalize": lambda: ImageOps.equalize(img),
        "identity": lambda: img,
        "posterize": lambda: ImageOps.posterize(img, int(v)),
        "rotate": lambda: img.rotate(v),
        "sharpness": lambda: ImageEnhance.Sharpness(img).enhance(v),
        "shear_x": lambda: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "shear_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "solarize": lambda: ImageOps.solarize(img, v),
        "translate_x": lambda: img.transform(img.size, Image.AFFINE, (1, 0, v * w, 0, 1, 0)),
        "translate_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * h)),
    }[op]()


@pytest.mark.parametrize("kind", ["colour", "grey", "flat", "few-levels"])
def test_each_strong_op_equals_pils_op_on_the_same_image(kind):
    """The reference pipeline's RandAugment ops are PIL's: ours match them pixel for pixel
    (rotate: PIL's incremental stepping moves a few boundary pixels)."""
    from PIL import Image

    from engine.strong_aug import OPS, StrongParams, magnitude, rand_augment_u8

    rng = np.random.default_rng(["colour", "grey", "flat", "few-levels"].index(kind))
    base = {
        "colour": lambda: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "grey": lambda: np.repeat(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, -1),
        "flat": lambda: np.full((32, 32, 3), 77, np.uint8),
        "few-levels": lambda: (rng.integers(0, 5, (32, 32, 3)) * 60).astype(np.uint8),
    }[kind]()
    images = torch.from_numpy(base).permute(2, 0, 1)[None].expand(len(OPS), -1, -1, -1)
    u = torch.tensor(rng.random(len(OPS)), dtype=torch.float32)
    # op k in the first slot, identity in the second, no cutout
    ops = torch.stack([torch.arange(len(OPS)), torch.full((len(OPS),), OPS.index("identity"))], 1)
    zeros = torch.zeros(len(OPS))
    params = StrongParams(ops, torch.stack([u, zeros], 1), zeros, zeros, zeros)
    out = rand_augment_u8(images.contiguous(), params)
    for k, op in enumerate(OPS):
        ref = np.asarray(_pil_op(Image.fromarray(base), op, magnitude(op, float(u[k]))))
        ours = out[k].permute(1, 2, 0).numpy()
        same = (ours == ref).mean()
        assert same >= (0.995 if op == "rotate" else 1.0), (op, same)


def test_cutout_paints_fixmatchs_grey_square():
    from engine.strong_aug import OPS, StrongParams, rand_augment_u8

    img = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    ident = torch.full((1, 2), OPS.index("identity"))
    # side 0.25 * 32 = 8 centred at (16, 8): x0 = 12, y0 = 4, PIL's rectangle includes x0 + 8
    p = StrongParams(
        ident, torch.zeros(1, 2), torch.tensor([0.25]), torch.tensor([0.25]), torch.tensor([0.5])
    )
    out = rand_augment_u8(img, p)[0]
    painted = (out != 0).any(dim=0).nonzero()
    assert painted[:, 0].min() == 4 and painted[:, 0].max() == 12
    assert painted[:, 1].min() == 12 and painted[:, 1].max() == 20
    assert out[:, 8, 16].tolist() == [125, 123, 114]


def _digits(strong: bool, loader: str = "device", seed: int = 3):
    cfg = schema.DataConfig(dataset="digits", batch_size=16, loader=loader, num_workers=0)
    return build_data(cfg, seed=seed, strong=strong)


def test_the_device_loader_adds_a_strong_view_without_changing_the_weak_one():
    plain, strong = _digits(False), _digits(True)
    b0 = next(plain.train.batches(2))
    b1 = next(strong.train.batches(2))
    assert b0.strong is None and b1.strong is not None
    assert torch.equal(b0.x, b1.x) and torch.equal(b0.index, b1.index)
    assert b1.strong.shape == b1.x.shape and not torch.equal(b1.strong, b1.x)
    again = next(_digits(True).train.batches(2))
    assert torch.equal(again.strong, b1.strong)  # a pure function of (seed, epoch)
    other = next(strong.train.batches(3))
    assert not torch.equal(other.strong, b1.strong)
    assert next(strong.test.batches(0)).strong is None  # never on the test split


def test_the_dataloader_path_yields_the_strong_view_reproducibly():
    a = next(_digits(True, "dataloader").train.batches(1))
    b = next(_digits(True, "dataloader").train.batches(1))
    assert a.strong is not None and a.strong.shape == a.x.shape
    assert torch.equal(a.strong, b.strong) and torch.equal(a.x, b.x)
    plain = next(_digits(False, "dataloader").train.batches(1))
    assert plain.strong is None
    d = _digits(True, "dataloader")
    assert d.train.labels.shape == (d.info.train_size,)
    assert torch.equal(d.train.labels, _digits(False).train.labels.cpu())


def test_the_teacher_also_sees_the_strong_view_when_a_member_reads_it():
    from engine.core.schema import RunConfig
    from engine.train import pick_runtime, plain_teacher_source

    runtime = pick_runtime(RunConfig(device="cpu", threads=1))
    teacher = build_model("resnet8", num_classes=10).eval()
    batch = next(_digits(True).train.batches(0))
    out = plain_teacher_source(teacher, runtime, logits_only=True, strong=True)(batch)
    with torch.no_grad():
        assert torch.allclose(out.strong_logits, teacher(batch.strong))
        assert torch.allclose(out.logits, teacher(batch.x))
    off = plain_teacher_source(teacher, runtime, logits_only=False)(batch)
    assert off.strong_logits is None and off.feats is not None


# ---------------------------------------------------------------- `kdtui methods`
def test_kdtui_methods_lists_every_method_with_reference_head_and_option_defaults():
    import subprocess
    import sys

    code = (
        "import sys; from kdtui.cli import app; "
        "sys.argv = ['kdtui', 'methods']; "
        "app(standalone_mode=False); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "COLUMNS": "200"},
        check=True,
    ).stdout
    assert out.rstrip().endswith("NO-TORCH")  # the CLI stays torch-free
    from engine.core.writing import toml_value

    blocks = {b.split()[0]: b for b in out.split("\n\n") if b.strip()}
    for name, spec in METHODS.items():
        block = blocks[name]
        assert spec.reference in block if spec.reference else "reference: –" in block
        assert ("reused teacher classifier" if spec.head == "teacher" else "student's") in block
        rows = {line.split()[0]: line for line in block.splitlines()[3:] if line.strip()}
        for key, opt in spec.options.items():
            assert toml_value(opt.default) in rows[key], (name, key)
    assert "Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020" in out
    assert "[4.0, 3.0, 5.0, 2.0, 6.0]" in blocks["mlkd"]


def test_every_method_names_its_reference_and_test_time_head():
    for name, spec in METHODS.items():
        assert spec.head in ("student", "teacher")
        assert name == "vanilla" or spec.reference, name


# ---------------------------------------------------------------- for real, through the worker
NEW_METHOD_RUNS = {
    "reviewkd": "warmup = 1",
    "crd": "nce_k = 256",
    "crd-kd": "nce_k = 64\nkd_weight = 1.0",
    "dist": "",
    "dist-ls": "logit_stand = true",
    "mlkd": "",
    "mlkd-ls": "logit_stand = true\ntemperatures = [2.0, 3.0, 5.0, 2.0, 6.0]\nkd_weight = 9.0",
    "kd-ls": "logit_stand = true\ntemperature = 2.0\nkd_weight = 9.0",
    "dkd-ls": "logit_stand = true\ntemperature = 2.0\ntckd_weight = 9.0\nnckd_weight = 72.0",
}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet14.pth"
    torch.save({"model": build_model("resnet14", num_classes=10).state_dict()}, path)
    return path


def _method_toml(case: str, teacher_file, *, epochs: int = 1, extra: str = "") -> str:
    method = case.split("-")[0]
    return f"""
name = "{case}"
[data]
dataset = "digits"
batch_size = 32
[teacher]
arch = "resnet14"
checkpoint = "{teacher_file}"
[student]
arch = "resnet8"
[distill]
method = "{method}"
{NEW_METHOD_RUNS.get(case, "")}
[optim]
epochs = {epochs}
[run]
device = "cpu"
max_steps = 3
log_every = 1
{extra}
"""


@pytest.mark.parametrize("case", list(NEW_METHOD_RUNS))
def test_each_new_method_trains_a_few_steps_on_digits_through_the_worker(case, store, teacher_file):
    from engine.worker import execute

    exp = reading.loads(_method_toml(case, teacher_file))
    (run,) = store.submit(exp)
    result = execute(store, [run.id])[0]
    assert result.status == "done", result.error
    assert result.best_top1 is not None and result.head == exp.method.head == "student"
    if exp.distill.method == "reviewkd":
        assert "train/loss_review" in {m.name for m in store.metrics(run.id)}
    assert result.method == method_label(exp.distill.method, exp.distill.options)
    names = {m.name for m in store.metrics(run.id)}
    assert "train/loss" in names and "test/top1" in names
    if exp.distill.method == "mlkd":
        assert {"train/loss_instance", "train/loss_batch", "train/loss_class"} <= names


def test_mlkd_through_the_teacher_cache_takes_weak_views_from_it(store, teacher_file):
    from engine.worker import execute

    exp = reading.loads(_method_toml("mlkd", teacher_file, extra='teacher_cache = "memory"'))
    (run,) = store.submit(exp)
    assert execute(store, [run.id])[0].status == "done"
    log = (store.run(run.id).path / "log.txt").read_text()
    assert "teacher cache (memory" in log and "every (fresh) strong view" in log


def test_a_resumed_crd_run_restores_its_memory_banks_and_ends_like_an_uninterrupted_one(
    store, teacher_file
):
    from engine.worker import execute
    from tests.test_train import CrashAfterEpoch

    exp = reading.loads(_method_toml("crd", teacher_file, epochs=2))
    (a,) = store.submit(exp)
    (b,) = store.submit(exp)
    assert execute(store, [a.id])[0].status == "done"
    assert execute(store, [b.id], callbacks=CrashAfterEpoch(0))[0].status == "failed"
    saved = torch.load(store.run(b.id).path / "last.pth", weights_only=True)["distiller"]
    assert saved["step"].item() == 3  # 3 steps in epoch 1, banks and Z are in the checkpoint
    assert {"memory.student_bank", "memory.teacher_bank", "memory.z_student", "seed"} <= set(saved)
    assert "order" not in saved  # derived from the labels at construction
    store.requeue(b.id, resume=True)
    assert execute(store, [b.id])[0].status == "done"
    da = torch.load(store.run(a.id).path / "last.pth", weights_only=True)["distiller"]
    db = torch.load(store.run(b.id).path / "last.pth", weights_only=True)["distiller"]
    assert db["step"].item() == 6
    for key in ("memory.student_bank", "memory.teacher_bank", "memory.z_student", "seed"):
        assert torch.allclose(da[key], db[key], atol=1e-6), key
    assert not torch.allclose(saved["memory.student_bank"], db["memory.student_bank"])
    assert store.run(a.id).best_top1 == store.run(b.id).best_top1


def test_the_new_options_leave_the_fingerprints_of_existing_experiments_alone():
    """kd runs submitted before logit_stand and the strong view existed keep grouping with
    new ones: neither key enters the identity at its default; kd+ls is another experiment."""
    from engine.core import fingerprint as fp

    text = """
name = "kd"
[data]
dataset = "digits"
[teacher]
arch = "resnet8"
checkpoint = "t.pth"
[student]
arch = "resnet8"
[distill]
method = "kd"
"""
    ident = fp.identity(reading.loads(text))
    assert "logit_stand" not in ident["distill"] and "strong_view" not in ident["data"]
    ls = fp.identity(reading.loads(text + "logit_stand = true\n"))
    assert ls["distill"]["logit_stand"] is True
    assert fp.digest(ls) != fp.digest(ident)
