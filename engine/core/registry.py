"""Names of architectures, methods and data sets, torch-free.

The app and `engine.core.schema` validate and list choices from these tables
without importing torch; the worker resolves the dotted paths lazily.
A new method is one file in `engine/distill/` plus one entry in METHODS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# name -> "module:factory"; every factory takes num_classes and returns a
# model following the contract in engine/models/base.py.
ARCHS: dict[str, str] = {
    # CIFAR ResNets (RepDistiller/SimKD naming)
    "resnet8": "engine.models.resnet:resnet8",
    "resnet14": "engine.models.resnet:resnet14",
    "resnet20": "engine.models.resnet:resnet20",
    "resnet32": "engine.models.resnet:resnet32",
    "resnet44": "engine.models.resnet:resnet44",
    "resnet56": "engine.models.resnet:resnet56",
    "resnet110": "engine.models.resnet:resnet110",
    "resnet8x4": "engine.models.resnet:resnet8x4",
    "resnet32x4": "engine.models.resnet:resnet32x4",
    # RepDistiller's CIFAR ResNet50 (bottleneck; `ResNet50` in its resnetv2.py, not 6n+2)
    "ResNet50": "engine.models.resnetv2:resnet50_cifar",
    # Wide ResNets
    "wrn_16_2": "engine.models.wrn:wrn_16_2",
    "wrn_40_1": "engine.models.wrn:wrn_40_1",
    "wrn_40_2": "engine.models.wrn:wrn_40_2",
    # VGG with BN
    "vgg8": "engine.models.vgg:vgg8",
    "vgg11": "engine.models.vgg:vgg11",
    "vgg13": "engine.models.vgg:vgg13",
    # Mobile architectures
    "mobilenetv2": "engine.models.mobilenetv2:mobilenetv2",
    "mobilenetv2_0_5": "engine.models.mobilenetv2:mobilenetv2_0_5",
    "shufflenetv1": "engine.models.shufflenetv1:shufflenetv1",
    "shufflenetv2": "engine.models.shufflenetv2:shufflenetv2",
    "shufflenetv2_1_5": "engine.models.shufflenetv2:shufflenetv2_1_5",
    # torchvision ImageNet models (for `folder` data)
    "tv_resnet18": "engine.models.torchvision_models:tv_resnet18",
    "tv_resnet34": "engine.models.torchvision_models:tv_resnet34",
    "tv_resnet50": "engine.models.torchvision_models:tv_resnet50",
    "tv_mobilenet_v2": "engine.models.torchvision_models:tv_mobilenet_v2",
}

DATASETS: dict[str, str] = {
    "cifar10": "CIFAR-10 via torchvision (32x32, 10 classes)",
    "cifar100": "CIFAR-100 via torchvision (32x32, 100 classes)",
    "digits": "scikit-learn's bundled 8x8 digits at 3x32x32 (offline, 10 classes)",
    "synthetic": "random class-conditioned tensors (offline, for tests)",
    "folder": "torchvision ImageFolder: root/train/<class>/*, root/val/<class>/*",
}


@dataclass(frozen=True)
class Option:
    """One named, typed, documented hyperparameter of a method."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    # extra check for structured values; returns an error message or None
    check: Callable[[Any], str | None] | None = None
    # added to an existing method with a default that is its behaviour from before: run
    # fingerprints leave the option out at that default, so older runs still group with new
    neutral: bool = False


@dataclass(frozen=True)
class MethodSpec:
    name: str
    impl: str  # "module:Class", a Distiller subclass
    summary: str
    head: str  # which classifier produces test-time logits: "student" | "teacher"
    needs_teacher: bool
    # what the loss reads from the teacher: "logits" methods can use the
    # exact teacher cache, "features" methods need the full forward pass, "preact"
    # methods its pre-activation stage maps (`forward_features(x, preact=True)`)
    teacher_outputs: str = "features"
    options: dict[str, Option] = field(default_factory=dict)
    reference: str = ""  # the paper, in one line: authors, title, venue
    # trains on a second, strongly augmented view of each image (`[data] strong_view`)
    strong_view: bool = False


def _check_projectors(value: Any) -> str | None:
    if isinstance(value, str):
        return (
            None if value in ("last", "all") else "must be 'last', 'all' or a list of stage pairs"
        )
    if not isinstance(value, list) or not value:
        return "must be 'last', 'all' or a non-empty list of stage pairs"
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            return f"item {i} must be a table like {{stage = -1, weight = 1.0}}"
        unknown = set(item) - {"stage", "teacher", "student", "weight"}
        if unknown:
            return f"item {i} has unknown key(s) {sorted(unknown)}; use stage, teacher, student, weight"
        if "stage" not in item and not ("teacher" in item and "student" in item):
            return f"item {i} needs 'stage' (same index in both models) or 'teacher' and 'student'"
        for k in ("stage", "teacher", "student"):
            if k in item and (not isinstance(item[k], int) or isinstance(item[k], bool)):
                return (
                    f"item {i}: '{k}' must be an integer stage index (negative counts from the end)"
                )
        w = item.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            return f"item {i}: 'weight' must be a positive number"
    return None


def logit_stand_option(published: str) -> Option:
    """Logit standardization (Sun et al., CVPR 2024), an option of every logit method."""
    return Option(
        False,
        "logit standardization (Sun et al., CVPR 2024): z-score the teacher's and the "
        "student's logits per sample before the softened terms, so the temperature becomes "
        f"the base temperature; shown as '+ls' after the method. {published}",
        choices=(False, True),
        neutral=True,
    )


KD_OPTIONS = {
    "ce_weight": Option(0.1, "weight of cross-entropy with the labels", min=0.0),
    "kd_weight": Option(0.9, "weight of T^2 * KL(teacher || student)", min=0.0),
    "temperature": Option(4.0, "softmax temperature T", min=1e-3),
    "logit_stand": logit_stand_option(
        "Published CIFAR-100 setting: temperature = 2, kd_weight = 9 (ce_weight 0.1)."
    ),
}

SIMKD_OPTIONS = {
    "loss": Option(
        "l2",
        "l2: MSE between projected student map and teacher map; kl: KL between teacher logits "
        "and student logits through the reused teacher classifier; l2+kl: both",
        choices=("l2", "kl", "l2+kl"),
    ),
    "feat_weight": Option(1.0, "weight of the feature (l2) loss", min=0.0),
    "kl_weight": Option(1.0, "weight of the logit KL loss (loss = kl or l2+kl)", min=0.0),
    "temperature": Option(4.0, "softmax temperature of the kl loss", min=1e-3),
    "factor": Option(
        2, "projector bottleneck factor f (t/f channels inside)", choices=(1, 2, 4, 8)
    ),
    "projectors": Option(
        "last",
        "'last' (SimKD: the student's last stage, SimKD's feat_s[-2], into the map the "
        "teacher's classifier pools), 'all' (one projector per aligned stage pair, equal "
        "weights) or a list of {stage|teacher+student, weight} tables; logits come from the "
        "teacher's last stage. Stages are those `kdtui models` lists (the references' "
        "feature maps without stem and pooled vector: MobileNetV2/ShuffleNetV2 end at their "
        "last block, 160/464 channels). Teacher stage -1 is the map its classifier pools: "
        "for WRN teachers the last stage after the final BN-ReLU (SimKD's code has no WRN)",
        check=_check_projectors,
    ),
    "labels": Option(
        "none",
        "none; ce: add label_weight*CE through the reused classifier; mask-wrong-teacher: drop "
        "samples the teacher misclassifies from the feature loss",
        choices=("none", "ce", "mask-wrong-teacher"),
    ),
    "label_weight": Option(1.0, "weight of the CE term when labels = 'ce'", min=0.0),
}


def _check_stage(value: Any) -> str | None:
    if value == "middle" or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    return "must be a stage index (negative counts from the end) or 'middle'"


_STAGE_HELP = (
    "stage index into the stages `kdtui models` lists (0 = first stage after the stem; "
    "negative counts from the end; 'middle' = (n-1)//2). The default 1 is RepDistiller/"
    "mdistiller's hint_layer = 2, whose feature lists start with the stem map"
)

FITNET_OPTIONS = {
    "ce_weight": Option(1.0, "weight of cross-entropy with the labels", min=0.0),
    "hint_weight": Option(100.0, "weight of MSE(regressor(student map), teacher hint)", min=0.0),
    "hint_stage": Option(1, "teacher stage giving the hint: " + _STAGE_HELP, check=_check_stage),
    "guided_stage": Option(
        1, "student stage guided by the hint: " + _STAGE_HELP, check=_check_stage
    ),
    "regressor": Option(
        "convreg",
        "convreg: the references' ConvReg (3x3 stride-2 conv when the student map is twice the "
        "teacher's size, 4x4 stride-2 transposed conv when half, else a conv of kernel "
        "1+s-t) + BN + ReLU; pool: average-pool the larger map to the smaller, then conv1x1 + "
        "BN + ReLU (any pair of stages, also where ConvReg has no conv)",
        choices=("convreg", "pool"),
    ),
}

AT_OPTIONS = {
    "ce_weight": Option(1.0, "weight of cross-entropy with the labels", min=0.0),
    "at_weight": Option(1000.0, "weight of the attention loss summed over stage pairs", min=0.0),
    "at_p": Option(2.0, "power p in at(F) = normalise(mean_c |F|^p)", min=1.0),
    "pairs": Option(
        "aligned",
        "which stages meet (stages as `kdtui models` lists them: the references' feat[1:-1]). "
        "aligned: the last stages, the rest by resolution, never crossing; with equal stage "
        "counts (every published CIFAR-100 pair) this is the references' stage k with stage k. "
        "index: RepDistiller/mdistiller's zip, stage k with stage k, the longer list cut short "
        "(the reference behaviour for nets with unequal stage counts)",
        choices=("aligned", "index"),
    ),
}

DKD_OPTIONS = {
    "ce_weight": Option(1.0, "weight of cross-entropy with the labels", min=0.0),
    "tckd_weight": Option(1.0, "alpha: weight of target-class KD (TCKD)", min=0.0),
    "nckd_weight": Option(
        8.0,
        "beta: weight of non-target-class KD (NCKD). mdistiller tunes it per CIFAR-100 pair "
        "(2: resnet56/110 -> resnet20/32; 6: vgg13 -> vgg8/MobileNetV2, wrn_40_2 -> "
        "wrn_16_2/wrn_40_1; else 8); experiments/cifar100/dkd_*.toml carry its values",
        min=0.0,
    ),
    "temperature": Option(4.0, "softmax temperature T", min=1e-3),
    "warmup": Option(20, "epochs over which the DKD term ramps up linearly", min=0),
    "logit_stand": logit_stand_option(
        "Published CIFAR-100 setting: temperature = 2, tckd_weight and nckd_weight x9 "
        "(9 and 72 for resnet32x4 -> resnet8x4)."
    ),
}

CRD_OPTIONS = {
    "ce_weight": Option(1.0, "weight of cross-entropy with the labels", min=0.0),
    "crd_weight": Option(
        0.8, "weight of the contrastive (NCE) loss, both directions (RepDistiller's -b)", min=0.0
    ),
    "kd_weight": Option(
        0.0,
        "weight of T^2 * KL(teacher || student): 0 for CRD, 1 for the paper's CRD+KD "
        "(RepDistiller's -a)",
        min=0.0,
    ),
    "temperature": Option(4.0, "softmax temperature of the kd term", min=1e-3),
    "feat_dim": Option(128, "embedding dimension of both linear heads", min=1),
    "nce_k": Option(
        16384,
        "negatives per sample, drawn uniformly (with replacement) among the training "
        "samples of the other classes",
        min=1,
    ),
    "nce_t": Option(0.07, "temperature of the contrastive scores exp(<v, m> / t)", min=1e-4),
    "nce_momentum": Option(
        0.5,
        "momentum of the memory banks: m <- normalise(mom * m + (1 - mom) * v)",
        min=0.0,
        max=1.0,
    ),
}

REVIEWKD_OPTIONS = {
    "ce_weight": Option(1.0, "weight of cross-entropy with the labels", min=0.0),
    "review_weight": Option(
        5.0,
        "weight of the hierarchical context loss summed over levels: 5.0 in ReviewKD's and "
        "mdistiller's CIFAR-100 runs (resnet32x4 -> resnet8x4 and most pairs; ReviewKD's script: "
        "0.6 for resnet56 -> resnet20, 1.0 for resnet110 -> resnet32, 8.0 for ShuffleNetV2)",
        min=0.0,
    ),
    "warmup": Option(20, "epochs over which the review term ramps up linearly", min=0),
    "max_mid_channels": Option(
        512, "fusion width: min(this, channels of the student's deepest level)", min=1
    ),
}

DIST_OPTIONS = {
    "ce_weight": Option(1.0, "weight of cross-entropy with the labels", min=0.0),
    "kd_weight": Option(
        2.0, "weight of the DIST term (the reference CIFAR-100 recipe's kd_loss_weight)", min=0.0
    ),
    "inter_weight": Option(1.0, "beta: weight of the inter-class relation", min=0.0),
    "intra_weight": Option(1.0, "gamma: weight of the intra-class relation", min=0.0),
    "temperature": Option(4.0, "tau: softmax temperature (CIFAR-100: dist_t4)", min=1e-3),
    "logit_stand": logit_stand_option("The LS paper publishes no DIST+LS figure."),
}


def _check_temperatures(value: Any) -> str | None:
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
    )
    return None if ok else "must be a non-empty list of positive temperatures, e.g. [4, 3, 5, 2, 6]"


MLKD_OPTIONS = {
    "ce_weight": Option(
        0.1, "weight of cross-entropy with the labels, on each of the two views", min=0.0
    ),
    "kd_weight": Option(
        0.9, "weight of every alignment term (instance, batch, class; each temperature)", min=0.0
    ),
    "temperatures": Option(
        [4.0, 3.0, 5.0, 2.0, 6.0],
        "prediction augmentation: every term is summed over these temperatures; the first "
        "is the base temperature (MLKD+LS: [2, 3, 5, 2, 6])",
        check=_check_temperatures,
    ),
    "logit_stand": logit_stand_option(
        "Applies to the instance-level terms, as in the LS code. Published CIFAR-100 setting: "
        "base temperature 2 (temperatures = [2, 3, 5, 2, 6]), kd_weight = 9."
    ),
    "reference_strong_terms": Option(
        True,
        "true, as the reference code that produced the published figures: the strong view's "
        "instance terms at the 4th and 5th temperatures read the weak view; false: every "
        "temperature reads the strong view",
        choices=(False, True),
    ),
}

METHODS: dict[str, MethodSpec] = {
    "vanilla": MethodSpec(
        "vanilla",
        "engine.distill.vanilla:Vanilla",
        "cross-entropy on labels (teachers and baseline students)",
        head="student",
        needs_teacher=False,
        teacher_outputs="none",
        options={},
    ),
    "kd": MethodSpec(
        "kd",
        "engine.distill.kd:KD",
        "Hinton et al. 2015: CE + T^2 KL(teacher || student)",
        head="student",
        needs_teacher=True,
        teacher_outputs="logits",
        options=KD_OPTIONS,
        reference="Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, "
        "NIPS 2014 Deep Learning Workshop",
    ),
    "fitnet": MethodSpec(
        "fitnet",
        "engine.distill.fitnet:FitNet",
        "Romero et al. 2015: CE + MSE between a regressed student map and a teacher hint",
        head="student",
        needs_teacher=True,
        teacher_outputs="features",
        options=FITNET_OPTIONS,
        reference="Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015",
    ),
    "at": MethodSpec(
        "at",
        "engine.distill.at:AT",
        "Zagoruyko & Komodakis 2017: CE + attention-map transfer over stage pairs",
        head="student",
        needs_teacher=True,
        teacher_outputs="features",
        options=AT_OPTIONS,
        reference="Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017",
    ),
    "dkd": MethodSpec(
        "dkd",
        "engine.distill.dkd:DKD",
        "Zhao et al. CVPR 2022: CE + TCKD + NCKD (decoupled KD)",
        head="student",
        needs_teacher=True,
        teacher_outputs="logits",
        options=DKD_OPTIONS,
        reference="Zhao et al., Decoupled Knowledge Distillation, CVPR 2022",
    ),
    "simkd": MethodSpec(
        "simkd",
        "engine.distill.simkd:SimKD",
        "Chen et al. CVPR 2022: projector into the frozen, reused teacher classifier",
        head="teacher",
        needs_teacher=True,
        teacher_outputs="features",
        options=SIMKD_OPTIONS,
        reference="Chen et al., Knowledge Distillation with the Reused Teacher Classifier, "
        "CVPR 2022",
    ),
    "crd": MethodSpec(
        "crd",
        "engine.distill.crd:CRD",
        "Tian et al. 2020: CE + contrastive loss between embedded penultimate features, "
        "negatives from memory banks",
        head="student",
        needs_teacher=True,
        teacher_outputs="features",
        options=CRD_OPTIONS,
        reference="Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020",
    ),
    "reviewkd": MethodSpec(
        "reviewkd",
        "engine.distill.reviewkd:ReviewKD",
        "Chen et al. 2021: CE + attention-fused student stages (deep to shallow) against the "
        "teacher's pre-activation stages, hierarchical context loss",
        head="student",
        needs_teacher=True,
        teacher_outputs="preact",
        options=REVIEWKD_OPTIONS,
        reference="Chen, Liu, Zhao & Jia, Distilling Knowledge via Knowledge Review, CVPR 2021",
    ),
    "dist": MethodSpec(
        "dist",
        "engine.distill.dist:DIST",
        "Huang et al. 2022: CE + inter- and intra-class Pearson relations of softened logits",
        head="student",
        needs_teacher=True,
        teacher_outputs="logits",
        options=DIST_OPTIONS,
        reference="Huang et al., Knowledge Distillation from A Stronger Teacher, NeurIPS 2022",
    ),
    "mlkd": MethodSpec(
        "mlkd",
        "engine.distill.mlkd:MLKD",
        "Jin et al. 2023: instance, batch and class-level logit alignment over several "
        "temperatures, on a weak and a strong view",
        head="student",
        needs_teacher=True,
        teacher_outputs="logits",
        options=MLKD_OPTIONS,
        reference="Jin, Wang & Lin, Multi-Level Logit Distillation, CVPR 2023",
        strong_view=True,
    ),
}


def method_label(method: str, options: dict) -> str:
    """The method as the leaderboard names it: `kd+ls` when logit standardization is on."""
    return f"{method}+ls" if options.get("logit_stand") else method


def resolve(path: str) -> Any:
    """Import "module:attr" lazily (worker side only)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
