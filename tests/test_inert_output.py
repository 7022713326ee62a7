"""Output is inert: names, labels and errors print as the text they are, everywhere.

A sweep value `[/]` used to crash `submit`, `engine status` and `rm` (Rich read it
as a closing tag), `[bold red]…` was rendered as style, and an ESC, CR or bidi
override in a stored name went to the terminal and into exported tables raw.
"""

from __future__ import annotations

import io
import os
import re

import pytest
from typer.testing import CliRunner

from engine.core import export as exportmod
from engine.core import leaderboard, reading
from engine.core.inert import printable
from engine.core.store import Store
from kdtui.cli import app
from kdtui.inert import InertConsole, text
from tests.test_engine import box, tiny  # noqa: F401  (the real-engine fixture)

runner = CliRunner()
HOSTILE = "evil\x1b[2J\r\x9b31m\u202eexe.txt"  # clear screen, carriage return, C1 CSI, RTL override
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

SWEEP = '[sweep]\n"data.root" = ["[/]", "[bold red]boom[/]"]\n'  # valid paths that look like markup
MARKUP_SWEEP = f"""
name = "markup"
[data]
dataset = "digits"
[student]
arch = "resnet8"
[optim]
epochs = 1
{SWEEP}"""


def test_printable_escapes_controls_c1_and_bidi_and_keeps_other_unicode():
    assert printable(HOSTILE) == "evil\\x1b[2J\\r\\x9b31m\\u202eexe.txt"
    assert printable("a\nb\tc", keep="\n") == "a\nb\\tc"
    assert printable("resnet32x4→resnet8x4 ± 0.5 名前 ✓ é") == "resnet32x4→resnet8x4 ± 0.5 名前 ✓ é"


def test_the_cli_console_prints_markup_as_text_with_no_styling_or_control_characters():
    buf = io.StringIO()
    console = InertConsole(file=buf, force_terminal=True, width=200, color_system="truecolor")
    console.print("pid 1234 [/] [bold red]x[/] :smile: " + HOSTILE)
    console.print(text(("error:", "bold red"), " ", HOSTILE))
    first, second = buf.getvalue().splitlines()
    # no markup read, no highlighter colouring the number, no emoji code, controls visible
    assert first == "pid 1234 [/] [bold red]x[/] :smile: " + printable(HOSTILE)
    assert second.endswith(" " + printable(HOSTILE)) and "\x1b[1;31merror:" in second


def test_a_100000_character_name_prints_whole_once_and_fast(tmp_path):
    buf = io.StringIO()
    InertConsole(file=buf, width=80).print("ok f.toml: " + "a" * 100_000)
    assert buf.getvalue().count("a") == 100_000  # folded, nothing lost
    f = tmp_path / "long.toml"
    f.write_text(f'name = "{"a" * 100_000}"\n')
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2
    assert "is 100,000 characters long; at most 128" in result.output
    assert len(result.output) < 500  # the name is measured, not echoed


@pytest.fixture
def markup_runs(tmp_path, home):
    f = tmp_path / "markup.toml"
    f.write_text(MARKUP_SWEEP)
    result = runner.invoke(app, ["submit", str(f), "--no-start"], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 0, result.output
    return result.output


def test_submit_prints_sweep_labels_that_look_like_markup_as_text(markup_runs, store):
    assert "root=[/] seed=0" in markup_runs and "root=[bold red]boom[/] seed=0" in markup_runs
    assert [r.label for r in store.runs()] == ["root=[/] seed=0", "root=[bold red]boom[/] seed=0"]


def test_ls_and_rm_show_markup_labels_as_text(markup_runs, store):
    ls = runner.invoke(app, ["ls"], env={"COLUMNS": "200"})
    assert ls.exit_code == 0 and "root=[/] seed=0" in ls.output and "[bold red]boom[/]" in ls.output
    for r in store.runs():
        store.finish(r.id, "cancelled", "[/] stopped [bold red]by hand[/]")
    rm = runner.invoke(app, ["rm", "markup", "--yes"], env={"COLUMNS": "200"})
    assert rm.exit_code == 0, rm.output
    assert "root=[/] seed=0" in rm.output and "removed 2 runs" in rm.output


def poison(store: Store, run_id: int) -> None:
    """What an older kdtui (or a hand-edited store) may hold: controls in names and labels."""
    store.conn.execute(
        "UPDATE runs SET experiment=?, label=?, error=? WHERE id=?",
        (f"exp-{HOSTILE}", f"lr={HOSTILE} seed=0", f"failed: {HOSTILE}", run_id),
    )


def test_control_characters_in_a_stored_run_are_escaped_in_ls_logs_and_exports(
    markup_runs, store, tmp_path
):
    run = store.runs()[0]
    poison(store, run.id)
    run.path.joinpath("log.txt").write_text(f"epoch 1 {HOSTILE}\n\tindented\n")
    store.finish(run.id, "failed", f"failed: {HOSTILE}")
    outputs = {
        "ls": runner.invoke(app, ["ls"], env={"COLUMNS": "250"}).output,
        "logs": runner.invoke(app, ["logs", str(run.id)]).output,
        "leaderboard": runner.invoke(app, ["leaderboard"], env={"COLUMNS": "250"}).output,
    }
    for fmt in exportmod.FORMATS:
        out = tmp_path / f"board.{fmt}"
        assert runner.invoke(app, ["export", "-f", fmt, "-o", str(out)]).exit_code == 0
        outputs[fmt] = out.read_text()
    for name, out in outputs.items():
        assert not RAW_CONTROL.search(out), f"{name} printed a raw control character: {out!r}"
        assert "x1b[2J" in out, name  # shown, as an escape
    assert "\tindented" in outputs["logs"]  # a log keeps its tabs and newlines


def test_the_markdown_export_escapes_html_and_pipes():
    row = leaderboard.Row(
        '<img src=x onerror="alert(1)"> & | co',
        "",
        "student",
        "kd",
        "",
        "resnet8",
        "digits",
        "student",
        [1],
        ["done"],
        best=[50.0],
    )
    md = exportmod.to_markdown([row])
    assert "<img" not in md and '&lt;img src=x onerror="alert(1)"&gt; &amp; \\| co' in md
    latex = exportmod.to_latex([row])
    assert "\\&" in latex and "<img" in latex  # LaTeX has no HTML, only its own specials
    csv_text = exportmod.to_csv(
        [
            leaderboard.Row(
                "a\x1bb\rc", "", "student", "kd", "", "r8", "digits", "student", [1], ["done"]
            )
        ]
    )
    assert "a\\x1bb\\rc" in csv_text and "\x1b" not in csv_text


def test_a_file_name_with_markup_and_control_characters_is_printed_escaped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "[bold]x\x1b[31m.toml"
    (tmp_path / name).write_text('name = "ok"\n')
    result = runner.invoke(app, ["validate", name])
    assert result.exit_code == 0
    assert "ok [bold]x\\x1b[31m.toml: ok, 1 run" in result.output and "\x1b" not in result.output


async def test_the_app_shows_stored_names_labels_and_notices_as_escaped_text(tmp_path, monkeypatch):
    from tests.test_app import make_app, until

    monkeypatch.chdir(tmp_path)
    home = tmp_path / ".kdtui"
    store = Store(home)
    (run,) = store.submit(reading.loads('name = "x"\n[optim]\nepochs = 1\n'))
    poison(store, run.id)
    store.conn.execute("UPDATE runs SET label=? WHERE id=?", ("[bold red]boom[/] seed=0", run.id))
    store.close()
    app_ = make_app(home)
    async with app_.run_test(size=(160, 40)) as pilot:
        screen = app_.screen
        await until(pilot, lambda: screen.table.row_count == 1, what="the run in the table")
        cells = [str(c) for c in screen.table.get_row(str(run.id))]
        name = next(c for c in cells if c.startswith("exp-"))
        assert name == f"exp-{printable(HOSTILE)} [bold red]boom[/] seed=0"
        title = str(screen.query_one("#detail").border_title)
        assert "x1b[2J" in title and "\x1b" not in title
        app_.notify(f"run {HOSTILE} [/] done", title=HOSTILE)
        await pilot.pause()
        shown = [(n.title, n.message) for n in app_._notifications]
        assert (printable(HOSTILE), f"run {printable(HOSTILE)} [/] done") in shown


@pytest.mark.slow
def test_engine_status_cancel_and_rm_of_running_runs_with_markup_labels(box):  # noqa: F811
    exp = box.write("markup.toml", tiny("markup", epochs=50, steps=100, more=SWEEP))
    queued = box.cli("submit", exp)
    assert "root=[/] seed=0" in queued.stdout
    box.wait_training(1)
    status = box.cli("engine", "status", env={**os.environ, "COLUMNS": "250"})
    assert "root=[/] seed=0" in status.stdout, status.stdout
    box.cli("cancel", "markup")
    box.wait_status(1, "cancelled")
    box.wait_status(2, "cancelled")
    removed = box.cli("rm", "markup", "--yes")
    assert "root=[bold red]boom[/] seed=0" in removed.stdout and "removed 2 runs" in removed.stdout
