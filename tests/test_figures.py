"""Paper figures: `kdtui plot` and the `g` key of the runs and compare views.

A user names runs or experiments and metrics; out comes a PDF/PNG/SVG whose panels hold
one line per config (its seeds' mean, x = epochs from 1 or global steps) and a ± std
band for configs with 2+ seeds, labelled as the leaderboard names its rows.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.core import leaderboard as lb
from engine.core import reading
from engine.core.store import Store
from kdtui import figure
from kdtui.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

STUDY = """
name = "study"
seeds = [0, 1, 2]
[data]
dataset = "digits"
[teacher]
arch = "resnet20"
checkpoint = "t.pth"
[student]
arch = "resnet8"
[distill]
method = "kd"
[optim]
epochs = 4
[sweep]
"distill.method" = ["vanilla", "kd"]
"""
EPOCHS, STEPS = 4, 3  # steps per epoch


def top1(method: str, seed: int, epoch: int) -> float:
    """Made-up but distinct per run: the test computes the expected means from it."""
    return 50.0 + 5 * epoch + (3.0 if method == "kd" else 0.0) + seed


def loss(method: str, seed: int, step: int) -> float:
    return 2.0 / step + (0.1 if method == "vanilla" else 0.0) + 0.01 * seed


def log_run(store: Store, run, epochs: int = EPOCHS, status: str = "done") -> None:
    """What a worker writes: per-step losses and lr, then per-epoch accuracy (epochs from 0)."""
    rows = []
    for e in range(epochs):
        for k in range(STEPS):
            step = e * STEPS + k + 1
            rows += [
                (e, step, "train/loss", loss(run.method, run.seed, step)),
                (e, step, "train/lr", 0.05),
            ]
        rows += [
            (e, (e + 1) * STEPS, "test/top1", top1(run.method, run.seed, e)),
            (e, (e + 1) * STEPS, "lr", 0.05),
        ]
    store.add_metrics(run.id, rows)
    best = top1(run.method, run.seed, epochs - 1)
    store.update(
        run.id,
        status=status,
        epoch=epochs,
        best_top1=best,
        last_top1=best,
        teacher_top1=90.0 if run.method == "kd" else None,
    )


@pytest.fixture
def study(tmp_path, monkeypatch, store):
    """Three seeds each of vanilla and KD, every run finished and logged."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.pth").write_bytes(b"teacher weights")
    runs = store.submit(reading.loads(STUDY))
    for r in runs:
        log_run(store, r)
    return runs


def gids(fig, panel: int, kind: str) -> list[str]:
    """The ids of a panel's curves or bands (kind: "curve" or "band")."""
    ax = fig.axes[panel]
    artists = [*ax.lines, *ax.collections]
    return sorted(
        a.get_gid() for a in artists if (a.get_gid() or "").startswith(f"panel{panel}-{kind}-")
    )


def test_seeds_of_one_config_become_one_line_with_a_std_band(study, store, tmp_path):
    out = figure.write(store, ["study"], ["test/top1", "train/loss"], tmp_path / "fig.png")
    fig = out.figure
    # two configs (vanilla, kd) of three seeds each: two lines and two bands per panel
    assert [g.n for g in out.groups] == [3, 3]
    for panel in (0, 1):
        assert len(gids(fig, panel, "curve")) == 2
        assert len(gids(fig, panel, "band")) == 2
    # labels are the leaderboard's row names
    names = {row.name for row in lb.build_rows(store.runs())}
    assert {g.label for g in out.groups} == names == {"study [method=vanilla]", "study [method=kd]"}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["study [method=vanilla] (n=3)", "study [method=kd] (n=3)"]
    # per-epoch metric: x = 1..E, y = the mean over seeds, computed by hand
    kd_line = next(ln for ln in fig.axes[0].lines if ln.get_gid() == "panel0-curve-1")
    assert list(kd_line.get_xdata()) == [1, 2, 3, 4]
    expected = [statistics.fmean(top1("kd", s, e) for s in range(3)) for e in range(EPOCHS)]
    assert list(kd_line.get_ydata()) == pytest.approx(expected)
    assert fig.axes[0].get_xlabel() == "epoch" and fig.axes[0].get_xlim()[0] == 1
    # per-step metric: x = the global step
    loss_line = next(ln for ln in fig.axes[1].lines if ln.get_gid() == "panel1-curve-0")
    assert list(loss_line.get_xdata()) == list(range(1, EPOCHS * STEPS + 1))
    assert fig.axes[1].get_xlabel() == "step"
    # the band is mean ± the sample std over seeds (seeds 0,1,2 differ by 1 point: std 1)
    band = next(a for a in fig.axes[0].collections if a.get_gid() == "panel0-band-1")
    ys = band.get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(expected[0] - 1.0) and max(ys) == pytest.approx(
        expected[-1] + 1.0
    )


def test_the_legend_sits_below_the_panels_not_over_a_curve(study, store, tmp_path):
    out = figure.write(store, ["study"], ["test/top1"], tmp_path / "fig.png")
    fig = out.figure
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert legend.y1 <= ax.get_window_extent().y0  # entirely under every panel


def test_one_run_per_seed_and_running_seeds_show_how_far_they_got(study, store, tmp_path):
    kd = [r for r in study if r.method == "kd"]
    # seed 0 rerun (counted: the latest done), a new seed 3 still running at epoch 2
    rerun = store.submit(reading.loads(STUDY.replace("seeds = [0, 1, 2]", "seeds = [0, 3]")))
    for r in rerun:
        if r.method == "kd":
            log_run(
                store,
                r,
                epochs=EPOCHS if r.seed == 0 else 2,
                status="done" if r.seed == 0 else "running",
            )
    out = figure.write(store, ["study"], ["test/top1"], tmp_path / "fig.pdf")
    kd_group = next(g for g in out.groups if "kd" in g.label)
    rerun0 = next(r for r in rerun if r.method == "kd" and r.seed == 0)
    running = next(r for r in rerun if r.method == "kd" and r.seed == 3)
    assert sorted(kd_group.run_ids) == sorted([rerun0.id, kd[1].id, kd[2].id, running.id])
    # the band covers the epochs every seed reached
    assert kd_group.curves["test/top1"].x == [1, 2]


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png"])
def test_kdtui_plot_writes_the_format_its_suffix_names(study, home, tmp_path, fmt):
    path = tmp_path / "figs" / f"fig.{fmt}"
    result = runner.invoke(
        app, ["plot", "study", "-m", "test/top1", "-m", "train/loss", "-o", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "2 panels" in result.output and "2 curves" in result.output
    data = path.read_bytes()
    if fmt == "svg":
        root = ET.fromstring(data)
        ids = [g.get("id") for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("id")]
        for panel in (0, 1):
            assert len([i for i in ids if re.fullmatch(rf"panel{panel}-curve-\d+", i)]) == 2
            assert len([i for i in ids if re.fullmatch(rf"panel{panel}-band-\d+", i)]) == 2
        assert len(ids) == len(set(ids))  # every id once: a valid SVG
        texts = "".join(root.itertext())
        assert "study [method=kd] (n=3)" in texts  # text kept as text, editable
    elif fmt == "pdf":
        assert data.startswith(b"%PDF")
        # TrueType outlines (a CIDFontType2 or TrueType font), never bitmap-ish Type 3
        assert b"/Type3" not in data
        assert b"/CIDFontType2" in data or b"/TrueType" in data
    else:
        from PIL import Image

        with Image.open(path) as im:
            assert im.format == "PNG"
            assert round(im.info["dpi"][0]) == 300
            assert 1500 < im.width < 2200  # two 3.4 in panels at 300 dpi, trimmed


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png"])
def test_the_same_runs_give_the_same_file(study, home, tmp_path, fmt):
    a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    for path in (a, b):
        assert runner.invoke(app, ["plot", "study", "-o", str(path)]).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_plot_errors_say_what_is_wrong_and_what_there_is(study, home, tmp_path):
    bad = runner.invoke(app, ["plot", "study", "-m", "test/top7", "-o", str(tmp_path / "f.pdf")])
    assert bad.exit_code == 2
    assert "test/top7" in bad.output and "test/top1, train/loss, train/lr" in bad.output
    jpg = runner.invoke(app, ["plot", "study", "-o", str(tmp_path / "f.jpg")])
    assert jpg.exit_code == 2 and ".pdf, .png or .svg" in jpg.output
    unknown = runner.invoke(app, ["plot", "nosuch", "-o", str(tmp_path / "f.pdf")])
    assert unknown.exit_code == 2 and "no run or experiment 'nosuch'" in unknown.output
    assert not list(tmp_path.glob("f.*"))


def test_plot_is_the_only_command_that_loads_matplotlib():
    code = (
        "import kdtui.cli, kdtui.app, sys; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'tensorboard')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------- the app's `g` key
async def test_g_in_the_runs_view_writes_the_marked_runs_figure_where_asked(study, home, tmp_path):
    from test_app import make_app, notifications, until
    from textual.widgets import Input

    from kdtui.screens.dialogs import PathScreen

    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.loaded and len(app.runs) == 6)
        runs_view = app.screen
        await pilot.press("space", "space", "space")  # the first three rows: one config
        methods = {app.runs_by_id[i].method for i in runs_view.marked}
        assert len(runs_view.marked) == 3 and len(methods) == 1
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, PathScreen))
        box = app.screen.query_one("#path", Input)
        assert box.value.startswith("exports/figure-") and box.value.endswith(".pdf")
        box.value = "paper/curves.png"
        await pilot.press("enter")
        target = tmp_path / "paper" / "curves.png"
        await until(pilot, target.exists, timeout=30, what="the figure")
        await until(pilot, lambda: any("paper/curves.png" in n for n in notifications(app)))
        toast = next(n for n in notifications(app) if "paper/curves.png" in n)
        assert "figure written to paper/curves.png" in toast
        assert f"1 curve: study [method={methods.pop()}] (n=3)" in toast


async def test_g_in_the_compare_view_writes_the_compared_rows(study, home, tmp_path):
    from test_app import make_app, notifications, until

    from kdtui.screens.compare import CompareScreen
    from kdtui.screens.dialogs import PathScreen
    from kdtui.screens.leaderboard import LeaderboardScreen

    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        board = app.screen
        await until(pilot, lambda: len(board.shown) == 2)
        await pilot.press("space", "space", "m")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, PathScreen))
        await pilot.press("enter")  # the proposed exports/figure-<time>.pdf
        await until(pilot, lambda: list((tmp_path / "exports").glob("figure-*.pdf")), timeout=30)
        await until(pilot, lambda: any("figure written" in n for n in notifications(app)))
        toast = next(n for n in notifications(app) if "figure written" in n)
        assert "2 panels (test/top1, train/loss), 2 curves" in toast
        assert isinstance(app.screen, CompareScreen)  # back where the user was


async def test_escape_or_a_bad_suffix_in_the_path_dialog_writes_nothing(study, home, tmp_path):
    from test_app import make_app, notifications, until
    from textual.widgets import Input

    from kdtui.screens.dialogs import PathScreen
    from kdtui.screens.runs import RunsScreen

    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.loaded and len(app.runs) == 6)
        titles = {cmd.title for cmd in app.get_system_commands(app.screen)}
        assert "Write a paper figure of the marked (or selected) runs" in titles  # the palette
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, PathScreen))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, PathScreen))
        app.screen.query_one("#path", Input).value = "exports/fig.jpg"
        await pilot.press("enter")
        await until(pilot, lambda: any(".pdf, .png or .svg" in n for n in notifications(app)))
        await pilot.pause(0.3)
    assert not (tmp_path / "exports").exists()
