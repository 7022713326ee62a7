"""How a run reads: one owner (engine.core.display) for durations, names and status styles."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

from engine.core import display
from kdtui.widgets import cells

ROOT = Path(__file__).resolve().parent.parent


def _run(**kw):
    base = dict(
        id=12, experiment="study", role="student", method="kd", label="lr=0.1 seed=1",
        teacher_arch="resnet32x4", student_arch="resnet8x4", epoch=3, epochs=240, progress=0.0125,
    )  # fmt: skip
    run = SimpleNamespace(**(base | kw))
    run.pair = display.pair(run.teacher_arch, run.student_arch)
    return run


def test_a_duration_reads_in_its_two_largest_units():
    assert [display.duration(s) for s in (42, 187, 3900, 2 * 86400 + 3 * 3600)] == [
        "42s",
        "3m07s",
        "1h05m",
        "2d03h",
    ]
    assert display.duration(None) == display.duration(-1) == "–"


def test_the_apps_eta_column_drops_the_smaller_unit_and_counts_hours_to_two_days():
    short = [display.duration(s, short=True) for s in (42, 187, 3900, 47 * 3600, 49 * 3600)]
    assert short == ["42s", "3m", "1h05", "47h00", "2d01h"]


def test_a_run_is_named_the_same_in_every_front_end():
    run = _run()
    assert display.title(run) == "#12 study: kd resnet32x4→resnet8x4 lr=0.1 seed=1"
    assert display.title(run, experiment=False) == "#12 kd resnet32x4→resnet8x4 lr=0.1 seed=1"
    assert display.name(run) == "#12 study [lr=0.1 seed=1]"
    teacher = _run(role="teacher", teacher_arch="", student_arch="resnet32x4", label="")
    assert display.title(teacher) == "#12 study: teacher resnet32x4"
    assert display.progress(run) == "3/240 1%"
    swept = _run(label="factor=4 weight_decay=0.0005 seed=0")  # shortened as tables show it
    assert display.name(swept) == "#12 study [f=4 wd=0.0005 seed=0]"
    assert display.title(swept).endswith("resnet8x4 f=4 wd=0.0005 seed=0")


def test_the_app_shows_a_status_in_its_one_style():
    assert cells.status("dead").style == display.STATUS_STYLE["dead"] == "bold red reverse"


def test_no_other_module_keeps_a_status_style_table():
    """One owner: no module but engine/core/display.py assigns STATUS_STYLE or STATUS_ICON
    (there were two tables, with different styles, in the CLI and the app)."""
    owners = []
    for path in sorted((ROOT / "kdtui").rglob("*.py")) + sorted((ROOT / "engine").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {
            t.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        if names & {"STATUS_STYLE", "STATUS_ICON"}:
            owners.append(path.relative_to(ROOT).as_posix())
    assert owners == ["engine/core/display.py"]
