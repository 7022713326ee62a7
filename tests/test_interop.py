"""Getting runs into other tools: TensorBoard event files and `--json` listings.

The event files are read back with TensorBoard's own reader (EventAccumulator) and the
hparams plugin's own parsers; the JSON is parsed as a script would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.core import leaderboard as lb
from engine.core import reading, records
from engine.core.store import Store
from kdtui.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

SWEEP = """
name = "sweep"
seeds = [0, 1]
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
EPOCHS, STEPS = 3, 4


def log_run(store: Store, run, epochs: int = EPOCHS) -> dict[str, list[tuple[int, float]]]:
    """Write what a worker writes; returns {metric: [(x, value)]} with x as TensorBoard
    should show it (global step per step, epoch from 1 per epoch)."""
    rows, expected = [], {}
    for e in range(epochs):
        for k in range(STEPS):
            step = e * STEPS + k + 1
            for name, value in (
                ("train/loss", 2.0 / step),
                ("train/loss_ce", 1.5 / step),
                ("train/lr", 0.1),
            ):
                rows.append((e, step, name, value))
                expected.setdefault(name, []).append((step, value))
        for name, value in (
            ("test/top1", 60.0 + e + run.seed),
            ("test/top5", 90.0 + e),
            ("train/top1", 70.0 + e),
            ("lr", 0.1),
            ("images_per_s", 1000.0 + e),
        ):
            rows.append((e, (e + 1) * STEPS, name, value))
            expected.setdefault(name, []).append((e + 1, value))
    store.add_metrics(run.id, rows, when=1_700_000_000.0 + run.id)
    return expected


@pytest.fixture
def sweep(store):
    """Four runs: three done and logged, one still queued (nothing logged)."""
    runs = store.submit(reading.loads(SWEEP))
    logged = {}
    for r in runs[:3]:
        logged[r.id] = log_run(store, r)
        store.update(r.id, status="done", epoch=EPOCHS, best_top1=62.0, last_top1=61.5)
    store.finish(runs[2].id, "failed", "RuntimeError: boom")
    return runs, logged


def read(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_export_holds_every_metric_and_the_config_as_hparams(sweep, home, tmp_path):
    from tensorboard.plugins.hparams import api_pb2, metadata

    runs, logged = sweep
    out = tmp_path / "tb"
    result = runner.invoke(app, ["export", "--format", "tensorboard", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 3 runs" in result.output and "1 run with no metrics yet left out" in result.output
    folders = sorted(p.name for p in out.iterdir())
    assert folders == [f"{r.id}-sweep-{r.label.replace(' ', '_')}" for r in runs[:3]]
    assert folders[0] == f"{runs[0].id}-sweep-lr=0.1_seed=0"
    for r in runs[:3]:
        folder = out / f"{r.id}-sweep-{r.label.replace(' ', '_')}"
        steps, epochs = read(folder), read(folder / "epoch")
        found = {
            **{t: steps.Scalars(t) for t in steps.Tags()["scalars"]},
            **{t: epochs.Scalars(t) for t in epochs.Tags()["scalars"]},
        }
        assert set(found) == set(logged[r.id])  # every metric the store holds
        for name, points in logged[r.id].items():
            got = [(e.step, e.value) for e in found[name]]
            assert got == [(x, pytest.approx(v)) for x, v in points], name
        # hparams: the session start holds the run's resolved config, dotted
        content = steps.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content
        start = metadata.parse_session_start_info_plugin_data(content)
        hp = start.hparams
        assert hp["optim.lr"].number_value == pytest.approx(r.load_config().optim.lr)
        assert hp["distill.method"].string_value == "vanilla"
        assert hp["seed"].number_value == r.seed and hp["run_id"].number_value == r.id
        assert hp["fingerprint"].string_value == r.fingerprint
        assert hp["optim.milestones"].string_value == "[150, 180, 210]"
        assert "seeds" not in hp
        content = steps.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content
        end = metadata.parse_session_end_info_plugin_data(content)
        want = "STATUS_FAILURE" if r.id == runs[2].id else "STATUS_SUCCESS"
        assert api_pb2.Status.Name(end.status) == want


def test_event_steps_only_grow_in_every_file(sweep, home, tmp_path):
    """What TensorBoard's reloader and `wandb sync --sync-tensorboard` assume of a file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = tmp_path / "tb"
    assert runner.invoke(app, ["export", "-f", "tensorboard", "-o", str(out)]).exit_code == 0
    files = sorted(out.rglob("events.out.tfevents.*"))
    assert len(files) == 6  # 3 runs: per-step file + epoch/ file each
    for f in files:
        steps = [e.step for e in EventFileLoader(str(f)).Load() if e.HasField("summary")]
        assert steps == sorted(steps), f


def test_exporting_again_replaces_the_event_files(sweep, home, tmp_path):
    out = tmp_path / "tb"
    for _ in range(2):
        assert runner.invoke(app, ["export", "-f", "tensorboard", "-o", str(out)]).exit_code == 0
    for folder in [p for p in out.rglob("*") if p.is_dir()]:
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1, folder
    one = next(p for p in out.iterdir())
    assert [e.step for e in read(one / "epoch").Scalars("test/top1")] == [1, 2, 3]


def test_tensorboard_export_needs_a_folder_and_names_the_fix(sweep, home, tmp_path):
    no_dir = runner.invoke(app, ["export", "--format", "tensorboard"])
    assert no_dir.exit_code == 2 and "-o DIR" in no_dir.output
    (tmp_path / "file").write_text("x")
    on_file = runner.invoke(app, ["export", "-f", "tensorboard", "-o", str(tmp_path / "file")])
    assert on_file.exit_code == 2 and "give a folder" in on_file.output
    nothing = runner.invoke(app, ["export", "-f", "tensorboard", "-e", "nosuch", "-o", "tb"])
    assert nothing.exit_code == 2 and "no runs of experiment 'nosuch'" in nothing.output
    other = runner.invoke(app, ["export", "--format", "xls"])
    assert other.exit_code == 2 and "md, csv, latex, tensorboard" in other.output


def test_tensorboard_is_loaded_by_the_export_alone():
    code = (
        "import kdtui.cli, engine.core.tbexport, engine.core.records, engine.core.curves, sys; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'torch')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------- --json
def test_ls_json_is_a_versioned_document_of_every_run(sweep, home):
    runs, _ = sweep
    result = runner.invoke(app, ["ls", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == records.SCHEMA == 1 and doc["kind"] == "runs"
    assert doc["store"] == str(home)
    assert [r["id"] for r in doc["runs"]] == [r.id for r in runs]
    for rec in doc["runs"]:
        assert tuple(rec) == records.RUN_FIELDS  # the documented fields, in order
    first = doc["runs"][0]
    assert first["status"] == "done" and first["best_top1"] == 62.0
    assert first["point"] == {"optim.lr": 0.1} and first["seed"] == 0
    assert first["teacher"] is None and first["fingerprint"] == runs[0].fingerprint
    assert doc["runs"][2]["error"] == "RuntimeError: boom"
    assert doc["runs"][3]["status"] == "queued" and doc["runs"][3]["best_top1"] is None
    only = json.loads(runner.invoke(app, ["ls", "--json", "--status", "queued"]).stdout)
    assert [r["id"] for r in only["runs"]] == [runs[3].id]


def test_ls_json_says_dead_for_a_running_run_whose_process_is_gone(sweep, home, store):
    runs, _ = sweep
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.update(runs[3].id, status="running", pid=gone.pid, started=1.0, heartbeat=1.0)
    doc = json.loads(runner.invoke(app, ["ls", "--json"]).stdout)
    assert doc["runs"][3]["status"] == "dead"


def test_leaderboard_json_has_the_rows_their_figures_and_member_runs(sweep, home, store):
    runs, _ = sweep
    result = runner.invoke(app, ["leaderboard", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["kind"] == "leaderboard"
    rows = lb.build_rows(store.runs())
    assert [r["name"] for r in doc["rows"]] == [row.name for row in rows]
    for rec in doc["rows"]:
        assert tuple(rec) == records.ROW_FIELDS
        for m in rec["members"]:
            assert tuple(m) == records.MEMBER_FIELDS
    lr01 = next(r for r in doc["rows"] if r["label"] == "lr=0.1")
    assert lr01["rank"] == 1 and lr01["n"] == 2 and lr01["best_top1_mean"] == 62.0
    assert lr01["status"] == {"done": 2} and lr01["run_ids"] == [runs[0].id, runs[1].id]
    assert lr01["gap_closed"] is None and lr01["gap_note"] == "vanilla run: a baseline itself"
    other = next(r for r in doc["rows"] if r["label"] == "lr=0.05")
    assert other["status"] == {"failed": 1, "queued": 1} and other["best_top1_mean"] is None
    failed = next(m for m in other["members"] if m["status"] == "failed")
    assert not failed["counted"] and "boom" in failed["note"]


def test_json_escapes_control_characters_in_names(home, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = store.submit(reading.loads(SWEEP))
    store.update(runs[0].id, error="bad \x1b[31mred\x1b[0m \u202e")
    text = runner.invoke(app, ["ls", "--json"]).stdout
    assert "\x1b" not in text and "\u202e" not in text
    assert json.loads(text)["runs"][0]["error"] == "bad \x1b[31mred\x1b[0m \u202e"


def test_empty_store_lists_are_empty_documents(home):
    assert json.loads(runner.invoke(app, ["ls", "--json"]).stdout)["runs"] == []
    assert json.loads(runner.invoke(app, ["leaderboard", "--json"]).stdout)["rows"] == []


# ---------------------------------------------------------------- real training end to end
TRAINED = """
name = "e2e"
seeds = [0, 1]
[data]
dataset = "digits"
batch_size = 32
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
epochs = 2
[run]
max_steps = 3
log_every = 1
"""


@pytest.mark.slow
def test_a_trained_study_plots_and_exports_every_metric_the_worker_logged(tmp_path, home):
    """Real workers write the metrics; plot and TensorBoard export read them back."""
    f = tmp_path / "e2e.toml"
    f.write_text(TRAINED)
    env = {**os.environ, "KDTUI_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    cli = [sys.executable, "-m", "kdtui.cli"]
    done = subprocess.run(
        [*cli, "run", str(f)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    fig = tmp_path / "fig.svg"
    plot = subprocess.run(
        [*cli, "plot", "e2e", "-m", "test/top1", "-m", "train/loss_kd", "-o", str(fig)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert plot.returncode == 0, plot.stderr
    # the teacher has no KD loss: its line is in the top-1 panel only; the students' two
    # seeds are one line with a band in both
    assert "2 curves: e2e (teacher), e2e (n=2)" in " ".join(plot.stderr.split())
    svg = fig.read_text()
    assert svg.count('id="panel0-curve-') == 2 and svg.count('id="panel1-curve-') == 1
    assert svg.count('id="panel0-band-') == 1 and svg.count('id="panel1-band-') == 1
    out = tmp_path / "tb"
    tb = subprocess.run(
        [*cli, "export", "--format", "tensorboard", "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert tb.returncode == 0, tb.stderr
    store = Store(home)
    for run in store.runs():
        names = {m.name for m in store.metrics(run.id)}
        assert "train/loss" in names and "test/top1" in names
        folder = next(out.glob(f"{run.id}-e2e-*"))
        tags = set(read(folder).Tags()["scalars"]) | set(read(folder / "epoch").Tags()["scalars"])
        assert tags == names
    store.close()
