"""Methods pair what the references pair, on every teacher -> student pair of the published
CIFAR-100 tables (CRD / DKD / SimKD; "MobileNetV2" there is `mobilenetv2_0_5`).

The expected shapes are written from the reference code's layouts (RepDistiller's and
mdistiller's `feat` lists, SimKD's `feat[-2]`), not read back from our models: AT pairs
`feat[1:-1]` index-wise, FitNet's `hint_layer = 2` is the second stage after the stem, and
SimKD projects the student's `feat_s[-2]` onto the teacher's `feat_t[-2]`. The losses are
checked against maps computed straight from the models' submodules, the way the reference
forwards build them.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.data import Batch
from engine.distill.base import TeacherOut, build_distiller
from engine.models import build_model

R_NARROW = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
R_X4 = [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
R50 = [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]
WRN_2 = [(32, 32, 32), (64, 16, 16), (128, 8, 8)]
WRN_40_1 = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
VGG = [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]  # block 0 (64x32x32) is the stem
MBV2 = [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]  # not the 1280-channel 1x1 conv
SHV1 = [(240, 16, 16), (480, 8, 8), (960, 4, 4)]
SHV2 = [(116, 16, 16), (232, 8, 8), (464, 4, 4)]  # not the 1024-channel 1x1 conv

# teacher, student, teacher stages, student stages, FitNet's regressor conv for hint_layer 2
# (ConvReg: equal heights -> 1x1 conv; student half the teacher's -> 4x4 stride-2 transposed)
PAIRS = [
    ("resnet56", "resnet20", R_NARROW, R_NARROW, nn.Conv2d),
    ("resnet110", "resnet32", R_NARROW, R_NARROW, nn.Conv2d),
    ("resnet32x4", "resnet8x4", R_X4, R_X4, nn.Conv2d),
    ("wrn_40_2", "wrn_16_2", WRN_2, WRN_2, nn.Conv2d),
    ("wrn_40_2", "wrn_40_1", WRN_2, WRN_40_1, nn.Conv2d),
    ("vgg13", "vgg8", VGG, VGG, nn.Conv2d),
    ("vgg13", "mobilenetv2_0_5", VGG, MBV2, nn.Conv2d),
    ("ResNet50", "mobilenetv2_0_5", R50, MBV2, nn.ConvTranspose2d),
    ("ResNet50", "vgg8", R50, VGG, nn.ConvTranspose2d),
    ("resnet32x4", "shufflenetv1", R_X4, SHV1, nn.ConvTranspose2d),
    ("resnet32x4", "shufflenetv2", R_X4, SHV2, nn.ConvTranspose2d),
    ("wrn_40_2", "shufflenetv1", WRN_2, SHV1, nn.ConvTranspose2d),
]
IDS = [f"{t}->{s}" for t, s, *_ in PAIRS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@functools.cache
def model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, 100)


def pooled(shape, size):
    return (shape[0], *size)


@pytest.mark.parametrize("teacher, student, t_stages, s_stages, reg", PAIRS, ids=IDS)
def test_at_pairs_the_references_stage_maps(teacher, student, t_stages, s_stages, reg):
    d = build_distiller("at", model(student), model(teacher), {}, num_classes=100)
    # every published pair has as many stages on both sides: zip(feat_s[1:-1], feat_t[1:-1])
    assert len(t_stages) == len(s_stages)
    assert d.pairs == [(k, k) for k in range(len(t_stages))]
    # maps of different sizes meet at the smaller one (the references' adaptive pooling)
    assert d.sizes == [
        (min(t[1], s[1]), min(t[2], s[2])) for t, s in zip(t_stages, s_stages, strict=True)
    ]
    index = build_distiller(
        "at", model(student), model(teacher), {"pairs": "index"}, num_classes=100
    )
    assert index.pairs == d.pairs


@pytest.mark.parametrize("teacher, student, t_stages, s_stages, reg", PAIRS, ids=IDS)
def test_fitnet_default_hint_is_hint_layer_2(teacher, student, t_stages, s_stages, reg):
    d = build_distiller("fitnet", model(student), model(teacher), {}, num_classes=100)
    hint, guided = t_stages[1], s_stages[1]  # feat[2] of lists that start with the stem
    assert (d.t_stage, d.s_stage) == (1, 1)
    conv = d.regressor[0]
    assert type(conv) is reg
    assert (conv.in_channels, conv.out_channels) == (guided[0], hint[0])
    if reg is nn.Conv2d:
        assert conv.kernel_size == (1, 1) and conv.stride == (1, 1)
    else:  # upsamples the student map to the teacher's
        assert (conv.kernel_size, conv.stride, conv.padding) == ((4, 4), (2, 2), (1, 1))
    with torch.no_grad():
        out = d.regressor.eval()(torch.zeros(2, *guided))
    assert tuple(out.shape[1:]) == hint


@pytest.mark.parametrize("teacher, student, t_stages, s_stages, reg", PAIRS, ids=IDS)
def test_simkd_default_projector_is_feat_minus_2(teacher, student, t_stages, s_stages, reg):
    d = build_distiller("simkd", model(student), model(teacher), {}, num_classes=100)
    s_in, t_out = s_stages[-1], t_stages[-1]  # SimKD's feat_s[-2], feat_t[-2]
    proj = d.projectors[0]
    assert (proj[0].in_channels, proj[6].out_channels) == (s_in[0], t_out[0])
    assert [(p.teacher, p.student) for p in d.pairs] == [(len(t_stages) - 1, len(s_stages) - 1)]
    assert d.sizes == [(min(t_out[1], s_in[1]), min(t_out[2], s_in[2]))]


@pytest.mark.parametrize(
    "student, channels", [("mobilenetv2_0_5", 160), ("shufflenetv2", 464), ("mobilenetv2", 320)]
)
def test_simkd_defaults_project_the_last_block_of_mobile_students(student, channels):
    """The user composing from defaults gets SimKD's method: no hand-set projector pair."""
    d = build_distiller("simkd", model(student), model("resnet32x4"), {}, num_classes=100)
    assert d.projectors[0][0].in_channels == channels
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert d.eval().forward_test(x).shape == (2, 100)


# ---------------------------------------------------------------- losses from the reference maps


def reference_maps(arch: str, m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """RepDistiller's feat[1:-1] for this net, built from its submodules as its forward does."""
    if arch.startswith("vgg"):
        f0 = F.relu(m.block0(x))  # f0: the stem, skipped
        f1 = F.relu(m.block1(F.max_pool2d(f0, 2)))
        f2 = F.relu(m.block2(F.max_pool2d(f1, 2)))
        f3 = F.relu(m.block3(F.max_pool2d(f2, 2)))
        return [f1, f2, f3, F.relu(m.block4(f3))]  # no pool before block 4 at 32x32
    if arch.startswith("mobilenetv2"):
        b = m.blocks
        f1 = b[1](b[0](m.conv1(x)))
        f2 = b[2](f1)
        f3 = b[4](b[3](f2))
        return [f1, f2, f3, b[6](b[5](f3))]  # conv2 (1x1 to 1280) comes after
    if arch.startswith("wrn"):
        f1 = m.block1(m.conv1(x))
        f2 = m.block2(f1)
        return [f1, f2, m.block3(f2)]  # raw: bn1 + ReLU come after
    stem = F.relu(m.bn1(m.conv1(x)))
    layers = [m.layer1, m.layer2, m.layer3] + ([m.layer4] if hasattr(m, "layer4") else [])
    maps = []
    for layer in layers:
        stem = layer(stem)
        maps.append(stem)
    return maps  # ShuffleNetV2: its conv2 (1x1 to 1024) comes after


def at_by_hand(s_maps, t_maps) -> float:
    total = 0.0
    for fs, ft in zip(s_maps, t_maps, strict=True):
        h = min(fs.shape[2], ft.shape[2])
        fs, ft = F.adaptive_avg_pool2d(fs, h), F.adaptive_avg_pool2d(ft, h)
        a_s = fs.pow(2).mean(1).flatten(1)
        a_t = ft.pow(2).mean(1).flatten(1)
        a_s = a_s / a_s.norm(dim=1, keepdim=True)
        a_t = a_t / a_t.norm(dim=1, keepdim=True)
        total += (a_s - a_t).pow(2).mean().item()
    return total


@pytest.mark.parametrize(
    "teacher, student",
    [
        ("vgg13", "mobilenetv2_0_5"),  # no VGG block 0, MobileNetV2's 160-channel block
        ("wrn_40_2", "shufflenetv1"),  # WRN's raw last block
        ("resnet32x4", "shufflenetv2"),  # ShuffleNetV2's 464-channel layer3
        ("vgg13", "vgg8"),
    ],
)
def test_at_loss_equals_the_formula_on_the_reference_maps(teacher, student):
    t, s = model(teacher).eval(), model(student).eval()
    d = build_distiller("at", s, t, {"at_weight": 1.0, "ce_weight": 0.0}, num_classes=100)
    # the student in train mode: batch statistics keep its maps at unit scale (at init, on
    # running statistics, MobileNetV2's last maps shrink to ~1e-7, where F.normalize's eps,
    # ours and the references' alike, stops normalising); the hand maps see the same mode
    d.train()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t_out = TeacherOut(*t.forward_all(x))
        _, losses = d.forward_train(Batch.of(x, torch.tensor([0, 1, 2, 3])), t_out)
        expected = at_by_hand(reference_maps(student, s, x), reference_maps(teacher, t, x))
    assert losses["at"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "teacher, student",
    [
        ("vgg13", "mobilenetv2_0_5"),  # hint 256x8x8, guided 16x8x8 (not 48x4x4)
        (
            "ResNet50",
            "mobilenetv2_0_5",
        ),  # hint 512x16x16, guided 16x8x8 through ConvReg's upsampling
        ("wrn_40_2", "wrn_16_2"),
    ],
)
def test_fitnet_loss_equals_the_formula_on_the_reference_hint(teacher, student):
    t, s = model(teacher).eval(), model(student).eval()
    d = build_distiller("fitnet", s, t, {"hint_weight": 100.0}, num_classes=100).train()
    conv, bn, _ = d.regressor
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    nn.init.constant_(bn.bias, 0.3)  # constant input -> BN output = its bias -> ReLU: 0.3
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t_out = TeacherOut(*t.forward_all(x))
        _, losses = d.forward_train(Batch.of(x, torch.tensor([0, 1])), t_out)
        hint = reference_maps(teacher, t, x)[1]  # feat_t[hint_layer = 2]
    assert losses["hint"].item() == pytest.approx(
        100.0 * (0.3 - hint).pow(2).mean().item(), rel=1e-5
    )


def test_simkd_matches_the_map_the_wrn_teachers_classifier_pools():
    """SimKD reuses the teacher's classifier, so the projection's target is the map that
    classifier pools: for WRN the last block after bn1 + ReLU (documented difference: RepDistiller's
    feature list holds the raw block, and SimKD's code has no WRN)."""
    t, s = model("wrn_40_2").eval(), model("wrn_16_2")
    d = build_distiller("simkd", s, t, {}, num_classes=100).train()
    for m in d.projectors[0].modules():  # projector -> constant 0.5 map
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.weight)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.bias, 0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t_out = TeacherOut(*t.forward_all(x))
        _, losses = d.forward_train(Batch.of(x, torch.tensor([0, 1])), t_out)
        target = F.relu(t.bn1(reference_maps("wrn_40_2", t, x)[-1]))
    assert losses["feat"].item() == pytest.approx((0.5 - target).pow(2).mean().item(), rel=1e-5)


def test_all_layer_projectors_use_the_stages():
    d = build_distiller(
        "simkd",
        model("mobilenetv2_0_5"),
        model("resnet32x4"),
        {"projectors": "all"},
        num_classes=100,
    )
    assert [(p.teacher, p.student) for p in d.pairs] == [(0, 0), (1, 1), (2, 3)]
    assert [proj[0].in_channels for proj in d.projectors] == [12, 16, 160]


def test_convreg_refuses_a_student_map_under_half_the_teachers_and_pool_takes_it():
    with pytest.raises(
        ValueError, match=r"4x4 student map to a 16x16 teacher map.*regressor = 'pool'"
    ):
        build_distiller(
            "fitnet",
            model("mobilenetv2_0_5"),
            model("resnet32x4"),
            {"hint_stage": 1, "guided_stage": 2},
            num_classes=100,
        )
    d = build_distiller(
        "fitnet",
        model("mobilenetv2_0_5"),
        model("resnet32x4"),
        {"hint_stage": 1, "guided_stage": 2, "regressor": "pool"},
        num_classes=100,
    )
    assert d.size == (4, 4) and d.regressor[0].kernel_size == (1, 1)
