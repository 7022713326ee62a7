"""Managing runs: delete, filter, notes and tags, from the app's keys and from the CLI.

A key or a command in; a row, a file, a toast or a widget's text out.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from engine.core import annotations, layout, reading, records
from engine.core.store import SCHEMA_VERSION, Store
from kdtui.cli import app as cli
from tests.test_app import make_app, notifications, seed_store, until

runner = CliRunner()

SWEEP = """
name = "sweep"
seeds = [0]
[data]
dataset = "digits"
[student]
arch = "resnet8"
[distill]
method = "vanilla"
[optim]
lr = [0.1, 0.05]
epochs = 3
"""


@pytest.fixture
def seeded(tmp_path, monkeypatch):
    """tests/test_app.py's study: done seeds, a running and a queued sweep point, a failure."""
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / ".kdtui")
    ids = seed_store(store)
    store.close()
    return tmp_path / ".kdtui", ids


@pytest.fixture
def sweep(store):
    """Two runs: one done (it ranks), one queued."""
    runs = store.submit(reading.loads(SWEEP), source="sweep.toml")
    store.update(runs[0].id, status="done", epoch=3, best_top1=62.0, last_top1=61.0)
    return runs


def kdtui(*args: str, code: int = 0):
    result = runner.invoke(cli, list(args))
    assert result.exit_code == code, result.output
    return result


# ---------------------------------------------------------------- headless
def test_note_and_tag_commands_show_in_ls_json_exports_and_the_run_folder(sweep, store):
    done, queued = sweep
    assert "run 1: tags paper table-2" in kdtui("tag", "1", "Paper", "table-2").stdout
    kdtui("note", "1", "lr 0.1 is the one for the paper")
    kdtui("tag", "sweep", "seen")  # an experiment name tags every run of it
    # the row and the run folder agree (a store rebuilt from folders keeps them)
    run = store.run(done.id)
    assert run.note == "lr 0.1 is the one for the paper"
    assert run.tag_list == ["paper", "seen", "table-2"]
    assert annotations.read_folder(run.dir) == (run.note, run.tag_list)
    assert json.loads((run.path / layout.ANNOTATIONS).read_text())["tags"] == run.tag_list
    assert store.run(queued.id).tag_list == ["seen"]

    wide = runner.invoke(cli, ["ls"], env={"COLUMNS": "250"}).stdout
    assert "#paper #seen #table-2 · lr 0.1 is the one for the paper" in wide
    listed = json.loads(kdtui("ls", "--json").stdout)["runs"]
    assert tuple(listed[0]) == records.RUN_FIELDS
    assert listed[0]["note"] == run.note and listed[0]["tags"] == ["paper", "seen", "table-2"]
    assert listed[1]["note"] == "" and listed[1]["tags"] == ["seen"]
    tagged = json.loads(kdtui("ls", "--json", "--tag", "Paper").stdout)["runs"]
    assert [r["id"] for r in tagged] == [done.id]  # `--tag` lists the runs that carry it
    board = json.loads(kdtui("leaderboard", "--json").stdout)["rows"]
    member = next(m for row in board for m in row["members"] if m["run_id"] == done.id)
    assert tuple(member) == records.MEMBER_FIELDS
    assert member["tags"] == run.tag_list and member["run_note"] == run.note

    lines = list(csv.DictReader(io.StringIO(kdtui("export", "--format", "csv", "--runs").stdout)))
    exported = next(line for line in lines if line["run_id"] == str(done.id))
    assert exported["tags"] == "paper seen table-2" and exported["run_note"] == run.note
    markdown = kdtui("export", "--format", "md", "--runs").stdout
    assert "| run note |" in markdown and "lr 0.1 is the one for the paper" in markdown

    kdtui("tag", "1", "seen", "--remove")
    kdtui("note", "1", "--clear")
    assert store.run(done.id).tag_list == ["paper", "table-2"] and store.run(done.id).note == ""
    assert "run 1: (no note)" in kdtui("note", "1").stdout
    assert "run 1: paper table-2" in kdtui("tag", "1").stdout


def test_hostile_notes_are_inert_and_bad_tags_are_refused_with_the_rule(sweep, store):
    done, _ = sweep
    hostile = "[bold red]boom[/] \x1b[2J\u202egnp.exe"
    kdtui("note", str(done.id), hostile)
    assert store.run(done.id).note == hostile  # stored as typed
    shown = kdtui("note", str(done.id)).stdout
    assert "[bold red]boom[/] \\x1b[2J\\u202egnp.exe" in shown and "\x1b[2J" not in shown
    listed = kdtui("ls", "--json").stdout  # ASCII JSON: the ESC is escaped, the value exact
    assert "\x1b" not in listed and json.loads(listed)["runs"][0]["note"] == hostile

    bad = kdtui("tag", str(done.id), "ok", "no spaces!", code=2)
    assert "tag 'no spaces!' is not allowed" in bad.output and "letters, digits" in bad.output
    assert store.run(done.id).tag_list == []  # nothing half-applied: "ok" was not added
    long = kdtui("note", str(done.id), "x" * (annotations.NOTE_MAX + 1), code=2)
    assert f"at most {annotations.NOTE_MAX:,}" in long.output
    assert store.run(done.id).note == hostile  # the old note is kept
    many = [f"t{i}" for i in range(annotations.TAGS_MAX + 1)]
    assert "at most" in kdtui("tag", str(done.id), *many, code=2).output
    assert "no run or experiment 'nope'" in kdtui("note", "nope", "x", code=2).output


def test_a_store_from_before_notes_opens_and_gains_the_columns(home):
    old = Store(home)
    runs = old.submit(reading.loads(SWEEP))
    # make it a version-3 store: the runs table as it was before notes and tags
    old.conn.execute("ALTER TABLE runs DROP COLUMN note")
    old.conn.execute("ALTER TABLE runs DROP COLUMN tags")
    old.conn.execute("PRAGMA user_version = 3")
    old.close()

    store = Store(home)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    columns = {r[1] for r in store.conn.execute("PRAGMA table_info(runs)")}
    assert {"note", "tags"} <= columns
    assert [(r.note, r.tag_list) for r in store.runs()] == [("", []), ("", [])]
    store.annotate(runs[1].id, note="kept", tags=["b", "a"])
    assert (store.run(runs[1].id).note, store.run(runs[1].id).tag_list) == ("kept", ["a", "b"])


# ---------------------------------------------------------------- the app
def cell_text(screen, run_id: int) -> str:
    return " ".join(str(c) for c in screen.table._cells[str(run_id)])


async def test_d_deletes_after_confirmation_and_n_keeps_the_run(seeded):
    home, ids = seeded
    victim = ids["baseline-r8x4"][0]
    folder = Store(home).run(victim).path
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id is not None)
        assert screen.table.select_run(victim)
        await pilot.press("d")
        await until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
        assert f"#{victim} baseline-r8x4" in str(app.screen.prompt)
        await pilot.press("n")  # no: nothing happens
        await pilot.pause()
        assert victim in app.runs_by_id and folder.is_dir()
        await pilot.press("d", "y")
        await until(pilot, lambda: victim not in app.runs_by_id, what="the row to go")
        assert any(f"deleted 1 run (#{victim})" in n for n in notifications(app))
        assert str(victim) not in screen.table._keys
    store = Store(home)
    assert victim not in [r.id for r in store.runs()]
    assert not store.metrics(victim) and not folder.exists()


async def test_d_deletes_every_marked_run(seeded):
    home, ids = seeded
    kd = ids["kd-r32x4-r8x4"]
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id is not None)
        for run_id in kd:
            screen.table.select_run(run_id)
            await pilot.press("space")
        await pilot.press("d")
        await until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
        assert "Delete 2 runs and their files?" in str(app.screen.prompt)
        await pilot.press("y")
        await until(pilot, lambda: not set(kd) & set(app.runs_by_id), what="both rows to go")
        assert not screen.marked
    assert not set(kd) & {r.id for r in Store(home).runs()}


async def test_d_on_a_running_or_queued_run_is_refused_with_a_toast_saying_why(seeded):
    home, ids = seeded
    running, queued = ids["simkd-r32x4-r8x4"]
    # a live process recorded for it, as a worker would be ("kdtui" in its command line)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kdtui"])
    try:
        store = Store(home)
        store.update(running, pid=worker.pid, heartbeat=store.run(running).created)
        store.close()
        app = make_app(home)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await until(pilot, lambda: screen.table.selected_id is not None)
            assert screen.table.select_run(running)
            await pilot.press("d")
            await until(pilot, lambda: any("not deleted" in n for n in notifications(app)))
            assert any(
                f"run {running} is still running; cancel it first (x)" in n
                for n in notifications(app)
            )
            assert type(app.screen).__name__ == "RunsScreen"  # no dialog
            assert screen.table.select_run(queued)
            await pilot.press("d")
            await until(pilot, lambda: any("still queued" in n for n in notifications(app)))
        assert {running, queued} <= {r.id for r in Store(home).runs()}
    finally:
        worker.kill()
        worker.wait()


async def test_slash_filters_the_table_and_escape_restores_it(seeded):
    home, ids = seeded
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        table = screen.table
        await until(pilot, lambda: table.selected_id is not None)
        total = len(app.runs)
        await pilot.press("slash", *"simkd")
        await until(pilot, lambda: len(table._keys) == 3, what="three simkd runs")
        assert "3 of 8 shown" in str(table.border_title) and total == 8
        await pilot.press("space", *"lr=0.05")  # every word must match: experiment and point
        await until(pilot, lambda: len(table._keys) == 1)
        assert table._keys == [str(ids["simkd-r32x4-r8x4"][0])]
        await pilot.press("enter")  # keeps the filter, back in the table
        assert app.focused is table and len(table._keys) == 1
        await pilot.press("space")  # marking a run keeps the filter
        await pilot.pause()
        assert screen.marked == {ids["simkd-r32x4-r8x4"][0]} and len(table._keys) == 1
        await pilot.press("up", "space")  # (the cursor moved down past the last row: back)
        await pilot.pause()
        assert not screen.marked and len(table._keys) == 1
        await pilot.press("escape")
        await until(pilot, lambda: len(table._keys) == total, what="every run back")
        assert "shown" not in str(table.border_title)
        assert not screen.query_one("#filter").display
        await pilot.press("slash", *"failed")  # status too
        await until(pilot, lambda: table._keys == [str(ids["simkd-wrn"][0])])
        await pilot.press("escape")
        await until(pilot, lambda: len(table._keys) == total)
        # nothing matches: the keys that act on a run say so instead of doing nothing
        await pilot.press("slash", *"no-such-run", "enter")
        await until(pilot, lambda: not table._keys)
        assert "0 of 8 shown" in str(table.border_title)
        for key in "ntd":
            await pilot.press(key)
        await until(pilot, lambda: sum("no run selected" in n for n in notifications(app)) == 3)
        assert type(app.screen).__name__ == "RunsScreen"


async def test_n_and_t_write_a_note_and_tags_shown_in_the_table_and_the_detail(seeded):
    home, ids = seeded
    run_id = ids["kd-r32x4-r8x4"][1]
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id is not None)
        assert screen.table.select_run(run_id)
        await pilot.pause()
        await pilot.press("n")
        await until(pilot, lambda: type(app.screen).__name__ == "TextScreen")
        await pilot.press(*"best kd [b]seed[/b]", "enter")
        await until(pilot, lambda: app.runs_by_id[run_id].note == "best kd [b]seed[/b]")
        await pilot.press("t")
        await until(pilot, lambda: type(app.screen).__name__ == "TextScreen")
        await pilot.press(*"paper bad!tag", "enter")  # refused: the dialog says why and stays
        await pilot.pause()
        error = app.screen.query_one("#text-error")
        assert error.display and "tag 'bad!tag' is not allowed" in str(error.render())
        await pilot.press(*["backspace"] * len(" bad!tag"), *" Table-2", "enter")
        await until(pilot, lambda: app.runs_by_id[run_id].tag_list == ["paper", "table-2"])
        # ✎ marks a note; room is kept for the tags after the sweep point
        shown = "✎ kd-r32x4-r8x4 seed=1 #paper #table-2"
        await until(pilot, lambda: shown in cell_text(screen, run_id), what=shown)
        detail = str(screen.query_one("#annotations").render())
        assert "#paper #table-2 best kd [b]seed[/b]" in detail  # markup shown, not obeyed
        await pilot.press("slash", *"#table-2")
        await until(pilot, lambda: screen.table._keys == [str(run_id)])
    stored = Store(home).run(run_id)
    assert stored.note == "best kd [b]seed[/b]" and stored.tag_list == ["paper", "table-2"]
    assert annotations.read_folder(stored.dir) == (stored.note, stored.tag_list)


async def test_d_never_deletes_through_a_run_folder_that_is_a_symlink(seeded, tmp_path):
    home, ids = seeded
    victim = ids["simkd-wrn"][0]  # failed: removable
    folder = Store(home).run(victim).path
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "data.csv").write_text("1,2,3\n")
    folder.rename(tmp_path / "moved")
    folder.symlink_to(elsewhere)
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id is not None)
        assert screen.table.select_run(victim)
        await pilot.press("d", "y")
        await until(pilot, lambda: victim not in app.runs_by_id, what="the row to go")
        assert any(
            f"kept the folder of run {victim}: {folder} is a symbolic link" in n
            for n in notifications(app)
        )
    assert (elsewhere / "data.csv").read_text() == "1,2,3\n"  # `kdtui rm`'s rule, same code


def test_a_notes_file_planted_as_a_symlink_is_replaced_not_written_through(sweep, store, tmp_path):
    done, _ = sweep
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (done.path / layout.ANNOTATIONS).symlink_to(victim)
    kdtui("note", str(done.id), "mine")
    assert victim.read_text() == "keep me"
    assert not (done.path / layout.ANNOTATIONS).is_symlink()
    assert annotations.read_folder(done.dir) == ("mine", [])
