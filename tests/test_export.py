"""The leaderboard and its Markdown / CSV / LaTeX exports."""

from __future__ import annotations

import csv
import io

from engine import config as c
from engine import export as x

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


def finished_study(store):
    runs = store.submit(c.loads(STUDY))
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
    rows = x.build_rows(store.runs())
    assert [r.method for r in rows] == ["kd", "vanilla"]
    kd = rows[0]
    assert kd.n == 2 and kd.best_mean == 85.5
    assert abs(kd.best_std - 0.7071) < 1e-3
    assert kd.head == "student"
    assert x.fmt_acc(kd.best_mean, kd.best_std) == "85.50 ± 0.71"


def test_gap_closed_uses_the_vanilla_baseline_and_the_measured_teacher(store):
    finished_study(store)
    kd = x.build_rows(store.runs())[0]
    # (85.5 - 81) / (90 - 81)
    assert abs(kd.gap - 0.5) < 1e-9
    assert x.fmt_gap(kd.gap) == "50%"


def test_markdown_is_a_github_table_with_escaped_pipes(store):
    finished_study(store)
    store.conn.execute("UPDATE runs SET experiment='a|b'")
    text = x.to_markdown(x.build_rows(store.runs()))
    lines = text.strip().splitlines()
    assert lines[0].startswith("| # | experiment |")
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    assert "a\\|b" in text
    # every line has the same number of unescaped cell separators
    counts = {line.replace("\\|", "").count("|") for line in lines}
    assert len(counts) == 1


def test_csv_has_numbers_not_formatted_strings(store):
    finished_study(store)
    rows = list(csv.DictReader(io.StringIO(x.to_csv(x.build_rows(store.runs())))))
    assert rows[0]["method"] == "kd" and float(rows[0]["best_top1_mean"]) == 85.5
    assert rows[0]["head"] == "student" and rows[0]["n"] == "2"


def test_latex_is_booktabs_with_the_best_value_in_bold(store):
    finished_study(store)
    tex = x.to_latex(x.build_rows(store.runs()))
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textbf{85.50}" in tex
    assert "\\textbf{81.00}" not in tex
    assert "resnet20$\\rightarrow$resnet8" in tex


def test_unfinished_runs_are_listed_after_finished_ones(store):
    runs = finished_study(store)
    store.update(runs[0].id, status="running", best_top1=None, last_top1=None)
    rows = x.build_rows(store.runs())
    vanilla = [r for r in rows if r.method == "vanilla"][0]
    assert vanilla.n == 1 and "running" in vanilla.status
