"""Bad input gets one clear error, exit 2, and nothing stored: 200+ hostile files, three commands.

Each file of tests/hostile.py goes through `kdtui validate`, `kdtui run --dry-run` and
`kdtui submit --no-start` as a user types them (Typer's runner, in-process: the
subprocess version that prints the table is `python -m tests.hostile`).
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from engine.core import reading, schema
from kdtui.cli import app
from tests.hostile import COMMANDS, args_for, corpus, materialize, verdict

runner = CliRunner()
CASES = corpus()


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def test_the_corpus_has_over_200_distinct_hostile_files():
    assert len(CASES) >= 200
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.timeout(120)  # a hang fails the case instead of the whole run
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_file_gets_one_clear_error_exit_2_and_stores_nothing(case, folder, monkeypatch):
    monkeypatch.chdir(folder)  # relative checkpoints resolve from the working directory
    path = materialize(case, folder)
    for command in COMMANDS:
        home = folder / f"home-{case.id}"
        monkeypatch.setenv("KDTUI_HOME", str(home))
        result = runner.invoke(app, args_for(command, case, path, home), env={"COLUMNS": "200"})
        out = plain(result.output)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            out += f"\nTraceback: {result.exception!r}"
        assert verdict(case, path, result.exit_code, out, home) == "clear error", (
            f"kdtui {' '.join(command)} {case.id}:\n{out[-2000:]}"
        )
        assert len(out) < 2500  # a 100,000-character value is named, not printed


def test_validate_lists_every_error_of_a_file_each_with_line_and_key(tmp_path):
    f = tmp_path / "many.toml"
    f.write_text(
        'name = "many"\n'
        "[data]\n"
        "batch_size = 0\n"  # line 3
        "[optim]\n"
        "lr = nan\n"  # line 5
        "epocs = 3\n"  # line 6
        "[run]\n"
        'device = "gpu"\n'  # line 8
    )
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2
    errors = [line for line in plain(result.output).splitlines() if line.startswith("error:")]
    assert [e.split(": ")[1:3] for e in errors] == [
        [f"{f}:3", "data.batch_size"],
        [f"{f}:5", "optim.lr"],
        [f"{f}:6", "optim.epocs"],
        [f"{f}:8", "run.device"],
    ]
    assert "did you mean 'epochs'" in errors[2]


def test_validate_stops_listing_after_twenty_errors(tmp_path):
    f = tmp_path / "flood.toml"
    f.write_text('name = "flood"\n[optim]\n' + "".join(f"k{i} = 1\n" for i in range(5000)))
    result = runner.invoke(app, ["validate", str(f)])
    out = plain(result.output)
    assert result.exit_code == 2
    assert out.count("error:") == schema.ERRORS_MAX and "stopped after 20 errors" in out


def test_a_bad_value_does_not_cascade_into_errors_about_keys_that_were_right(tmp_path):
    f = tmp_path / "one.toml"
    f.write_text(
        'name = "one"\n[teacher]\narch = "resnet99"\ntrain = true\n[student]\narch = "resnet8"\n'
        '[distill]\nmethod = "kd"\n'
    )
    e = pytest.raises(schema.ConfigError, reading.load, f).value
    assert [x.key for x in e.errors] == ["teacher.arch"]  # not also "needs a teacher"


def sweep_file(tmp_path, points: int):
    f = tmp_path / "big.toml"
    lrs = ", ".join(f"{(i + 1) / 10_000:.4f}" for i in range(points))
    f.write_text(
        'name = "big"\n[data]\ndataset = "digits"\n[student]\narch = "resnet8"\n'
        f'[optim]\nepochs = 1\n[sweep]\n"optim.lr" = [{lrs}]\n'
    )
    return f


def test_more_than_a_thousand_runs_need_yes_and_nothing_is_queued_without_it(tmp_path):
    f = sweep_file(tmp_path, 1001)
    home = tmp_path / "home"
    ok = runner.invoke(app, ["validate", str(f)])
    assert ok.exit_code == 0 and "1,001 runs" in ok.output and "--yes" in ok.output
    for command in (["run", str(f)], ["submit", str(f), "--no-start"]):
        result = runner.invoke(app, [*command, "--home", str(home)])
        assert result.exit_code == 2, result.output
        assert "1,001 runs" in result.output and "--yes" in result.output
        assert not home.exists()
    queued = runner.invoke(app, ["submit", str(f), "--no-start", "--yes", "--home", str(home)])
    assert queued.exit_code == 0, queued.output
    from engine.core.store import Store

    assert len(Store(home).runs()) == 1001


def test_a_checkpoint_path_is_checked_from_the_working_directory_like_submit_resolves_it(
    tmp_path, monkeypatch
):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "t.pth").write_bytes(b"weights")
    f = tmp_path / "exps" / "kd.toml"
    f.parent.mkdir()
    f.write_text(
        'name = "kd"\n[teacher]\narch = "resnet8"\ncheckpoint = "ckpt/t.pth"\n'
        '[student]\narch = "resnet8"\n[distill]\nmethod = "kd"\n'
    )
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["validate", str(f)]).exit_code == 0
    monkeypatch.chdir(f.parent)  # from elsewhere the same relative path names nothing
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2
    assert "teacher.checkpoint: no such file" in plain(result.output)
    assert str(f.parent / "ckpt" / "t.pth") in plain(result.output)
