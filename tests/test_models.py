"""Model zoo: the FeatureModel contract, sizes, and checkpoint compatibility.

Every registered arch is checked; each is built once per session (building
the big ones dominates the run time) and copied where a test changes it.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from engine.models import (
    ARCHS,
    CheckpointMismatchError,
    FeatureModel,
    Features,
    build_model,
    count_params,
    describe,
    extract_state_dict,
    feature_shapes,
    load_checkpoint_file,
    load_state_dict_report,
    stage_shapes,
)
from engine.models._common import channel_shuffle

NUM_CLASSES = 100

# Measured at num_classes=100: parameters, then (C, H, W) of each stage and of the map the
# classifier pools, for a 32x32 input (64x64 for the tv_ models). The CIFAR counts equal those
# of RepDistiller's definitions, whose state dicts these models load; the stages are its
# `feat[1:-1]` (no stem map, no pooled vector), checked against its code's layout.
EXPECTED: dict[str, tuple[int, list[tuple[int, int, int]], tuple[int, int, int]]] = {
    "resnet8": (83_892, [(16, 32, 32), (32, 16, 16), (64, 8, 8)], (64, 8, 8)),
    "resnet14": (181_108, [(16, 32, 32), (32, 16, 16), (64, 8, 8)], (64, 8, 8)),
    "resnet20": (278_324, [(16, 32, 32), (32, 16, 16), (64, 8, 8)], (64, 8, 8)),
    "resnet32": (472_756, [(16, 32, 32), (32, 16, 16), (64, 8, 8)], (64, 8, 8)),
    "resnet44": (667_188, [(16, 32, 32), (32, 16, 16), (64, 8, 8)], (64, 8, 8)),
    "resnet56": (861_620, [(16, 32, 32), (32, 16, 16), (64, 8, 8)], (64, 8, 8)),
    "resnet110": (1_736_564, [(16, 32, 32), (32, 16, 16), (64, 8, 8)], (64, 8, 8)),
    "resnet8x4": (1_233_540, [(64, 32, 32), (128, 16, 16), (256, 8, 8)], (256, 8, 8)),
    "resnet32x4": (7_433_860, [(64, 32, 32), (128, 16, 16), (256, 8, 8)], (256, 8, 8)),
    "ResNet50": (
        23_705_252,
        [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],
        (2048, 4, 4),
    ),
    # WRN: raw block outputs; the pooled map is the last one after bn1 + ReLU
    "wrn_16_2": (703_284, [(32, 32, 32), (64, 16, 16), (128, 8, 8)], (128, 8, 8)),
    "wrn_40_1": (569_780, [(16, 32, 32), (32, 16, 16), (64, 8, 8)], (64, 8, 8)),
    "wrn_40_2": (2_255_156, [(32, 32, 32), (64, 16, 16), (128, 8, 8)], (128, 8, 8)),
    # VGG: block 0 (64x32x32) is the stem, not a stage
    "vgg8": (3_965_028, [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], (512, 4, 4)),
    "vgg11": (9_277_284, [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], (512, 4, 4)),
    "vgg13": (9_462_180, [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], (512, 4, 4)),
    # MobileNetV2 / ShuffleNetV2: stages end at the last block; the 1x1 conv map is pooled
    "mobilenetv2": (
        2_353_060,
        [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)],
        (1280, 2, 2),
    ),
    "mobilenetv2_0_5": (
        812_836,
        [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
        (1280, 2, 2),
    ),
    "shufflenetv1": (949_258, [(240, 16, 16), (480, 8, 8), (960, 4, 4)], (960, 4, 4)),
    "shufflenetv2": (1_355_528, [(116, 16, 16), (232, 8, 8), (464, 4, 4)], (1024, 4, 4)),
    "shufflenetv2_1_5": (2_580_548, [(176, 16, 16), (352, 8, 8), (704, 4, 4)], (1024, 4, 4)),
    "tv_resnet18": (
        11_227_812,
        [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)],
        (512, 2, 2),
    ),
    "tv_resnet34": (
        21_335_972,
        [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)],
        (512, 2, 2),
    ),
    "tv_resnet50": (
        23_712_932,
        [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)],
        (2048, 2, 2),
    ),
    # SimKD's ImageNet split: f1..f4 end at /4 .. /32 (24, 32, 96, 320 channels)
    "tv_mobilenet_v2": (
        2_351_972,
        [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)],
        (1280, 2, 2),
    ),
}

# Sizes in millions as published for CIFAR-100 (CRD / SimKD tables; the
# MobileNetV2 there is the width-0.5 net, ShuffleV2 is net_size 1).
PUBLISHED_M = {
    "ResNet50": 23.71,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "vgg13": 9.46,
    "vgg8": 3.96,
    "mobilenetv2_0_5": 0.81,
    "shufflenetv1": 0.95,
    "shufflenetv2": 1.36,
}

# torchvision's documented ImageNet (1000-class) parameter counts.
TORCHVISION_1000 = {
    "tv_resnet18": 11_689_512,
    "tv_resnet34": 21_797_672,
    "tv_resnet50": 25_557_032,
    "tv_mobilenet_v2": 3_504_872,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny batches gain nothing from intra-op threads, and on small shared
    VMs OpenMP threads can make them many times slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def input_size(arch: str) -> int:
    return 64 if arch.startswith("tv_") else 32


@functools.cache
def _cached(arch: str) -> FeatureModel:
    torch.manual_seed(0)
    return build_model(arch, NUM_CLASSES).eval()


@pytest.fixture
def model(arch: str) -> FeatureModel:
    m = _cached(arch)
    m.eval()
    return m


def batch(arch: str, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    s = input_size(arch)
    return torch.randn(n, 3, s, s, generator=g)


def scramble(m: nn.Module, seed: int = 0) -> nn.Module:
    """Non-default BN statistics and affine terms, so a load that drops them shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                mod.num_batches_tracked.fill_(123)
    return m


def test_every_arch_has_an_expectation():
    assert set(EXPECTED) == set(ARCHS)


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_contract(arch, model):
    x = batch(arch)
    with torch.no_grad():
        logits = model(x)
        feats, logits_all = model.forward_all(x)
        feats2 = model.forward_features(x)
        via_head = model.forward_head(feats2.final)
    assert isinstance(feats, Features)
    assert logits.shape == (2, NUM_CLASSES)
    assert isinstance(model.head, nn.Linear)
    assert model.head.out_features == NUM_CLASSES
    assert all(f.dim() == 4 and f.shape[0] == 2 for f in [*feats.stages, feats.final])
    assert feats.final.shape[1] == model.head.in_features
    torch.testing.assert_close(logits, via_head, rtol=0, atol=0)
    torch.testing.assert_close(logits_all, logits, rtol=0, atol=0)
    # the forward stays a pure function of its input (no in-place damage)
    torch.testing.assert_close(model(x), logits, rtol=0, atol=0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_feature_shapes_and_params(arch, model):
    params, stages, final = EXPECTED[arch]
    s = input_size(arch)
    assert feature_shapes(model, (1, 3, s, s)) == Features(stages, final)
    assert stage_shapes(model, (1, 3, s, s)) == stages
    assert count_params(model) == params
    if arch in PUBLISHED_M:
        published = PUBLISHED_M[arch] * 1e6
        assert abs(params - published) <= 0.005 * published, (params, published)
    if arch in TORCHVISION_1000:
        # the same net with a 1000-way head is torchvision's documented size
        extra = (1000 - NUM_CLASSES) * (model.head.in_features + 1)
        assert params + extra == TORCHVISION_1000[arch]


# Where the references return pre-activation maps (RepDistiller's preact=True, mdistiller's
# preact_feats), the stage is the ReLU of the pre-activation map; WRN's are BN outputs
# before the next ReLU; the others return their ordinary stages.
RELU_OF_PREACT = {"resnet8", "resnet32x4", "ResNet50", "vgg8", "vgg13", "shufflenetv1"}
PREACT_IS_STAGE = {"mobilenetv2_0_5", "tv_resnet18", "tv_mobilenet_v2"}


@pytest.mark.parametrize("arch", sorted(RELU_OF_PREACT | PREACT_IS_STAGE | {"wrn_16_2"}))
def test_preact_stages(arch, model):
    x = batch(arch)
    with torch.no_grad():
        post = model.forward_features(x)
        pre = model.forward_features(x, preact=True)
        logits = model(x)
    assert [p.shape for p in pre.stages] == [p.shape for p in post.stages]
    torch.testing.assert_close(pre.final, post.final, rtol=0, atol=0)
    if arch in RELU_OF_PREACT:
        assert all((p < 0).any() for p in pre.stages)  # really before the ReLU
        for p, q in zip(pre.stages, post.stages):
            torch.testing.assert_close(torch.relu(p), q, rtol=0, atol=0)
    elif arch in PREACT_IS_STAGE:
        for p, q in zip(pre.stages, post.stages):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    else:  # WRN: the BN that opens the next block group (the last: the final bn1)
        with torch.no_grad():
            expected = [
                model.block2.layer[0].bn1(post.stages[0]),
                model.block3.layer[0].bn1(post.stages[1]),
                model.bn1(post.stages[2]),
            ]
        for p, q in zip(pre.stages, expected):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    with torch.no_grad():  # asking for them changes nothing else
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)


def test_shufflenetv2_preact_is_the_references_unshuffled_concatenation():
    m = _cached("shufflenetv2")
    x = batch("shufflenetv2")
    with torch.no_grad():
        pre = m.forward_features(x, preact=True).stages[-1]
        post = m.forward_features(x).stages[-1]
        unit = m.layer3[-1]
        inp = m.layer3[:-1](m.layer2(m.layer1(torch.relu(m.bn1(m.conv1(x))))))
        half = inp.shape[1] // 2
        branch = unit.bn3(
            unit.conv3(unit.bn2(unit.conv2(torch.relu(unit.bn1(unit.conv1(inp[:, half:]))))))
        )
    torch.testing.assert_close(pre, torch.cat([inp[:, :half], branch], 1), rtol=0, atol=0)
    torch.testing.assert_close(channel_shuffle(torch.relu(pre), 2), post, rtol=0, atol=0)


def test_wrn_preact_runs_no_batchnorm_twice_in_training():
    """The pre-activation maps are the BN outputs the forward uses anyway: running stats move
    exactly as in an ordinary training step."""
    torch.manual_seed(0)
    a = build_model("wrn_16_2", 10).train()
    b = copy.deepcopy(a)
    x = batch("wrn_16_2", 4)
    a.forward_features(x)
    b.forward_features(x, preact=True)
    for (name, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(u, v), name


@pytest.mark.parametrize("arch", list(ARCHS))
def test_backward_reaches_every_parameter(arch):
    torch.manual_seed(0)
    m = copy.deepcopy(_cached(arch)).train()
    feats, logits = m.forward_all(batch(arch))
    (logits.square().mean() + sum(f.mean() for f in feats.stages)).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("arch", list(ARCHS))
def test_repdistiller_checkpoint_loads_and_reproduces_logits(arch, tmp_path):
    src = scramble(copy.deepcopy(_cached(arch)))
    path = tmp_path / f"{arch}_best.pth"
    # the layout RepDistiller/SimKD's train_teacher.py saves
    torch.save(
        {
            "epoch": 240,
            "model": src.state_dict(),
            "best_acc": torch.tensor(79.42),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.05, "params": [0, 1]}]},
        },
        path,
    )
    torch.manual_seed(123)
    dst = build_model(arch, NUM_CLASSES)
    assert load_checkpoint_file(path, dst) is dst
    src.eval()
    dst.eval()
    x = batch(arch)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    loaded = dst.state_dict()
    for k, v in src.state_dict().items():
        assert torch.equal(loaded[k], v), k


def _small_state(arch: str = "resnet8", num_classes: int = NUM_CLASSES) -> dict:
    torch.manual_seed(0)
    return scramble(build_model(arch, num_classes)).state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="bare"),
        pytest.param(lambda sd: {"model": sd}, id="model-key"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict-key"),
        pytest.param(lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, id="module."),
        pytest.param(
            lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()}, id="ddp+compile"
        ),
    ],
)
def test_accepted_checkpoint_layouts(wrap, tmp_path):
    sd = _small_state()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(sd), path)
    m = build_model("resnet8", NUM_CLASSES)
    load_checkpoint_file(path, m)
    loaded = m.state_dict()
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k


def test_missing_num_batches_tracked_is_tolerated():
    # files from PyTorch < 0.4.1 have no BN step counters
    sd = {k: v for k, v in _small_state().items() if not k.endswith("num_batches_tracked")}
    m = build_model("resnet8", NUM_CLASSES)
    load_state_dict_report(m, {"model": sd})
    assert torch.equal(m.state_dict()["bn1.running_var"], sd["bn1.running_var"])


def test_wrong_depth_names_missing_keys(tmp_path):
    path = tmp_path / "resnet8.pth"
    torch.save({"model": _small_state("resnet8")}, path)
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint_file(path, build_model("resnet14", NUM_CLASSES))
    msg = str(e.value)
    assert "missing" in msg and "layer1.1.conv1.weight" in msg
    assert str(path) in msg and "does not fit resnet14" in msg
    assert "layer1.1.conv1.weight" in e.value.missing
    assert e.value.unexpected == []


def test_our_checkpoints_name_their_arch_in_the_error():
    with pytest.raises(CheckpointMismatchError, match="the file says arch 'resnet14'"):
        load_state_dict_report(
            build_model("resnet8", NUM_CLASSES),
            {"model": _small_state("resnet14"), "arch": "resnet14", "epoch": 3},
        )


def test_deeper_file_into_shallower_model_names_unexpected_keys():
    with pytest.raises(
        CheckpointMismatchError, match=r"unexpected key\(s\): layer1\.1\.conv1\.weight"
    ):
        load_state_dict_report(build_model("resnet8", NUM_CLASSES), _small_state("resnet14"))


def test_other_family_names_both_sides():
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_dict_report(build_model("resnet8", NUM_CLASSES), _small_state("wrn_16_2"))
    msg = str(e.value)
    assert "missing key(s)" in msg and "unexpected key(s)" in msg
    assert "block1.layer.0.conv1.weight" in msg
    assert "more)" in msg  # long lists are cut short


def test_class_count_mismatch_names_shapes():
    m = build_model("resnet8", NUM_CLASSES)
    before = m.state_dict()["conv1.weight"].clone()
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_dict_report(m, {"model": _small_state("resnet8", num_classes=10)})
    msg = str(e.value)
    assert "fc.weight checkpoint [10, 64] vs model [100, 64]" in msg
    assert "num_classes" in msg
    # nothing was half-loaded
    assert torch.equal(m.state_dict()["conv1.weight"], before)


def test_not_a_checkpoint():
    m = build_model("resnet8", NUM_CLASSES)
    with pytest.raises(ValueError, match="no state dict found"):
        load_state_dict_report(m, {"epoch": 3, "acc": 1.0})
    with pytest.raises(ValueError, match="no state dict found"):
        extract_state_dict([1, 2, 3])


class _Pickled:  # a Python object weights_only loading must refuse
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _small_state(), "extra": _Pickled()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint_file(path, build_model("resnet8", NUM_CLASSES))


# ---------------------------------------------------------------- names


NAMES = {
    "resnet32x4": [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.0.downsample.0.weight",  # stem 32 -> 64 channels
        "layer1.0.downsample.1.running_var",
        "layer2.0.downsample.0.weight",
        "layer3.4.conv2.weight",
        "fc.weight",
        "fc.bias",
    ],
    "resnet56": ["layer2.0.downsample.0.weight", "layer3.8.bn2.bias", "fc.weight"],
    # RepDistiller's resnetv2.py: `shortcut` projections, `linear` head
    "ResNet50": [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn3.weight",
        "layer1.0.shortcut.0.weight",  # 64 -> 256 channels at stride 1
        "layer1.0.shortcut.1.running_mean",
        "layer2.0.shortcut.0.weight",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.bias",
        "linear.weight",
        "linear.bias",
    ],
    "wrn_40_2": [
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.conv1.weight",
        "block1.layer.0.convShortcut.weight",
        "block3.layer.5.conv2.weight",
        "bn1.running_var",
        "fc.weight",
    ],
    "vgg13": [
        "block0.0.weight",
        "block0.0.bias",
        "block0.1.running_mean",
        "block0.3.weight",
        "block0.4.weight",
        "block4.4.bias",
        "classifier.weight",
    ],
    "mobilenetv2_0_5": [
        "conv1.0.weight",
        "conv1.1.weight",
        "blocks.0.0.conv.0.weight",
        "blocks.1.1.conv.3.weight",
        "blocks.6.0.conv.7.running_var",
        "conv2.0.weight",
        "conv2.1.bias",
        "classifier.0.weight",
    ],
    "shufflenetv1": [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn3.running_mean",
        "layer3.3.conv3.weight",
        "linear.weight",
    ],
    "shufflenetv2": [
        "conv1.weight",
        "layer1.0.conv5.weight",
        "layer1.0.bn5.weight",
        "layer1.3.conv3.weight",
        "layer2.7.bn3.bias",
        "conv2.weight",
        "bn2.weight",
        "linear.weight",
    ],
    "tv_resnet50": [
        "conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer4.2.conv3.weight",
        "fc.weight",
    ],
    "tv_mobilenet_v2": ["features.0.0.weight", "features.18.1.bias", "classifier.1.weight"],
}
ABSENT = {
    "ResNet50": ["layer1.1.shortcut.0.weight", "fc.weight", "conv1.bias", "layer4.3.conv1.weight"],
    # RepDistiller's resnet convs have no bias; narrow nets keep layer1 unprojected
    "resnet56": ["conv1.bias", "layer1.0.conv1.bias", "layer1.0.downsample.0.weight"],
    # wrn_40_1's first block keeps its width: no shortcut conv there
    "wrn_40_1": ["block1.layer.0.convShortcut.weight", "block1.layer.0.conv1.bias"],
    "wrn_40_2": ["block1.layer.1.convShortcut.weight"],
    "mobilenetv2_0_5": ["classifier.weight", "conv1.0.bias"],
    "shufflenetv2": ["layer1.0.conv1.bias"],
}


@pytest.mark.parametrize("arch", sorted(set(NAMES) | set(ABSENT)))
def test_published_parameter_names(arch):
    keys = _cached(arch).state_dict()
    for name in NAMES.get(arch, []):
        assert name in keys, name
    for name in ABSENT.get(arch, []):
        assert name not in keys, name


def test_repdistiller_shapes_spot_checks():
    sd = _cached("shufflenetv1").state_dict()
    # first unit reads the 24-channel stem ungrouped; its branch makes 240-24 channels
    assert sd["layer1.0.conv1.weight"].shape == (54, 24, 1, 1)
    assert sd["layer1.0.conv3.weight"].shape == (216, 18, 1, 1)
    assert sd["layer2.0.conv1.weight"].shape == (60, 80, 1, 1)
    sd = _cached("mobilenetv2_0_5").state_dict()
    assert sd["conv1.0.weight"].shape == (16, 3, 3, 3)
    assert sd["blocks.0.0.conv.0.weight"].shape == (16, 16, 1, 1)  # t=1 still has the 1x1
    assert sd["classifier.0.weight"].shape == (100, 1280)
    sd = _cached("vgg8").state_dict()
    assert sd["block0.0.bias"].shape == (64,)  # VGG convs keep their bias
    sd = _cached("ResNet50").state_dict()
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # bottleneck width 128
    assert sd["layer2.0.shortcut.0.weight"].shape == (512, 256, 1, 1)
    assert sd["linear.weight"].shape == (100, 2048)


# ---------------------------------------------------------------- misc


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_model("resnet32x5", NUM_CLASSES)
    msg = str(e.value)
    assert "resnet32x4" in msg and "did you mean" in msg
    assert all(a in msg for a in ARCHS)


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_2", "vgg8", "shufflenetv2", "tv_resnet18"])
def test_num_classes_is_honoured(arch):
    m = build_model(arch, 10).eval()
    with torch.no_grad():
        assert m(batch(arch)).shape == (2, 10)


def test_describe():
    d = describe("resnet8x4")
    assert d["params"] == EXPECTED["resnet8x4"][0]
    assert d["stages"] == EXPECTED["resnet8x4"][1] and d["final"] == (256, 8, 8)
    assert d["head"] == "fc" and d["head_in"] == 256
    d = describe("vgg8", num_classes=10, input_size=64)  # 64x64 adds RepDistiller's 4th pool
    assert d["stages"][-2:] == [(512, 8, 8), (512, 4, 4)]
    assert d["params"] == EXPECTED["vgg8"][0] - 90 * 513
    assert d["final_is_last_stage"] is True
    d = describe("mobilenetv2_0_5")
    assert d["stages"][-1] == (160, 2, 2) and d["final"] == (1280, 2, 2) == (d["head_in"], 2, 2)
    assert d["final_is_last_stage"] is False
    d = describe("wrn_16_2")  # same shape, but after the final BN-ReLU
    assert d["final"] == d["stages"][-1] and d["final_is_last_stage"] is False


def test_channels_last_matches():
    m = copy.deepcopy(_cached("shufflenetv2"))
    x = batch("shufflenetv2")
    with torch.no_grad():
        ref = m(x)
        m = m.to(memory_format=torch.channels_last)
        out = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_torchvision_weights_keep_a_fresh_head_for_other_class_counts():
    class FakeWeights:  # stands in for a torchvision WeightsEnum member, no download
        def __init__(self, state):
            self.state = state

        def get_state_dict(self, progress=True):
            return self.state

    from engine.models.torchvision_models import tv_mobilenet_v2

    torch.manual_seed(0)
    imagenet = scramble(tv_mobilenet_v2(num_classes=1000)).state_dict()
    m = tv_mobilenet_v2(num_classes=NUM_CLASSES, weights=FakeWeights(imagenet))
    assert torch.equal(
        m.state_dict()["features.3.conv.1.1.running_var"],
        imagenet["features.3.conv.1.1.running_var"],
    )
    assert m.classifier[1].weight.shape == (NUM_CLASSES, 1280)
