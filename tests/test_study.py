"""The study as files: every experiment validates, and a sweep x seeds ends as mean ± std rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.core import leaderboard as lb
from engine.core import reading
from engine.core.store import Store
from kdtui.cli import app

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.toml"))
runner = CliRunner()


def test_the_study_files_are_there():
    names = {p.relative_to(ROOT / "experiments").as_posix() for p in EXPERIMENTS}
    assert "quickstart.toml" in names
    for kind in ("cifar100", "digits"):
        files = [n for n in names if n.startswith(kind + "/")]
        for method in (
            "teacher",
            "vanilla",
            "kd_",
            "fitnet",
            "at_",
            "dkd",
            "simkd_factor",
            "simkd_kl",
            "simkd_lr_sweep",
            "simkd_multi",
            "simkd_labels",
            "simkd_all",
            "crd_",
            "dist_",
            "mlkd_r",
            "kd_ls_",
            "dkd_ls_",
            "mlkd_ls_",
            "reviewkd_",
        ):
            assert any(method in n for n in files), (kind, method)


@pytest.mark.parametrize(
    "path", EXPERIMENTS, ids=[p.relative_to(ROOT).as_posix() for p in EXPERIMENTS]
)
def test_every_experiment_file_validates(path):
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text()
    assert text.startswith("#"), "each file says what it reproduces"


# files whose published recipe differs from the CIFAR-100 one, as (lr, epochs), and why
OWN_RECIPE = {
    "mlkd_r32x4_r8x4.toml": (0.025, 240),  # MLKD's configs/cifar100/ours/res32x4_res8x4.yaml
    "mlkd_ls_r32x4_r8x4.toml": (0.025, 480),  # the LS repository's MLKD config and its log
}


def test_cifar100_files_use_the_published_recipe():
    for path in EXPERIMENTS:
        if "cifar100" not in path.parts:
            continue
        exp = reading.load(path)
        mobile = exp.student.arch.startswith(("mobilenet", "shufflenet"))
        lr, epochs = OWN_RECIPE.get(path.name, (0.01 if mobile else 0.05, 240))
        assert exp.data.dataset == "cifar100" and exp.data.batch_size == 64
        assert exp.optim.epochs == epochs and exp.optim.milestones == [150, 180, 210]
        assert exp.optim.weight_decay == 5e-4 and exp.optim.momentum == 0.9
        if "optim.lr" not in exp.sweep:
            assert exp.optim.lr == lr, path.name
        if path.name in OWN_RECIPE:
            assert f"lr {lr}" in path.read_text() and f"{epochs} epochs" in path.read_text()


SWEEP = """
name = "lr-sweep"
seeds = [0, 1]
[data]
dataset = "digits"
[teacher]
arch = "resnet8"
train = true
[teacher.optim]
epochs = 1
[student]
arch = "resnet8"
[distill]
method = "simkd"
[optim]
epochs = 1
[run]
max_steps = 5
[sweep]
"optim.lr" = [0.01, 0.05]
"""


@pytest.mark.slow
def test_a_two_lr_two_seed_sweep_trains_four_runs_and_ranks_them_as_mean_and_std(tmp_path, home):
    f = tmp_path / "sweep.toml"
    f.write_text(SWEEP)
    result = runner.invoke(app, ["run", str(f)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    store = Store(home)
    students = [r for r in store.runs() if r.role == "student"]
    assert len(students) == 4 and all(r.status == "done" for r in students)
    rows = [r for r in lb.build_rows(store.runs()) if r.role == "student"]
    assert sorted(r.label for r in rows) == ["lr=0.01", "lr=0.05"]
    assert all(r.n == 2 and r.best_std is not None and r.head == "teacher" for r in rows)
    board = runner.invoke(app, ["leaderboard"], env={"COLUMNS": "250"})
    assert len(re.findall(r"\d+\.\d\d ± \d+\.\d\d", board.output)) >= 2
    md = runner.invoke(app, ["export", "--format", "md"]).output
    assert "lr=0.01" in md and "lr=0.05" in md and "±" in md


# ---------------------------------------------------------------- the files users are told to run
def test_the_files_the_readme_and_the_issue_name_exist():
    for name in (
        "cifar100/teacher_resnet32x4.toml",
        "cifar100/vanilla_resnet8x4.toml",
        "cifar100/vanilla_mobilenetv2.toml",
        "cifar100/kd_r32x4_r8x4.toml",
        "cifar100/simkd_r32x4_r8x4.toml",
        "digits/teacher_resnet20.toml",
    ):
        assert (ROOT / "experiments" / name).exists(), name
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"experiments/(?:cifar100|digits)/\w+\.toml", readme):
        assert (ROOT / path).exists(), f"README names {path}"


def test_students_take_the_teacher_experiment_of_their_own_directory():
    for path in EXPERIMENTS:
        exp = reading.load(path)
        if exp.method.needs_teacher and path.parent.name in ("cifar100", "digits"):
            teacher = reading.load(path.parent / f"teacher_{exp.teacher.arch}.toml")
            assert exp.teacher.from_run == teacher.name, path.name


def test_dry_run_lists_the_lr_sweep_times_seeds_without_training(home):
    path = ROOT / "experiments/cifar100/simkd_lr_sweep_r32x4_r8x4.toml"
    result = runner.invoke(app, ["run", str(path), "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    points = re.findall(r"lr=([\d.]+) seed=(\d)", result.output)
    lrs = ["0.001", "0.005", "0.01", "0.05", "0.1"]
    assert points == [(lr, s) for lr in lrs for s in "012"]
    assert Store(home).runs() == []


# ---------------------------------------------------------------- every method, for real
METHOD_RUNS = {
    "fitnet": "",
    "at": "",
    "dkd": "warmup = 1",
    "simkd-kl-all": 'loss = "l2+kl"\nprojectors = "all"\nlabels = "ce"',
    "simkd-mask-list": (
        "projectors = [{ stage = -1, weight = 0.6667 }, { stage = -2, weight = 0.3333 }]\n"
        'labels = "mask-wrong-teacher"'
    ),
}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    import torch

    from engine.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet14.pth"
    torch.save({"model": build_model("resnet14", num_classes=10).state_dict()}, path)
    return path


@pytest.mark.parametrize("case", list(METHOD_RUNS))
def test_each_method_trains_a_few_steps_on_digits_through_the_worker(case, store, teacher_file):
    from engine.worker import execute

    method = case.split("-")[0]
    text = f"""
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
{METHOD_RUNS[case]}
[optim]
epochs = 1
[run]
max_steps = 3
log_every = 1
"""
    (run,) = store.submit(reading.loads(text))
    result = execute(store, [run.id])[0]
    assert result.status == "done", result.error
    assert result.best_top1 is not None and result.head == reading.loads(text).method.head
    names = {m.name for m in store.metrics(run.id)}
    assert "train/loss" in names and "test/top1" in names


# mdistiller's configs/cifar100/dkd/*.yaml: (teacher, student) -> BETA (absent: its default 8)
MDISTILLER_DKD_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet32x4", "shufflenetv1"): 8.0,
    ("resnet32x4", "shufflenetv2"): 8.0,
    ("ResNet50", "mobilenetv2_0_5"): 8.0,
    ("vgg13", "mobilenetv2_0_5"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("wrn_40_2", "shufflenetv1"): 8.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
}


def test_dkd_files_carry_mdistillers_beta_for_every_pair_it_tunes():
    files = {}
    for path in EXPERIMENTS:
        if path.name.startswith("dkd_") and "cifar100" in path.parts:
            exp = reading.load(path)
            files[(exp.teacher.arch, exp.student.arch)] = (exp, path.read_text())
    assert set(MDISTILLER_DKD_BETA) <= set(files)
    for pair, (exp, text) in files.items():
        beta = exp.distill.options.get("nckd_weight")
        if pair in MDISTILLER_DKD_BETA:
            assert beta == MDISTILLER_DKD_BETA[pair], pair
            header = text.split("\nname =")[0]
            assert "mdistiller" in header and ".yaml" in header, pair  # says where beta is from
        else:  # pairs mdistiller does not tune keep the default
            assert beta == 8.0, pair
