"""Snapshots of the runs view, composer and leaderboard at 80x24 and 120x40.

The store is seeded with fixed runs and metrics in a temp folder that is
also the working directory, so every path on screen is relative (`.kdtui`,
`experiments/…`) and nothing depends on the clock. Regenerate with
`pytest tests/test_app_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import pytest
from test_app import make_app, seed_store, until
from textual.widgets import Input

from engine.core.store import Store

SIZES = [(80, 24), (120, 40)]


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    store = Store(tmp_path / ".kdtui")
    seed_store(store)
    store.close()
    return tmp_path / ".kdtui"


async def settle(pilot) -> None:
    """Data loaded, the selected run's curves and log drawn, no blinking cursor."""
    app = pilot.app
    await until(pilot, lambda: app.loaded and app.followed is not None and app.followed.version > 0)
    await pilot.pause(0.2)
    for box in app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_view(snap_compare, study, size):
    assert snap_compare(make_app(study), terminal_size=size, run_before=settle)


COMPOSED = """name = "simkd-r32x4-r8x4-f4"
seeds = [0, 1, 2]

[data]
dataset = "cifar100"

[teacher]
arch = "resnet32x4"
checkpoint = "teachers/resnet32x4_vanilla.pth"

[student]
arch = "resnet8x4"

[distill]
method = "simkd"
factor = 4

[optim]
lr = [0.01, 0.05]
"""


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_composer(snap_compare, study, size):
    (study.parent / "experiments" / "simkd-r32x4-r8x4-f4.toml").write_text(COMPOSED)

    async def compose(pilot):
        await settle(pilot)
        await pilot.press("o", "enter")  # open it from experiments/
        await until(pilot, lambda: getattr(pilot.app.screen, "experiment", None) is not None)
        await pilot.press("end", *"-v2")  # a new name: saving writes a new file
        await settle(pilot)

    assert snap_compare(make_app(study), terminal_size=size, run_before=compose)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_leaderboard(snap_compare, study, size):
    async def board(pilot):
        await settle(pilot)
        await pilot.press("l")
        await until(pilot, lambda: len(getattr(pilot.app.screen, "shown", [])) == 5)
        await pilot.pause(0.2)

    assert snap_compare(make_app(study), terminal_size=size, run_before=board)


@pytest.fixture
def big(tmp_path, monkeypatch):
    """24 runs: sweeps of three keys, long experiment names (tests/bigstudy.py)."""
    from bigstudy import seed_big

    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    store = Store(tmp_path / ".kdtui")
    seed_big(store)
    store.close()
    return tmp_path / ".kdtui"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_view_long_names_and_sweeps(snap_compare, big, size):
    """8 runs or more in view at 80x24; names shorten in the middle, points stay whole."""
    assert snap_compare(make_app(big), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_leaderboard_long_names_and_sweeps(snap_compare, big, size):
    """Rank, name, head, best top-1 and n in view at 80 columns."""

    async def board(pilot):
        await settle(pilot)
        await pilot.press("l")
        await until(pilot, lambda: len(getattr(pilot.app.screen, "shown", [])) == 12)
        await pilot.pause(0.2)

    assert snap_compare(make_app(big), terminal_size=size, run_before=board)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help(snap_compare, study, size):
    """? on the runs view: every key of the screen and of the app, with what it does."""
    from kdtui.screens.help import HelpScreen

    async def helped(pilot):
        await settle(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))
        await pilot.pause(0.2)

    assert snap_compare(make_app(study), terminal_size=size, run_before=helped)
