"""The key map (README "Keys"), key by key on every screen: a key in, a screen or a toast out.

One meaning per key: esc and q go back from every sub-screen, q quits only from the
runs view, ctrl+q quits everywhere, ? and F1 open the screen's keys, and a key that
does not apply says why in a toast instead of doing nothing.
"""

from __future__ import annotations

import pytest
from test_app import make_app, notifications, seed_store, until

from engine.core.store import Store


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    store = Store(tmp_path / ".kdtui")
    ids = seed_store(store)
    store.close()
    return tmp_path / ".kdtui", ids


def screens():
    from kdtui.screens.compare import CompareScreen
    from kdtui.screens.compose import ComposerScreen
    from kdtui.screens.dialogs import (
        ChoiceScreen,
        ConfigScreen,
        ConfirmScreen,
        ExperimentPicker,
        PathScreen,
        TextScreen,
    )
    from kdtui.screens.help import HelpScreen
    from kdtui.screens.leaderboard import LeaderboardScreen
    from kdtui.screens.members import MembersScreen
    from kdtui.screens.runs import RunsScreen

    return dict(
        runs=RunsScreen,
        board=LeaderboardScreen,
        compose=ComposerScreen,
        compare=CompareScreen,
        members=MembersScreen,
        config=ConfigScreen,
        help=HelpScreen,
        confirm=ConfirmScreen,
        choice=ChoiceScreen,
        path=PathScreen,
        picker=ExperimentPicker,
        text=TextScreen,
    )


# (screen, key, what happens): a screen's name (it is on top after the key) or "toast: text"
KEY_MAP = [
    ("runs", "l", "board"),
    ("runs", "a", "compose"),
    ("runs", "o", "picker"),
    ("runs", "c", "compose"),
    ("runs", "v", "config"),
    ("runs", "x", "toast: is done: nothing to cancel"),
    ("runs", "r", "toast: is done: nothing to resume (c clones it)"),
    ("runs", "m", "toast: mark two or more runs"),
    ("runs", "g", "path"),
    ("runs", "E", "toast: engine start disabled"),
    ("runs", "b", "toast: terminal bell on"),
    ("runs", "question_mark", "help"),
    ("runs", "f1", "help"),
    ("runs", "ctrl+c", "toast: Press ctrl+q to quit the app (q on the runs view)"),
    ("runs", "escape", "runs"),
    ("runs", "d", "confirm"),  # run management (tests/test_run_management.py: what each does)
    ("runs", "n", "text"),
    ("runs", "t", "text"),
    ("runs", "slash", "runs"),
    ("board", "escape", "runs"),
    ("board", "q", "runs"),
    ("board", "r", "board"),  # r resumes a run in the runs view; here it means nothing
    ("board", "s", "choice"),
    ("board", "e", "choice"),
    ("board", "m", "toast: mark two or more runs"),
    ("board", "p", "toast: baseline pinned"),
    ("board", "enter", "members"),
    ("board", "question_mark", "help"),
    ("board", "ctrl+c", "toast: Press ctrl+q to quit the app;"),
    ("compare", "escape", "runs"),
    ("compare", "q", "runs"),
    ("compare", "g", "path"),
    ("compare", "f1", "help"),
    ("members", "escape", "board"),
    ("members", "q", "board"),
    ("members", "question_mark", "help"),
    ("config", "escape", "runs"),
    ("config", "q", "runs"),
    ("config", "v", "runs"),
    ("config", "c", "compose"),
    ("config", "f1", "help"),
    ("compose", "escape", "runs"),
    ("compose", "f1", "help"),
    ("help", "escape", "runs"),
    ("help", "q", "runs"),
    ("help", "question_mark", "runs"),
    ("help", "f1", "runs"),
    ("picker", "escape", "runs"),
    ("choice", "escape", "board"),
    ("path", "escape", "runs"),
    ("confirm", "escape", "runs"),
    ("confirm", "n", "runs"),
    ("text", "escape", "runs"),
]


async def reach(pilot, where: str, ids) -> None:
    """From the runs view (the selection on a finished run) to `where`, as a user would."""
    app = pilot.app
    kinds = screens()
    runs = app.screen
    await until(pilot, lambda: app.loaded and runs.table.selected_id is not None)
    runs.select_run(ids["kd-r32x4-r8x4"][0])  # a done run: x and r do not apply
    await pilot.pause()
    keys = {
        "runs": [],
        "board": ["l"],
        "compose": ["a"],
        "compare": ["space", "space", "m"],
        "members": ["l", "enter"],
        "config": ["v"],
        "help": ["question_mark"],
        "picker": ["o"],
        "choice": ["l", "s"],
        "path": ["g"],
        "text": ["n"],
    }
    if where == "confirm":
        runs.select_run(ids["simkd-r32x4-r8x4"][1])  # queued: x asks
        await pilot.pause()
        keys["confirm"] = ["x"]
    for key in keys[where]:
        await pilot.press(key)
        await pilot.pause()
    await until(pilot, lambda: isinstance(app.screen, kinds[where]), what=f"the {where} screen")
    if where == "board":
        await until(pilot, lambda: len(app.screen.shown) == 5)


@pytest.mark.parametrize("where", sorted({w for w, _, _ in KEY_MAP}))
async def test_every_key_of_the_key_map_does_what_the_readme_says(home, where):
    store_home, ids = home
    kinds = screens()
    for screen, key, effect in KEY_MAP:
        if screen != where:
            continue
        app = make_app(store_home)
        async with app.run_test(size=(120, 40)) as pilot:
            await reach(pilot, where, ids)
            app._notifications.clear()
            await pilot.press(key)
            await pilot.pause()
            if effect.startswith("toast: "):
                wanted = effect.removeprefix("toast: ")
                await until(
                    pilot,
                    lambda w=wanted, a=app: any(w in n for n in notifications(a)),
                    what=f"{key} on {where}: {wanted!r} in {notifications(app)}",
                )
                assert isinstance(app.screen, kinds[where]), (key, where)
            else:
                await until(
                    pilot,
                    lambda e=effect, a=app: isinstance(a.screen, kinds[e]),
                    what=f"{key} on {where} -> {effect} (on {type(app.screen).__name__})",
                )


async def test_q_quits_from_the_runs_view_only_and_ctrl_q_from_anywhere(home):
    store_home, ids = home
    app = make_app(store_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await reach(pilot, "runs", ids)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, what="q to quit")
    app = make_app(store_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await reach(pilot, "members", ids)
        await pilot.press("ctrl+q")
        await until(pilot, lambda: not app.is_running, what="ctrl+q to quit")


def test_run_management_keys_stay_free_in_the_runs_view():
    """d delete, / filter, n note, t tag belong to run management (issue 16 item 4)."""
    from kdtui.app import KdApp
    from kdtui.screens.runs import RunsScreen

    owners = {"d": "delete", "slash": "filter", "n": "note", "t": "tag"}
    for binding in [*RunsScreen.BINDINGS, *KdApp.BINDINGS]:
        for key in binding.key.split(","):
            if key in owners:
                assert owners[key] in binding.action, binding


async def test_help_lists_the_screens_keys_from_its_bindings_and_esc_closes_it(home):
    from kdtui.screens.help import HelpScreen
    from kdtui.screens.leaderboard import LeaderboardScreen

    store_home, ids = home
    app = make_app(store_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await reach(pilot, "board", ids)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        rows = {key: (what, where) for where, key, what in app.screen.rows}
        for binding in LeaderboardScreen.BINDINGS:  # every key of the screen, with its tooltip
            keys = " ".join(
                app.get_key_display(binding.with_key(k, binding.key_display))
                for k in binding.key.split(",")
            )
            assert rows[keys] == (binding.tooltip, "here"), binding
        assert rows["? f1"][1] == "everywhere" and rows["^q"][1] == "everywhere"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        # the palette's "Keys" opens the same help (Textual's own panel ignored esc)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Keys: what")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help from the palette")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))


async def test_the_footer_shows_the_palette_key_at_80_columns(home):
    from textual.widgets import Footer

    store_home, ids = home
    for where in ("runs", "board"):
        app = make_app(store_home)
        async with app.run_test(size=(80, 24)) as pilot:
            await reach(pilot, where, ids)
            await pilot.pause(0.2)
            footer = app.screen.query_one(Footer)
            assert footer.show_command_palette
            shown = app.export_screenshot()
            assert "palette" in shown and "Help" in shown, where


async def test_ctrl_c_says_how_to_quit_in_plain_text(home):
    store_home, ids = home
    app = make_app(store_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await reach(pilot, "runs", ids)
        await pilot.press("ctrl+c")
        await until(pilot, lambda: notifications(app))
        (toast,) = app._notifications
        assert "[b]" not in toast.message and "ctrl+q" in toast.message
        assert app.is_running


async def test_open_without_an_experiments_folder_says_where_it_looked(tmp_path, monkeypatch):
    from textual.widgets import OptionList

    from kdtui.screens.dialogs import ExperimentPicker

    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path / ".kdtui")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.loaded)
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, ExperimentPicker))
        options = app.screen.query_one(OptionList)
        lines = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert f"no experiments folder: looked for {tmp_path / 'experiments'}" in lines[0]
        assert any("a (in the runs view) composes one" in line for line in lines)


async def test_thirteen_fused_runs_ending_together_make_one_toast(tmp_path, monkeypatch):
    from engine.core import reading

    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / ".kdtui")
    exp = reading.loads(
        'name = "fused"\nseeds = [0]\n[data]\ndataset = "digits"\n[student]\narch = "resnet8"\n'
        '[distill]\nmethod = "vanilla"\n[sweep]\n"optim.lr" = '
        + str([0.01 * (i + 1) for i in range(13)])
    )
    runs = store.submit(exp, source="experiments/fused.toml")
    assert len(runs) == 13
    app = make_app(tmp_path / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded)
        for r in runs:
            store.claim(r.id)
        await until(pilot, lambda: all(r.status == "running" for r in app.runs))
        for r in runs:  # as the engine ends a fused group: one commit per run
            store.update(r.id, best_top1=90.0)
            store.finish(r.id, "done")
            await pilot.pause(0.05)  # the app polls in between: the ends span polls
        await until(pilot, lambda: notifications(app), what="the toast")
        await pilot.pause(1.2)  # more polls: still one toast
        (toast,) = app._notifications
        assert toast.title == "13 runs ended: 13 done"
        assert toast.message.count("\n") == 4 and "… and 9 more" in toast.message
    store.close()


async def test_accuracy_counts_epochs_from_1_and_the_loss_plot_says_log(home):
    from kdtui.widgets.plots import CurvePlot

    store_home, ids = home
    app = make_app(store_home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.query_one("#acc", CurvePlot).points > 0)
        xs, _ = screen.query_one("#acc", CurvePlot).series["top1"]
        assert xs[:2] == [1, 2]  # the store keeps epoch 0: `kdtui plot` draws it as 1
        assert "(log y)" in str(screen.query_one("#loss", CurvePlot).border_title)


async def test_80x24_shows_8_runs_and_z_cycles_the_detail_panels(tmp_path, monkeypatch):
    from bigstudy import seed_big

    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / ".kdtui")
    seed_big(store)
    store.close()
    app = make_app(tmp_path / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.row_count == 24)
        await pilot.pause(0.2)
        table = screen.table
        rows_in_view = table.scrollable_content_region.height - table.header_height
        assert rows_in_view >= 8
        assert screen.query_one("#plots").display and not screen.query_one("#bottom").display
        await pilot.press("z")
        await pilot.pause()
        assert not screen.query_one("#plots").display and screen.query_one("#log").region
        await pilot.press("z")
        await pilot.pause()
        assert not screen.query_one("#detail").display
        assert table.scrollable_content_region.height - table.header_height >= 16
        # every sweep point is whole at 80 columns too: the name shortens instead
        name = table.get_row_at(0)[2].plain
        assert name.endswith("lr=0.05 f=2 wd=0.0001 seed=0") and "…" in name


def test_the_readme_key_map_lists_every_key_the_app_binds():
    import re
    from pathlib import Path

    from kdtui.app import KdApp

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("### Keys") :]
    section = section[: section.index("\n## ")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = {"esc": "escape", "?": "question_mark", "/": "slash"}
    documented = {
        names.get(k, k) for row in rows for k in re.findall(r"`([^`]+)`", row.split("|")[1])
    }
    bound = {
        key
        for kind in [KdApp, *screens().values()]
        for binding in kind.BINDINGS
        for key in binding.key.split(",")
    }
    assert bound <= documented, bound - documented
