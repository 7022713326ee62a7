"""The headless CLI as a user types it: validate, dry runs, a real foreground run, the board."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.core.store import Store
from kdtui.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

TINY = """
name = "cli-tiny"
seeds = [0]
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
method = "kd"
[optim]
lr = 0.05
epochs = 1
[run]
max_steps = 4
[sweep]
"distill.method" = ["vanilla", "kd", "simkd"]
"""


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_validate_reports_file_line_key_and_suggestion(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(TINY.replace("epochs = 1\n[run]", "epocs = 1\n[run]"))
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2
    out = plain(result.output)
    assert "bad.toml:" in out and "optim.epocs" in out and "[optim]" in out
    assert "did you mean 'epochs'" in out


def test_validate_names_a_bad_override():
    result = runner.invoke(
        app, ["validate", "experiments/quickstart.toml", "--set", "optim.epochz=1"]
    )
    assert result.exit_code == 2
    assert "--set optim.epochz=1" in plain(result.output)


def test_dry_run_lists_the_expanded_runs_and_trains_nothing(tmp_path, home):
    f = tmp_path / "x.toml"
    f.write_text(TINY)
    result = runner.invoke(app, ["run", str(f), "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = plain(result.output)
    roles = re.findall(r"│ (teacher|student) ", out)
    assert roles == ["teacher", "student", "student", "student"]
    assert Store(home).runs() == []


@pytest.mark.slow
def test_kdtui_run_trains_teacher_then_students_and_ends_with_a_leaderboard(tmp_path, home):
    f = tmp_path / "x.toml"
    f.write_text(TINY)
    env = {"KDTUI_HOME": str(home), "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "kdtui.cli", "run", str(f)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = plain(out.stdout)
    assert "leaderboard" in text or "accuracy of the head" in text
    for method in ("vanilla", "kd", "simkd"):
        assert method in text
    # the same store answers the other commands
    board = runner.invoke(app, ["leaderboard"], env={"COLUMNS": "200"})
    assert "simkd" in plain(board.output) and "teacher" in plain(board.output)
    md = tmp_path / "board.md"
    result = runner.invoke(app, ["export", "--format", "md", "-o", str(md)])
    assert result.exit_code == 0
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| # |") and len(lines) == 2 + 4  # header, rule, 4 rows
    ls = runner.invoke(app, ["ls"], env={"COLUMNS": "200"})
    assert plain(ls.output).count("done") == 4


def test_models_lists_every_architecture_with_its_size():
    result = runner.invoke(app, ["models", "--num-classes", "100"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    out = plain(result.output)
    assert re.search(r"resnet8x4\s+│\s+1\.23M", out)
    assert re.search(r"resnet32x4\s+│\s+7\.43M", out)
    assert "256×8×8" in out


def test_leaderboard_in_an_80_column_terminal_shows_whole_names_and_says_what_it_hid(store):
    from tests.test_export import finished_study

    finished_study(store)
    result = runner.invoke(app, ["leaderboard"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = plain(result.output).splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    board = "\n".join(lines)
    assert "…" not in board  # no cell cut short
    assert "85.50 ± 0.71" in board and "resnet20→resnet8" in board
    # a sweep label is data, not Rich markup: "[method=kd]" used to vanish
    assert "[method=kd]" in board
    assert "too narrow to show:" in board and "params" in board.split("too narrow")[1]
    wide = plain(runner.invoke(app, ["leaderboard"], env={"COLUMNS": "200"}).output)
    assert "too narrow" not in wide and "params" in wide


def test_leaderboard_and_export_list_member_runs_and_ls_shows_fingerprints(store):
    from tests.test_export import finished_study

    runs = finished_study(store)
    wide = {"COLUMNS": "250"}
    board = plain(runner.invoke(app, ["leaderboard", "--runs"], env=wide).output)
    members = board.split("runs of each row")[1]
    for r in runs:
        assert re.search(rf"│\s+{r.id} │\s+{r.seed} │ done\s+│", members), r.id
    md = runner.invoke(app, ["export", "--format", "md", "--runs"]).output
    assert md.count("| counted |") == len(runs)
    ls = plain(runner.invoke(app, ["ls"], env=wide).output)
    for r in runs:
        assert store.run(r.id).fingerprint[:12] in ls


def test_a_pinned_baseline_on_the_command_line(store):
    from tests.test_export import finished_study

    runs = finished_study(store)
    vanilla = [r for r in runs if r.method == "vanilla"]
    store.update(vanilla[0].id, best_top1=86.0)  # baseline mean 84.0 instead of 81.0
    result = runner.invoke(app, ["export", "--format", "csv", "--baseline", "study"])
    assert result.exit_code == 0, result.output
    kd = next(line for line in result.output.splitlines() if ",kd," in line)
    assert ",0.2500," in kd and "pinned: study [method=vanilla]" in kd  # (85.5-84)/(90-84)
    bad = runner.invoke(app, ["leaderboard", "--baseline", "nope"])
    assert bad.exit_code != 0 and "no run or experiment 'nope'" in plain(bad.output)


def test_validate_refuses_milestones_past_the_epochs_and_names_the_fix(tmp_path):
    f = tmp_path / "short.toml"
    f.write_text(TINY.replace("epochs = 1\n[run]", "epochs = 6\nmilestones = [4, 8]\n[run]"))
    result = runner.invoke(app, ["validate", str(f)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    out = plain(result.output)
    assert "short.toml:" in out and "optim.milestones: 8 never takes effect" in out
    assert "optim.milestones = [3, 4, 5]" in out


def test_ls_in_an_80_column_terminal_shows_whole_names_and_says_what_it_hid(store):
    from tests.bigstudy import seed_big

    seed_big(store)
    result = runner.invoke(app, ["ls"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = plain(result.output).splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    table = "\n".join(lines)
    assert "…" not in table  # cells fold onto a second line, none is cut
    assert "lr=0.05 f=2" in table  # the sweep point, short_point's way
    hidden = table.split("too narrow to show:")[1]
    assert "fingerprint" in hidden and "device" in hidden
    wide = plain(runner.invoke(app, ["ls"], env={"COLUMNS": "250"}).output)
    assert "too narrow" not in wide and "cifar100/simkd-lr-factor-sweep-r32x4-mobilenetv2" in wide


def test_help_shows_no_type_for_flags_on_any_command():
    """`--dry-run <bool>` read as if the flag took a value."""
    from kdtui.cli import app as typer_app

    commands = [[c.name or c.callback.__name__] for c in typer_app.registered_commands]
    commands += [
        [g.name, c.name or c.callback.__name__]
        for g in typer_app.registered_groups
        for c in g.typer_instance.registered_commands
    ]
    assert len(commands) > 10
    for argv in [[], *commands]:
        out = plain(runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "120"}).output)
        assert "--help" in out, argv
        assert "<bool>" not in out, argv
    out = plain(runner.invoke(app, ["run", "--help"], env={"COLUMNS": "120"}).output)
    assert "<int>" in out  # options that take a value keep their type


def test_run_progress_keeps_its_bar_and_eta_from_80_columns():
    import io

    from rich.console import Console

    from kdtui.cli.foreground import make_progress

    label = "#12 simkd resnet32x4→mobilenetv2 lr=0.05 f=2 wd=0.0005 seed=0"
    for width in (80, 100, 120, 200):
        console = Console(file=io.StringIO(), width=width, color_system=None)
        progress = make_progress(console)
        progress.add_task(label, total=1000, completed=420, epoch="101/240", stats="s", short="s")
        console.print(progress.get_renderable())
        line = console.file.getvalue().rstrip("\n")
        assert len(line) <= width and "━" in line and "101/240" in line and "ETA" in line, width
