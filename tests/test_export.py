"""The leaderboard and its Markdown / CSV / LaTeX exports."""

from __future__ import annotations

import csv
import io

import pytest

from engine.core import export as x
from engine.core import leaderboard as lb
from engine.core import reading

STUDY = """
name = "study"
seeds = [0, 1]
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
epochs = 2
[sweep]
"distill.method" = ["vanilla", "kd"]
"""


@pytest.fixture(autouse=True)
def in_a_folder_with_the_teacher(tmp_path, monkeypatch):
    """load() checks checkpoint paths, from the working directory: t.pth is there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.pth").write_bytes(b"weights")


def finished_study(store):
    runs = store.submit(reading.loads(STUDY))
    accs = {("vanilla", 0): 80.0, ("vanilla", 1): 82.0, ("kd", 0): 85.0, ("kd", 1): 86.0}
    for r in runs:
        best = accs[(r.method, r.seed)]
        store.update(
            r.id,
            status="done",
            best_top1=best,
            last_top1=best - 1,
            epoch=2,
            params=78000,
            teacher_top1=90.0 if r.method == "kd" else None,
        )
    return runs


def test_seeds_are_grouped_as_mean_and_std_and_ranked(store):
    finished_study(store)
    rows = lb.build_rows(store.runs())
    assert [r.method for r in rows] == ["kd", "vanilla"]
    kd = rows[0]
    assert kd.n == 2 and kd.best_mean == 85.5
    assert abs(kd.best_std - 0.7071) < 1e-3
    assert kd.head == "student"
    assert lb.fmt_acc(kd.best_mean, kd.best_std) == "85.50 ± 0.71"


def test_gap_closed_uses_the_vanilla_baseline_and_the_measured_teacher(store):
    finished_study(store)
    kd = lb.build_rows(store.runs())[0]
    # (85.5 - 81) / (90 - 81)
    assert abs(kd.gap - 0.5) < 1e-9
    assert lb.fmt_gap(kd.gap) == "50%"


def test_markdown_is_a_github_table_with_escaped_pipes(store):
    finished_study(store)
    store.conn.execute("UPDATE runs SET experiment='a|b'")
    text = x.to_markdown(lb.build_rows(store.runs()))
    lines = text.strip().splitlines()
    assert lines[0].startswith("| # | experiment |")
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    assert "a\\|b" in text
    # every line has the same number of unescaped cell separators
    counts = {line.replace("\\|", "").count("|") for line in lines}
    assert len(counts) == 1


def test_csv_has_numbers_not_formatted_strings(store):
    finished_study(store)
    rows = list(csv.DictReader(io.StringIO(x.to_csv(lb.build_rows(store.runs())))))
    assert rows[0]["method"] == "kd" and float(rows[0]["best_top1_mean"]) == 85.5
    assert rows[0]["head"] == "student" and rows[0]["n"] == "2"


def test_a_csv_line_and_a_json_row_carry_the_same_figures_under_the_same_names(store):
    from engine.core import records

    finished_study(store)
    rows = lb.build_rows(store.runs())
    lines = list(csv.DictReader(io.StringIO(x.to_csv(rows))))
    for rank, (row, line) in enumerate(zip(rows, lines), 1):
        rec = records.row_record(row, rank)
        # every JSON field but the display name and the member list, world size last
        assert set(line) == set(rec) - {"name", "members"}
        assert list(line)[-2:] == ["world_size", "effective_batch"]
        for key in ("best_top1_mean", "last_top1_mean", "teacher_top1", "gap_closed"):
            assert (float(line[key]) if line[key] else None) == pytest.approx(rec[key], abs=1e-4), (
                key
            )
        assert line["run_ids"].split() == [str(i) for i in rec["run_ids"]]
        assert (line["fingerprint"], int(line["n"])) == (rec["fingerprint"], rec["n"])


def test_latex_is_booktabs_with_the_best_value_in_bold(store):
    finished_study(store)
    tex = x.to_latex(lb.build_rows(store.runs()))
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textbf{85.50}" in tex
    assert "\\textbf{81.00}" not in tex
    assert "resnet20$\\rightarrow$resnet8" in tex


def test_unfinished_runs_are_listed_after_finished_ones(store):
    runs = finished_study(store)
    store.update(runs[0].id, status="running", best_top1=None, last_top1=None)
    rows = lb.build_rows(store.runs())
    vanilla = [r for r in rows if r.method == "vanilla"][0]
    assert vanilla.n == 1 and "running" in vanilla.status


# ---------------------------------------------------------------- run identity
DIGITS = """
name = "digits-kd"
seeds = [0]
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
epochs = 2
"""


def submit(store, text=DIGITS, *overrides, tmp_path=None, **done):
    """Submit like `kdtui submit FILE --set ...`; `done` marks every run done with those values."""
    import tempfile
    from pathlib import Path

    folder = Path(tmp_path or tempfile.mkdtemp())
    path = folder / "exp.toml"
    path.write_text(text)
    runs = store.submit(reading.load(path, list(overrides)))
    for r in runs:
        if done:
            store.update(r.id, status="done", epoch=r.epochs, **done)
    return [store.run(r.id) for r in runs]


def test_overrides_are_separate_rows_labelled_by_what_differs_and_a_failed_run_stands_apart(
    store,
):
    (a,) = submit(store, DIGITS, "optim.epochs=2", best_top1=74.0, last_top1=73.0)
    (b,) = submit(store, DIGITS, "optim.epochs=3", "optim.lr=0.1", best_top1=80.0, last_top1=79.0)
    (d,) = submit(store, DIGITS, "optim.lr=0.01", best_top1=60.0, last_top1=59.0)
    (f,) = submit(store, DIGITS, "optim.epochs=2")  # the same config as `a`, and it fails
    store.finish(f.id, "failed", "CUDA out of memory")
    (g,) = submit(store, DIGITS, "optim.epochs=4")  # a config of its own that only failed
    store.finish(g.id, "failed", "boom")
    rows = lb.build_rows(store.runs())
    names = [r.name for r in rows]
    assert names == [
        "digits-kd [epochs=3 lr=0.1]",
        "digits-kd [epochs=2 lr=0.05]",
        "digits-kd [epochs=2 lr=0.01]",
        "digits-kd [epochs=4 lr=0.05]",
    ]
    first, second, third, failed = rows
    assert [r.n for r in rows] == [1, 1, 1, 0]
    assert second.best_mean == 74.0 and second.best_std is None  # the failed run is not in it
    assert second.run_ids == [a.id, f.id] and second.status == "done×1 failed×1"
    note = next(m.note for m in second.members if m.id == f.id)
    assert note.startswith("failed: not in the mean") and "out of memory" in note
    assert failed.best_mean is None and failed.status == "failed"
    assert lb.cells(failed, 4)[5] == "–"


def test_two_seeds_of_one_config_are_one_row_of_n_2(store):
    submit(store, DIGITS, "seeds=[0]", best_top1=80.0, last_top1=80.0)
    submit(store, DIGITS, "seeds=[1]", "run.threads=1", best_top1=82.0, last_top1=82.0)
    (row,) = lb.build_rows(store.runs())
    assert row.n == 2 and row.best_mean == 81.0 and lb.fmt_n(row) == "2"
    assert row.label == ""  # nothing differs


def test_a_rerun_of_a_seed_counts_once_the_latest_run(store):
    (first,) = submit(store, DIGITS, best_top1=80.0, last_top1=80.0)
    (again,) = submit(store, DIGITS, best_top1=84.0, last_top1=84.0)
    (row,) = lb.build_rows(store.runs())
    assert row.n == 1 and row.reruns == 1 and row.best_mean == 84.0
    assert lb.fmt_n(row) == "1 (+1 rerun)"
    assert [m.counted for m in row.members] == [False, True]
    assert row.members[0].note == f"rerun: run {again.id} counts for seed 0"


def test_running_runs_stay_out_of_the_mean_and_a_running_row_ranks_after_finished_ones(store):
    submit(store, DIGITS, "seeds=[0]", best_top1=70.0, last_top1=70.0)
    (running,) = submit(store, DIGITS, "seeds=[1]")
    store.update(running.id, status="running", best_top1=99.0)
    (other,) = submit(store, DIGITS, "optim.lr=0.2")
    store.update(other.id, status="running", best_top1=90.0)
    done, in_progress = lb.build_rows(store.runs())
    assert done.best_mean == 70.0 and done.n == 1 and "running×1" in done.status
    assert in_progress.best_mean is None and lb.fmt_best(in_progress) == "(90.00)"


# ---------------------------------------------------------------- gap closed
KD_AND_VANILLA = DIGITS + '[sweep]\n"distill.method" = ["kd", "vanilla"]\n'


def gap_study(store):
    """kd at 85 (teacher measured at 95) and a vanilla baseline at 75 with the same recipe."""
    runs = submit(store, KD_AND_VANILLA)
    for r in runs:
        kd = r.method == "kd"
        store.update(
            r.id,
            status="done",
            best_top1=85.0 if kd else 75.0,
            last_top1=84.0 if kd else 74.0,
            teacher_top1=95.0 if kd else None,
        )
    return {r.method: r for r in runs}


def test_gap_closed_is_the_formula_and_names_its_baseline(store):
    runs = gap_study(store)
    kd = next(r for r in lb.build_rows(store.runs()) if r.method == "kd")
    assert kd.gap == (85.0 - 75.0) / (95.0 - 75.0)
    assert kd.baseline == 75.0 and kd.baseline_runs == [runs["vanilla"].id]
    assert kd.baseline_label == f"digits-kd [method=vanilla] (#{runs['vanilla'].id})"
    assert lb.cells(kd, 1)[lb.COLUMNS.index("baseline")] == kd.baseline_label
    csv_row = next(r for r in csv.DictReader(io.StringIO(x.to_csv([kd]))) if r["method"] == "kd")
    assert csv_row["gap_closed"] == "0.5000" and csv_row["baseline"] == kd.baseline_label
    assert csv_row["baseline_run_ids"] == str(runs["vanilla"].id)


def test_no_baseline_with_the_same_recipe_is_a_dash_with_the_reason_never_a_borrowed_one(store):
    gap_study(store)
    (other,) = submit(store, DIGITS, "optim.epochs=5", best_top1=90.0, teacher_top1=95.0)
    row = next(r for r in lb.build_rows(store.runs()) if other.id in r.run_ids)
    assert row.gap is None and row.baseline is None and row.baseline_label == ""
    assert row.gap_note.startswith("no finished vanilla resnet8 run on the same data")
    assert lb.cells(row, 1)[lb.COLUMNS.index("gap closed")] == "–"
    (line,) = [r for r in csv.DictReader(io.StringIO(x.to_csv([row])))]
    assert line["gap_closed"] == "" and line["gap_note"] == row.gap_note


def test_a_teacher_not_above_its_baseline_gives_no_gap(store):
    runs = gap_study(store)
    store.update(runs["kd"].id, teacher_top1=70.0)
    kd = next(r for r in lb.build_rows(store.runs()) if r.method == "kd")
    assert kd.gap is None and kd.baseline == 75.0
    assert kd.gap_note.startswith("teacher not above baseline (70.00 <= 75.00)")


def test_a_finished_gap_does_not_drift_when_unrelated_runs_are_added(store):
    gap_study(store)
    before = next(r for r in lb.build_rows(store.runs()) if r.method == "kd").gap
    # vanilla runs of other recipes, students of other experiments: none is its baseline
    submit(store, DIGITS.replace('"kd"', '"vanilla"'), "optim.epochs=9", best_top1=10.0)
    submit(store, DIGITS.replace('"kd"', '"vanilla"'), "optim.lr=0.5", best_top1=99.0)
    submit(store, DIGITS, "optim.lr=0.3", best_top1=50.0, teacher_top1=60.0)
    after = next(r for r in lb.build_rows(store.runs()) if r.method == "kd" and r.n == 1)
    assert after.gap == before == 0.5


def test_a_pinned_baseline_replaces_the_matched_one_for_its_student(store):
    gap_study(store)
    (other,) = submit(store, DIGITS.replace('"kd"', '"vanilla"'), "optim.epochs=9", best_top1=80.0)
    rows = lb.build_rows(store.runs())
    pin = lb.pin_of(next(r for r in rows if other.id in r.run_ids))
    kd = next(r for r in lb.build_rows(store.runs(), pin=pin) if r.method == "kd")
    assert kd.gap == (85.0 - 80.0) / (95.0 - 80.0)
    assert kd.baseline_label.startswith("pinned: digits-kd") and kd.baseline_runs == [other.id]


def test_latex_never_bolds_a_teacher_row_and_notes_each_baseline(store):
    teacher = """
name = "teacher-r20"
[data]
dataset = "digits"
[student]
arch = "resnet20"
[optim]
epochs = 2
"""
    (t,) = store.submit(reading.loads(teacher))
    store.update(t.id, status="done", best_top1=95.0, last_top1=95.0)
    runs = submit(store, KD_AND_VANILLA.replace('checkpoint = "t.pth"', 'from_run = "teacher-r20"'))
    for r in runs:
        kd = r.method == "kd"
        store.update(r.id, status="done", best_top1=85.0 if kd else 75.0, last_top1=80.0)
        store.update(r.id, teacher_top1=95.0 if kd else None)
    rows = lb.build_rows(store.runs())
    assert [r.is_teacher for r in rows] == [True, False, False]  # teacher-r20 teaches kd
    tex = x.to_latex(rows)
    assert "\\textbf{95.00}" not in tex and "\\textbf{85.00}" in tex
    assert "\\textbf{50\\%}$^{a}$" in tex
    assert "$^{a}$ gap closed against digits-kd [method=vanilla]" in tex


def test_member_runs_are_listed_in_every_format(store):
    runs = gap_study(store)
    rows = lb.build_rows(store.runs())
    md = x.export(rows, "md", runs=True)
    assert "| # | experiment | run | seed | status |" in md
    members = list(csv.DictReader(io.StringIO(x.export(rows, "csv", runs=True))))
    assert sorted(int(m["run_id"]) for m in members) == sorted(r.id for r in runs.values())
    assert {m["counted"] for m in members} == {"1"}
    assert x.export(rows, "latex", runs=True).count("\\begin{tabular}") == 2


def test_every_export_names_each_rows_fingerprint(store):
    gap_study(store)
    rows = lb.build_rows(store.runs())
    md, tex = x.to_markdown(rows), x.to_latex(rows)
    lines = list(csv.DictReader(io.StringIO(x.to_csv(rows))))
    for row, line in zip(rows, lines):
        assert len(row.fingerprint) == 16 and line["fingerprint"] == row.fingerprint
        assert f"| {row.fingerprint[:12]} |" in md
        assert f"fingerprint {row.fingerprint}, runs {row.run_ids[0]}" in tex
