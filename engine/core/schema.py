"""The experiment schema: typed sections with their help, choices and limits. Torch-free.

One dataclass per TOML table; each field's metadata (help, choices, min, max, whether it
can be swept) is what the parser checks, the composer offers and `kdtui validate` says.
`ConfigError` is the one error a bad experiment raises: it names the file, the key and
the line. Reading TOML is engine.core.reading, writing it engine.core.writing.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, get_type_hints

from engine.core.inert import shorten
from engine.core.registry import ARCHS, DATASETS, METHODS

# Limits that keep a hostile or mistyped file from hanging, overflowing or flooding anything.
FILE_MAX_BYTES = 1 << 20  # an experiment file is a few KB


DEPTH_MAX = 8  # [teacher.optim], [[distill.projectors]] and [sweep.optim] need 3


ERRORS_MAX = 20  # `kdtui validate` lists at most this many errors of one file


RUNS_CONFIRM = 1_000  # `kdtui run`/`submit` of more runs needs --yes


RUNS_MAX = 10_000  # sweep points x seeds in one experiment


INT_MAX = 2**53  # integers without a stated range (exact as floats, fit SQLite)


SEED_MAX = 2**32 - 1  # numpy's and most seeders' range


EPOCHS_MAX = 100_000


STEPS_MAX = 1_000_000_000


NPROC_MAX = 256  # processes of one run on one node (GPUs, or CPU processes)


NNODES_MAX = 4096


NAME_MAX = 128


TEXT_MAX = {"name": NAME_MAX, "description": 20_000}  # other strings (paths, refs): 4096


DEVICE_RE = re.compile(r"auto|cpu|mps|xpu|cuda(:[0-9]{1,3})?")


class ConfigError(ValueError):
    """A bad experiment file: one message naming file, key and line.

    `errors` holds every problem found in the file (this one first), so
    `kdtui validate` can list them all; str() is the first one's line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ):
        self.file, self.key, self.line, self.reason = file, key, line, message
        self.errors: list[ConfigError] = [self]
        self.truncated = False  # more errors than ERRORS_MAX were found
        where = file or "<config>"
        if line:
            where += f":{line}"
        message = shorten(message, 600)
        super().__init__(
            f"{where}: {shorten(key, 100)}: {message}" if key else f"{where}: {message}"
        )

    @classmethod
    def several(cls, errors: list[ConfigError], truncated: bool = False) -> ConfigError:
        first = errors[0]
        out = cls(first.reason, file=first.file, key=first.key, line=first.line)
        out.errors, out.truncated = list(errors), truncated
        return out


def meta(
    help: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    sweepable: bool = True,
) -> dict:
    return {"help": help, "choices": choices, "min": min, "max": max, "sweepable": sweepable}


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta(help, **kw))
    return field(default=default, metadata=meta(help, **kw))


@dataclass
class DataConfig:
    dataset: str = _f("digits", "data set", choices=tuple(DATASETS))
    root: str = _f("data", "where data sets live (cifar*, folder)")
    download: bool = _f(False, "download CIFAR through torchvision when missing")
    batch_size: int = _f(64, "training batch size", min=1, max=65536)
    eval_batch_size: int = _f(512, "evaluation batch size", min=1, max=65536)
    augment: bool = _f(True, "zero-pad 4 + random crop + flip on the training set")
    hflip: str = _f(
        "auto",
        "horizontal flip: auto (on except for digits), on, off",
        choices=("auto", "on", "off"),
    )
    loader: str = _f(
        "auto",
        "auto: device-resident tensors for in-memory data sets, "
        "DataLoader for folders; device; dataloader (PIL, reference style)",
        choices=("auto", "device", "dataloader"),
    )
    strong_view: str = _f(
        "auto",
        "a second, strongly augmented view of every training image (own crop + flip, "
        "RandAugment n=2 with random magnitudes, Cutout; what MLKD trains on): auto (on when "
        "the method reads it), on, off",
        choices=("auto", "on", "off"),
    )
    num_workers: int = _f(2, "DataLoader workers (dataloader path only)", min=0, max=256)
    data_seed: int = _f(
        -1, "seed of shuffling and augmentation; -1 uses the run's seed", min=-1, max=SEED_MAX
    )
    # synthetic / folder only
    num_classes: int = _f(10, "classes of the synthetic data set", min=2, max=100_000)
    train_size: int = _f(2048, "training images of the synthetic data set", min=1, max=10_000_000)
    test_size: int = _f(512, "test images of the synthetic data set", min=1, max=10_000_000)
    image_size: int = _f(32, "side of synthetic images; crop size for folders", min=8, max=1024)


@dataclass
class OptimConfig:
    optimizer: str = _f("sgd", "optimiser", choices=("sgd", "adamw"))
    lr: float = _f(0.05, "base learning rate", min=0.0)
    momentum: float = _f(0.9, "SGD momentum", min=0.0, max=1.0)
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "weight decay", min=0.0)
    epochs: int = _f(240, "training epochs", min=1, max=EPOCHS_MAX)
    schedule: str = _f("multistep", "lr schedule", choices=("multistep", "cosine", "constant"))
    milestones: list[int] = _f(
        [150, 180, 210],
        "epochs where lr is multiplied by gamma",
        min=0,
        max=EPOCHS_MAX,
        sweepable=False,
    )
    gamma: float = _f(0.1, "multistep decay factor", min=0.0, max=1.0)
    warmup_epochs: int = _f(0, "linear lr warm-up epochs", min=0, max=EPOCHS_MAX)
    min_lr: float = _f(0.0, "final lr of the cosine schedule", min=0.0)


@dataclass
class TeacherConfig:
    arch: str = _f("", "teacher architecture", choices=tuple(ARCHS))
    checkpoint: str = _f("", "teacher weights: our checkpoint or a RepDistiller/SimKD file")
    from_run: str = _f("", "use the best checkpoint of an earlier run (run id or experiment name)")
    train: bool = _f(False, "train this teacher first (vanilla) and distil from it")
    # overrides of [optim] for the teacher's own training when train = true
    optim: dict = field(
        default_factory=dict,
        metadata=meta("overrides of [optim] for training the teacher", sweepable=False),
    )


@dataclass
class StudentConfig:
    arch: str = _f("resnet8x4", "student architecture", choices=tuple(ARCHS))
    checkpoint: str = _f("", "initialise the student from these weights")


@dataclass
class DistillConfig:
    method: str = _f("vanilla", "distillation method", choices=tuple(METHODS))
    # method-specific options (see engine.core.registry.METHODS[method].options)
    options: dict = field(default_factory=dict, metadata=meta("method options", sweepable=False))


@dataclass
class RunConfig:
    device: str = _f(
        "auto",
        "auto (CUDA when present), cpu, cuda, cuda:N (under the engine N is the GPU id as "
        "`kdtui engine start --gpus` names it), mps",
    )
    amp: str = _f(
        "auto",
        "mixed precision: auto (bf16 on CUDA), bf16, fp16, off",
        choices=("auto", "bf16", "fp16", "off"),
    )
    channels_last: str = _f(
        "auto",
        "channels_last memory format: auto (on CUDA), on, off",
        choices=("auto", "on", "off"),
    )
    compile: bool = _f(False, "torch.compile the training step")
    compile_mode: str = _f(
        "auto",
        "torch.compile mode: auto (reduce-overhead = CUDA graphs on CUDA, default on CPU), "
        "default, reduce-overhead, max-autotune",
        choices=("auto", "default", "reduce-overhead", "max-autotune"),
    )
    threads: int = _f(
        0,
        "CPU threads for torch (0: auto = $OMP_NUM_THREADS when set, e.g. the engine's "
        "share of the cores, else every core)",
        min=0,
        max=1024,
    )
    eval_every: int = _f(
        1, "evaluate every N epochs (and always at the end)", min=1, max=EPOCHS_MAX
    )
    log_every: int = _f(20, "record training loss every N steps", min=1, max=STEPS_MAX)
    checkpoint_every: int = _f(
        1, "save the `last` checkpoint every N epochs", min=1, max=EPOCHS_MAX
    )
    deterministic: bool = _f(
        False,
        "deterministic kernels (torch.use_deterministic_algorithms, warn_only), TF32 and "
        "cuDNN autotuning off: slower on a GPU",
    )
    priority: int = _f(0, "engine queue priority (higher first)", min=-1_000_000, max=1_000_000)
    fuse: bool = _f(
        True,
        "train sweep points that share teacher and data order in one process with one teacher pass",
    )
    teacher_cache: str = _f(
        "off",
        "exact teacher-logit cache for logit methods: off, memory, disk",
        choices=("off", "memory", "disk"),
    )
    teacher_cache_dtype: str = _f("fp16", "cache precision", choices=("fp32", "fp16", "bf16"))
    teacher_cache_mb: int = _f(2048, "cache size limit in MiB", min=1, max=1 << 20)
    max_steps: int = _f(
        0, "stop each epoch after N steps (0: full epochs; for smoke tests)", min=0, max=STEPS_MAX
    )
    nproc_per_node: int = _f(
        1,
        "processes per node: N > 1 trains this run data-parallel (DDP under torchrun) on N "
        "GPUs, or N CPU processes on a CPU box; data.batch_size is per process",
        min=1,
        max=NPROC_MAX,
    )
    nnodes: int = _f(
        1,
        "nodes of a data-parallel run (more than one needs the Slurm backend)",
        min=1,
        max=NNODES_MAX,
    )
    sync_bn: bool = _f(
        False,
        "SyncBatchNorm in the student and projectors when the run spans several processes "
        "(batch statistics over the effective batch; GPUs only)",
    )


@dataclass
class Experiment:
    name: str = _f("", "experiment name")
    description: str = _f("", "what this experiment reproduces", sweepable=False)
    seeds: list[int] = _f([0], "one run per seed", min=0, max=SEED_MAX, sweepable=False)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # dotted key -> list of values; expanded to the grid of runs
    sweep: dict = field(default_factory=dict)

    @property
    def method(self):
        return METHODS[self.distill.method]

    def option(self, key: str) -> Any:
        """A method option with its registry default filled in."""
        spec = self.method.options[key]
        return self.distill.options.get(key, spec.default)


SECTIONS = {
    "data": DataConfig,
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "distill": DistillConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}


TOP_LEVEL = ("name", "description", "seeds", *SECTIONS, "sweep")


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/+]*")  # fullmatch: `$` would pass "x\n"


@functools.cache
def type_hints(cls) -> dict[str, Any]:
    return get_type_hints(cls)


@functools.cache
def field_meta(cls) -> dict[str, Any]:
    return {f.name: f.metadata for f in fields(cls)}


def run_count(exp: Experiment) -> int:
    """Student runs an experiment queues: sweep points x seeds (a trained teacher adds one)."""
    return math.prod(len(v) for v in exp.sweep.values()) * len(exp.seeds)


def with_defaults(methods: list[str], options: dict) -> dict:
    """Options of the given methods, defaults filled in, so equality is by meaning."""
    out = {}
    for m in methods:
        for key, opt in METHODS[m].options.items():
            out.setdefault(key, copy.deepcopy(opt.default))
    out.update(options)
    return out


def world_size(exp: Experiment) -> int:
    """Processes that train one run together (`nproc_per_node` x `nnodes`)."""
    return exp.run.nproc_per_node * exp.run.nnodes


def effective_batch(exp: Experiment) -> int:
    """Images per optimiser step: `data.batch_size` is per process."""
    return exp.data.batch_size * world_size(exp)


def strong_view(exp: Experiment) -> bool:
    """Whether this run's training batches carry the strong view (`[data] strong_view`)."""
    mode = exp.data.strong_view
    return mode == "on" or (mode == "auto" and exp.method.strong_view)


def data_seed(data: DataConfig, run_seed: int) -> int:
    """The seed of a run's batches (shuffling, augmentation): `data.data_seed`, or the run's
    own seed at its default of -1. The one place that default is resolved."""
    return data.data_seed if data.data_seed >= 0 else run_seed


def teacher_experiment(exp: Experiment) -> Experiment:
    """The vanilla run that trains the teacher of a `teacher.train = true` experiment."""
    t = copy.deepcopy(exp)
    t.sweep = {}
    t.student = StudentConfig(arch=exp.teacher.arch)
    t.teacher = TeacherConfig()
    t.distill = DistillConfig(method="vanilla")
    for key, value in exp.teacher.optim.items():
        setattr(t.optim, key, value)
    t.seeds = [exp.seeds[0]]
    return t


def field_help(section: str, key: str) -> str:
    cls = SECTIONS[section]
    for f in fields(cls):
        if f.name == key:
            return f.metadata.get("help", "")
    raise KeyError(key)


def field_default(section: str, key: str) -> Any:
    for f in fields(SECTIONS[section]):
        if f.name == key:
            if f.default is not MISSING:
                return f.default
            return f.default_factory()  # type: ignore[misc]
    raise KeyError(key)
