"""The study as files: every experiment validates, and a sweep x seeds ends as mean ± std rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import config as c
from engine import export as x
from engine.store import Store
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


def test_cifar100_files_use_the_published_recipe():
    for path in EXPERIMENTS:
        if "cifar100" not in path.parts:
            continue
        exp = c.load(path)
        mobile = exp.student.arch.startswith(("mobilenet", "shufflenet"))
        assert exp.data.dataset == "cifar100" and exp.data.batch_size == 64
        assert exp.optim.epochs == 240 and exp.optim.milestones == [150, 180, 210]
        assert exp.optim.weight_decay == 5e-4 and exp.optim.momentum == 0.9
        if "optim.lr" not in exp.sweep:
            assert exp.optim.lr == (0.01 if mobile else 0.05), path.name


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
    rows = [r for r in x.build_rows(store.runs()) if r.role == "student"]
    assert sorted(r.label for r in rows) == ["lr=0.01", "lr=0.05"]
    assert all(r.n == 2 and r.best_std is not None and r.head == "teacher" for r in rows)
    board = runner.invoke(app, ["leaderboard"], env={"COLUMNS": "250"})
    assert len(re.findall(r"\d+\.\d\d ± \d+\.\d\d", board.output)) >= 2
    md = runner.invoke(app, ["export", "--format", "md"]).output
    assert "lr=0.01" in md and "lr=0.05" in md and "±" in md
