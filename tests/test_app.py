"""Pilot tests of the Textual app that act as a user: keys in, store and files out."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from textual.widgets import Input

from engine.core import planning, reading, schema, writing
from engine.core.store import Store

T0 = 1_700_000_000.0  # fixed time: nothing in view depends on the wall clock

STUDY = {
    "baseline-r8x4": """
name = "baseline-r8x4"
seeds = [0, 1, 2]
[data]
dataset = "cifar100"
[student]
arch = "resnet8x4"
[distill]
method = "vanilla"
[optim]
epochs = 240
""",
    "kd-r32x4-r8x4": """
name = "kd-r32x4-r8x4"
seeds = [0, 1]
[data]
dataset = "cifar100"
[teacher]
arch = "resnet32x4"
checkpoint = "teachers/resnet32x4_vanilla.pth"
[student]
arch = "resnet8x4"
[distill]
method = "kd"
[optim]
epochs = 240
""",
    "simkd-r32x4-r8x4": """
name = "simkd-r32x4-r8x4"
[data]
dataset = "cifar100"
[teacher]
arch = "resnet32x4"
checkpoint = "teachers/resnet32x4_vanilla.pth"
[student]
arch = "resnet8x4"
[distill]
method = "simkd"
[optim]
lr = [0.05, 0.01]
epochs = 240
""",
    "simkd-wrn": """
name = "simkd-wrn"
[data]
dataset = "cifar100"
[teacher]
arch = "wrn_40_2"
checkpoint = "teachers/wrn_40_2.pth"
[student]
arch = "wrn_16_2"
[distill]
method = "simkd"
factor = 4
[optim]
epochs = 240
""",
}


def seed_store(store: Store) -> dict[str, list[int]]:
    """A fixed study: finished seeds, a running sweep point with curves, queued and failed runs."""
    ids: dict[str, list[int]] = {}
    for name, text in STUDY.items():
        ids[name] = [
            r.id for r in store.submit(reading.loads(text), source=f"experiments/{name}.toml")
        ]
    done = {
        **dict(zip(ids["baseline-r8x4"], (72.50, 72.94, 73.09))),
        **dict(zip(ids["kd-r32x4-r8x4"], (73.81, 74.27))),
    }
    for i, (run_id, best) in enumerate(done.items()):
        store.update(
            run_id,
            status="done",
            epoch=240,
            step=0,
            steps_per_epoch=782,
            best_top1=best,
            last_top1=best - 0.21,
            last_top5=93.1,
            teacher_top1=79.42 if run_id in ids["kd-r32x4-r8x4"] else None,
            params=1_230_000,
            images_per_s=5400 + 10 * i,
            started=T0,
            ended=T0 + 3600,
            heartbeat=T0 + 3600,
            device="cuda:0",
            gpu="0",
        )
    running, queued = ids["simkd-r32x4-r8x4"]
    store.update(
        running,
        status="running",
        epoch=120,
        step=391,
        steps_per_epoch=782,
        best_top1=74.63,
        last_top1=74.40,
        teacher_top1=79.42,
        images_per_s=6120,
        eta_s=5 * 3600 + 7 * 60,
        started=T0,
        heartbeat=T0 + 100,
        device="cuda:0",
        gpu="0",
    )
    (failed,) = ids["simkd-wrn"]
    store.update(
        failed,
        status="failed",
        epoch=3,
        epochs=240,
        error="RuntimeError: CUDA out of memory",
        started=T0,
        ended=T0 + 60,
    )
    add_curves(store, running, epochs=120)
    log = store.run(running).path / "log.txt"
    log.write_text(
        "".join(
            f"epoch {e:3d}  loss {2.2 * math.exp(-e / 40) + 0.3:.3f}  top-1 {top1(e):.2f}\n"
            for e in range(100, 121)
        )
    )
    (store.run(failed).path / "log.txt").write_text(
        "epoch   3  loss 1.905\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n"
    )
    assert queued
    return ids


def top1(epoch: int) -> float:
    return 78.0 - 60.0 * math.exp(-epoch / 30)


def add_curves(store: Store, run_id: int, epochs: int, start: int = 0, per_epoch: int = 4) -> None:
    rows = []
    for e in range(start, epochs):
        for k in range(per_epoch):
            step = e * per_epoch + k
            loss = 2.2 * math.exp(-step / (40 * per_epoch)) + 0.3
            rows += [
                (e, step, "train/loss", loss),
                (e, step, "train/loss_feat", 0.7 * loss),
                (e, step, "train/loss_kl", 0.3 * loss),
                (e, step, "train/lr", 0.05 * (0.1 if e >= 150 else 1.0)),
            ]
        rows += [
            (e, e + 1, "test/top1", top1(e + 1)),
            (e, e + 1, "test/top5", min(99.0, top1(e + 1) + 18)),
            (e, e + 1, "lr", 0.05),
        ]
    store.add_metrics(run_id, rows, when=T0 + 100)


# ---------------------------------------------------------------- harness
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A study folder as the user has it: experiments/ and the store in .kdtui/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    return tmp_path


@pytest.fixture
def seeded(project) -> tuple[Path, dict[str, list[int]]]:
    store = Store(project / ".kdtui")
    ids = seed_store(store)
    store.close()
    return project / ".kdtui", ids


def make_app(home: Path, **kw):
    from kdtui.app import KdApp

    kw.setdefault("gpu", False)
    kw.setdefault("start_engine", False)
    return KdApp(home, root=home.parent, **kw)


async def until(pilot, predicate, timeout: float = 5.0, what: str = "condition") -> float:
    """Wait (yielding to the app) until predicate() holds; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.02)
    return time.monotonic() - start


async def focus(pilot, widget_id: str, limit: int = 60) -> None:
    """Tab through the form like a user until the widget has focus."""
    for _ in range(limit):
        focused = pilot.app.focused
        if focused is not None and focused.id == widget_id:
            return
        await pilot.press("tab")
    raise AssertionError(f"could not tab to #{widget_id}")


async def type_into(pilot, widget_id: str, text: str) -> None:
    await focus(pilot, widget_id)
    await pilot.press("ctrl+u", "ctrl+k", *text)  # clear the field, then type


async def choose(pilot, widget_id: str, label: str) -> None:
    """Open a Select with enter, type to jump to the option, enter to take it."""
    await focus(pilot, widget_id)
    await pilot.press("enter", *label, "enter")
    await pilot.pause()


def notifications(app) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


# ---------------------------------------------------------------- composer
async def test_compose_with_the_keyboard_writes_a_valid_toml(project):
    from kdtui.screens.compose import ComposerScreen

    app = make_app(project / ".kdtui")
    async with app.run_test(size=(100, 40)) as pilot:
        await until(pilot, lambda: app.loaded)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
        composer = app.screen
        await type_into(pilot, "f-name", "kd-digits")
        await type_into(pilot, "f-seeds", "0, 1")
        await choose(pilot, "f-data-dataset", "digits")
        await type_into(pilot, "f-data-batch_size", "32")
        await choose(pilot, "f-distill-method", "kd")
        await until(pilot, lambda: composer.method == "kd", what="kd options")
        await choose(pilot, "f-teacher-arch", "resnet20")
        await choose(pilot, "f-teacher-source", "train")
        await choose(pilot, "f-student-arch", "resnet8")
        await type_into(pilot, "f-distill-temperature", "2")
        await type_into(pilot, "f-optim-lr", "0.01, 0.05")
        await type_into(pilot, "f-optim-epochs", "1")
        await pilot.pause()
        assert composer.experiment is not None, composer.message
        # a teacher trained first, then 2 lr x 2 seeds
        assert composer.n_runs == 5
        assert "5 runs (lr ×2 · seeds ×2 · + teacher)" in composer.message
        await pilot.press("ctrl+s")
        path = project / "experiments" / "kd-digits.toml"
        await until(pilot, path.exists, what="the saved file")
    text = path.read_text()
    assert text.startswith("# kd-digits:")  # a header comment for whoever edits it by hand
    exp = reading.load(path)  # what `kdtui validate` does
    assert exp.name == "kd-digits" and exp.seeds == [0, 1]
    assert exp.data.dataset == "digits" and exp.student.arch == "resnet8"
    assert exp.data.batch_size == 32
    assert exp.distill.method == "kd" and exp.option("temperature") == 2
    assert exp.teacher.arch == "resnet20" and exp.teacher.train
    assert exp.sweep == {"optim.lr": [0.01, 0.05]} and exp.optim.epochs == 1
    assert len(planning.expand(exp)) == 5

    from typer.testing import CliRunner

    from kdtui.cli import app as cli

    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output


async def test_an_invalid_value_shows_the_validator_message_and_blocks_saving(project):
    from kdtui.screens.compose import ComposerScreen

    app = make_app(project / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
        composer = app.screen
        await type_into(pilot, "f-name", "broken")
        await type_into(pilot, "f-optim-lr", "-1")
        await pilot.pause()
        # exactly engine.core.reading's verdict on the same TOML
        with pytest.raises(schema.ConfigError) as err:
            reading.loads('name = "broken"\n[optim]\nlr = -1\n')
        assert err.value.reason in composer.message
        assert composer.message == "optim.lr: -1.0 is below the minimum 0.0"
        status = str(app.screen.query_one("#status").render())
        assert "optim.lr: -1.0 is below the minimum 0.0" in status
        assert app.screen.query_one("#f-optim-lr").has_class("-invalid")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not (project / "experiments" / "broken.toml").exists()
        assert any("not saved" in n for n in notifications(app))
        # fixing the value unblocks it
        await type_into(pilot, "f-optim-lr", "0.1")
        await pilot.pause()
        assert composer.experiment is not None
        await pilot.press("ctrl+s")
        await until(pilot, (project / "experiments" / "broken.toml").exists)


async def test_queue_from_the_composer_puts_queued_runs_in_the_store(project):
    from kdtui.screens.compose import ComposerScreen
    from kdtui.screens.runs import RunsScreen

    home = project / ".kdtui"
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
        await type_into(pilot, "f-name", "sweep")
        await type_into(pilot, "f-optim-lr", "0.01, 0.1")
        await type_into(pilot, "f-optim-epochs", "2")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs view")
        await until(pilot, lambda: len(app.runs) == 2, what="the queued runs in view")
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id == app.runs[0].id)
    runs = Store(home).runs()
    assert [r.status for r in runs] == ["queued", "queued"]
    assert {r.label for r in runs} == {"lr=0.01 seed=0", "lr=0.1 seed=0"}
    assert all(r.epochs == 2 and r.experiment == "sweep" for r in runs)
    assert (project / "experiments" / "sweep.toml").exists()


async def test_open_an_experiment_file_edit_and_save_it_back(project):
    from kdtui.screens.compose import ComposerScreen

    path = project / "experiments" / "simkd.toml"
    header = "# SimKD wrn_40_2 -> wrn_16_2, f = 4\n#\n# published: 75.42 (SimKD, Table 2)\n"
    body = STUDY["simkd-wrn"].replace("[optim]", "[run]\nmax_steps = 3\n\n[optim]")
    path.write_text(header + body)
    app = make_app(project / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("o")
        await pilot.pause()
        await pilot.press("enter")  # the only file
        await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
        composer = app.screen
        assert composer.method == "simkd" and composer.experiment is not None
        assert composer.query_one("#f-distill-factor").value == 4
        assert "run.max_steps = 3" in str(composer.query_one("#kept").render())
        await type_into(pilot, "f-optim-epochs", "30")
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert path.read_text().startswith(header)  # the file's own header survives the save
    (project / "teachers").mkdir()
    (project / "teachers" / "wrn_40_2.pth").write_bytes(b"")  # load checks that it exists
    exp = reading.load(path)
    assert exp.name == "simkd-wrn" and exp.optim.epochs == 30
    assert exp.option("factor") == 4 and exp.run.max_steps == 3  # kept from the file
    assert exp.teacher.checkpoint == "teachers/wrn_40_2.pth"


def copy_experiments(project: Path) -> list[Path]:
    """The repository's experiments/ as the user's own, relative paths sorted as the picker."""
    import shutil

    shutil.copytree(ROOT / "experiments", project / "experiments", dirs_exist_ok=True)
    return sorted(
        p.relative_to(ROOT / "experiments") for p in (ROOT / "experiments").rglob("*.toml")
    )


async def open_file(pilot, relative: Path, files: list[Path], *, jump: bool = False):
    """`o`, down to the file in the picker, enter: the composer on it (`jump`: highlight
    the file at once instead of pressing down up to 45 times)."""
    from textual.widgets import OptionList

    from kdtui.screens.compose import ComposerScreen
    from kdtui.screens.dialogs import ExperimentPicker

    app = pilot.app
    await pilot.press("o")
    await until(pilot, lambda: isinstance(app.screen, ExperimentPicker))
    await pilot.pause()
    if jump:
        app.screen.query_one(OptionList).highlighted = files.index(relative)
        await pilot.press("enter")
    else:
        await pilot.press(*["down"] * files.index(relative), "enter")
    await until(pilot, lambda: isinstance(app.screen, ComposerScreen), what=str(relative))
    assert app.screen.path == pilot.app.root / "experiments" / relative
    return app.screen


def dry_run_plan(exp: schema.Experiment) -> list[tuple]:
    """What `kdtui run --dry-run` lists, and every resolved key of every run."""
    return [
        (p.role, p.seed, p.label, writing.resolved_toml(p.config)) for p in planning.expand(exp)
    ]


def comment_lines(text: str) -> list[str]:
    return [line[line.index("#") :] for line in text.splitlines() if "#" in line]


@pytest.mark.slow  # 45 files through the real form, one after another
async def test_every_experiment_file_opens_in_the_composer_and_saves_to_the_same_experiment(
    project,
):
    files = copy_experiments(project)
    assert len(files) > 40
    app = make_app(project / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded)
        for relative in files:
            original = reading.load(ROOT / "experiments" / relative)
            composer = await open_file(pilot, relative, files, jump=True)
            assert composer.experiment is not None, f"{relative}: {composer.message}"
            assert composer.n_runs == len(planning.expand(original)), relative
            await pilot.press("ctrl+s")
            await until(
                pilot,
                lambda r=relative: any(
                    n.endswith(f"saved experiments/{r}") for n in notifications(app)
                ),
                what=f"{relative} saved",
            )
            await pilot.press("escape")  # saved, so nothing to discard: straight back
            await until(pilot, lambda: not hasattr(app.screen, "form"), what="the runs view")
    for relative in files:
        before = (ROOT / "experiments" / relative).read_text()
        saved = project / "experiments" / relative
        assert dry_run_plan(reading.load(saved)) == dry_run_plan(
            reading.load(ROOT / "experiments" / relative)
        )
        after = saved.read_text()
        assert all(line in after for line in comment_lines(before)), relative


async def test_a_sweep_in_a_file_is_shown_in_its_field_and_edits_change_the_run_count(project):
    files = copy_experiments(project)
    path = project / "experiments" / "digits" / "simkd_factor_r20_r8.toml"
    before = path.read_text()
    app = make_app(project / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        composer = await open_file(pilot, Path("digits/simkd_factor_r20_r8.toml"), files)
        factor = composer.query_one("#f-distill-factor")
        assert factor.value == "4, 8"  # a choice swept: its values, editable as text
        assert composer.query_one("#row-f-distill-factor").has_class("-swept")
        assert "2 runs (factor ×2)" in str(composer.query_one("#status").render())
        await type_into(pilot, "f-distill-factor", "2, 4, 8")
        await pilot.pause()
        assert "3 runs (factor ×3)" in str(composer.query_one("#status").render())
        await type_into(pilot, "f-optim-lr", "0.01, 0.05")
        await pilot.pause()
        assert composer.message == "valid · 6 runs (factor ×3 · lr ×2)"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not composer.dirty, what="the save")
    text = path.read_text()
    assert all(line in text for line in comment_lines(before))
    exp = reading.load(path)
    assert exp.sweep == {"distill.factor": [2, 4, 8], "optim.lr": [0.01, 0.05]}
    assert exp.teacher.from_run == "digits/teacher-resnet20" and len(planning.expand(exp)) == 6


async def test_quickstart_opens_with_its_method_sweep_and_its_teachers_own_training(project):
    files = copy_experiments(project)
    path = project / "experiments" / "quickstart.toml"
    app = make_app(project / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        composer = await open_file(pilot, Path("quickstart.toml"), files)
        assert composer.query_one("#f-distill-method").value == "vanilla, kd, simkd"
        assert composer.message == "valid · 4 runs (method ×3 · + teacher)"
        assert composer.query("#f-distill-kd_weight") and composer.query("#f-distill-factor")
        assert composer.query_one("#f-teacher-optim-epochs").value == "8"
        await type_into(pilot, "f-teacher-optim-epochs", "10")
        await type_into(pilot, "f-distill-method", "kd, simkd")
        await pilot.pause()
        assert composer.message == "valid · 3 runs (method ×2 · + teacher)"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not composer.dirty, what="the save")
    teacher, *students = planning.expand(reading.load(path))
    assert teacher.role == "teacher" and teacher.config.optim.epochs == 10
    assert [s.config.distill.method for s in students] == ["kd", "simkd"]
    assert path.read_text().startswith("# Quickstart: the whole loop on a CPU")


async def test_ctrl_l_turns_a_choice_into_a_sweep_and_back(project):
    from textual.widgets import Select

    from kdtui.screens.compose import ComposerScreen

    app = make_app(project / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
        composer = app.screen
        await type_into(pilot, "f-name", "methods")
        await focus(pilot, "f-distill-method")
        await pilot.press("ctrl+l")
        await until(pilot, lambda: isinstance(composer.query_one("#f-distill-method"), Input))
        await type_into(pilot, "f-distill-method", "kd, simkd")
        await until(pilot, lambda: composer.query("#f-distill-factor"), what="simkd's options")
        await choose(pilot, "f-teacher-arch", "resnet20")
        await choose(pilot, "f-teacher-source", "train")
        await pilot.pause()
        assert composer.message == "valid · 3 runs (method ×2 · + teacher)"
        assert composer.query("#f-distill-kd_weight")  # both methods' options
        await focus(pilot, "f-distill-method")
        await pilot.press("ctrl+l")  # back to one value: the first
        await until(pilot, lambda: isinstance(composer.query_one("#f-distill-method"), Select))
        await until(pilot, lambda: not composer.query("#f-distill-factor"), what="kd alone")
        assert composer.message == "valid · 2 runs (+ teacher)"
        assert composer.query_one("#f-distill-method").value == "kd"


async def test_what_the_form_cannot_edit_is_shown_read_only_and_saved_as_it_was(project):
    files = copy_experiments(project)
    relative = Path("cifar100/simkd_multi_r32x4_mbv2.toml")
    path = project / "experiments" / relative
    before = path.read_text()
    app = make_app(project / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        composer = await open_file(pilot, relative, files)
        projectors = composer.query_one("#f-distill-projectors")
        assert not isinstance(projectors, Input)  # a list of tables: read-only
        from kdtui.experiment_form import show

        written = reading.load(path).distill.options["projectors"]
        assert str(projectors.render()) == f"{show(written)}  (read-only: edit the file)"
        assert "\n" not in show(written) and "weight = " in show(written)
        kept = str(composer.query_one("#kept").render())
        assert "data.root = data" in kept and "optim.gamma = 0.1" in kept
        await type_into(pilot, "f-optim-epochs", "200")  # the last milestone is 210
        await pilot.pause()
        assert composer.message.startswith("optim.milestones: 210 never takes effect")
        await type_into(pilot, "f-optim-epochs", "220")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not composer.dirty, what="the save")
    after = path.read_text()
    assert after == before.replace("epochs = 240", "epochs = 220")
    exp = reading.load(path)
    assert (
        exp.distill.options["projectors"]
        == reading.load(ROOT / "experiments" / relative).distill.options["projectors"]
    )


async def test_clone_keeps_the_teacher_by_name_and_paths_as_written(project):
    from kdtui.screens.compose import ComposerScreen

    home = project / ".kdtui"
    store = Store(home)
    store.submit(reading.loads('name = "digits/teacher"\n[student]\narch = "resnet20"\n'))
    (student,) = store.submit(
        reading.loads(
            'name = "kd-r20-r8"\n[data]\nroot = "datasets/digits"\n'
            '[teacher]\narch = "resnet20"\nfrom_run = "digits/teacher"\n'
            '[student]\narch = "resnet8"\n[distill]\nmethod = "kd"\n'
        )
    )
    assert (
        student.load_config().teacher.from_run.isdigit()
        and Path(student.load_config().data.root).is_absolute()
    )
    store.close()
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.select_run(student.id), what="the student run")
        await pilot.pause()
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
        composer = app.screen
        assert composer.query_one("#f-teacher-from_run").value == "digits/teacher"
        assert composer.experiment.teacher.from_run == "digits/teacher"
        assert composer.experiment.data.root == "datasets/digits"
        assert "data.root = datasets/digits" in str(composer.query_one("#kept").render())
        await pilot.press("ctrl+s")
        path = project / "experiments" / "kd-r20-r8-copy.toml"
        await until(pilot, path.exists, what="the saved clone")
    exp = reading.load(path)
    assert exp.teacher.from_run == "digits/teacher" and exp.data.root == "datasets/digits"


# ---------------------------------------------------------------- runs view
async def test_new_metrics_reach_the_selected_runs_panels_read_off_the_event_loop(seeded):
    from kdtui.screens.runs import RunsScreen
    from kdtui.widgets.plots import CurvePlot

    home, ids = seeded
    running = ids["simkd-r32x4-r8x4"][0]
    app = make_app(home)
    reader_threads: set[str] = set()
    metrics = app.store.metrics

    def spy(*args, **kw):  # the store is read off the event loop
        reader_threads.add(threading.current_thread().name)
        return metrics(*args, **kw)

    app.store.metrics = spy
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await until(pilot, lambda: screen.table.selected_id == running, what="the running run")
        loss = screen.query_one("#loss", CurvePlot)
        acc = screen.query_one("#acc", CurvePlot)
        await until(pilot, lambda: acc.points == 2 * 120, what="the stored curves")
        before = loss.points
        assert screen.table.get_cell(str(running), "progress").plain.startswith("120/240")
        assert "epoch 120" in "\n".join(line.text for line in screen.query_one("#log").lines)

        writer = Store(home)
        add_curves(writer, running, epochs=122, start=120)
        writer.update(running, epoch=122, step=10, best_top1=77.5)
        with open(writer.run(running).path / "log.txt", "a") as f:
            f.write("epoch 121  loss 0.401  top-1 77.50\n")
        await until(  # how fast is measured by `kdtui bench --only app`, not here
            pilot,
            lambda: (
                acc.points == 2 * 122
                and screen.table.get_cell(str(running), "progress").plain.startswith("122/240")
            ),
            timeout=5,
            what="the new metrics in view",
        )
        assert loss.points == before + 2 * 4 * 3  # total, feat and kl: 4 steps in 2 epochs
        assert acc.last("top1") == pytest.approx(top1(122))
        assert screen.table.get_cell(str(running), "best").plain == "77.50"
        await until(
            pilot,
            lambda: "top-1 77.50" in screen.query_one("#log").lines[-1].text,
            what="the log tail",
        )
        writer.close()
    assert reader_threads and threading.main_thread().name not in reader_threads


async def test_cancel_and_resume_act_on_the_selected_run(seeded):
    home, ids = seeded
    queued = ids["simkd-r32x4-r8x4"][1]
    failed = ids["simkd-wrn"][0]
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id is not None)
        await pilot.press("down")  # running -> queued
        assert screen.table.selected_id == queued
        await pilot.press("x")
        await pilot.press("y")
        await until(pilot, lambda: app.runs_by_id[queued].status == "cancelled", what="cancel")
        await until(pilot, lambda: screen.table.selected_id != queued or True)
        assert screen.table.select_run(failed)
        await pilot.pause()
        # it finished 3 epochs and has no checkpoint: resuming would silently start over
        await pilot.press("r")
        await until(pilot, lambda: any("--restart" in n for n in notifications(app)))
        assert app.runs_by_id[failed].status == "failed"
        # with a checkpoint (a stand-in zip sealed at epoch 3) it is queued to resume
        with zipfile.ZipFile(Store(home).run(failed).path / "last.pth", "w") as z:
            z.writestr("archive/data.pkl", b"stand-in")
            z.comment = b"kdtui-checkpoint epoch=3"
        await pilot.press("r")
        await until(pilot, lambda: app.runs_by_id[failed].status == "queued", what="resume")
    run = Store(home).run(failed)
    assert run.status == "queued" and run.resume == 1


async def test_a_finished_or_failed_run_raises_a_toast(seeded):
    home, ids = seeded
    running = ids["simkd-r32x4-r8x4"][0]
    app = make_app(home)
    bells = []
    app.bell = lambda: bells.append(1)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.loaded)
        assert not notifications(app)  # history is no news
        await pilot.press("b")  # the terminal bell too, saved for next time
        assert app.bell_on and '"bell": true' in (home / "tui.json").read_text()
        writer = Store(home)
        writer.update(running, best_top1=78.08)
        writer.finish(running, "done")
        await until(pilot, lambda: any("run finished" in n for n in notifications(app)))
        assert any("78.08" in n and f"#{running}" in n for n in notifications(app))
        assert bells
        (queued,) = [r.id for r in writer.runs(status="queued")]
        writer.claim(queued)
        writer.finish(queued, "failed", "ValueError: loss is NaN")
        await until(pilot, lambda: any("run failed" in n for n in notifications(app)))
        assert any("loss is NaN" in n for n in notifications(app))
        writer.close()


async def test_clone_opens_the_run_config_in_the_composer(seeded):
    from kdtui.screens.compose import ComposerScreen

    home, ids = seeded
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id == ids["simkd-r32x4-r8x4"][0])
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
        composer = app.screen
        assert composer.query_one("#f-name").value == "simkd-r32x4-r8x4-copy"
        assert composer.method == "simkd"
        assert composer.query_one("#f-optim-lr").value == "0.05"
        assert composer.experiment is not None, composer.message
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ComposerScreen))


async def test_run_config_view_and_a_teacher_from_an_earlier_run(seeded):
    from kdtui.screens.compose import ComposerScreen
    from kdtui.screens.dialogs import ConfigScreen
    from kdtui.screens.runs import RunsScreen

    home, ids = seeded
    app = make_app(home)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id == ids["simkd-r32x4-r8x4"][0])
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, ConfigScreen))
        assert 'method = "simkd"' in app.screen.text and "lr = 0.05" in app.screen.text
        fingerprint = Store(home).run(ids["simkd-r32x4-r8x4"][0]).fingerprint
        assert app.screen.title_text.endswith(f"· fingerprint {fingerprint}")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
        composer = app.screen
        await type_into(pilot, "f-name", "kd-from-baseline")
        await choose(pilot, "f-distill-method", "kd")
        await until(pilot, lambda: composer.method == "kd")
        await choose(pilot, "f-teacher-arch", "resnet8x4")
        await choose(pilot, "f-teacher-source", "earlier")
        await choose(pilot, "f-teacher-from_run", "baseline")  # the newest baseline run
        await choose(pilot, "f-student-arch", "resnet8")
        await pilot.pause()
        assert composer.experiment is not None, composer.message
        assert composer.experiment.teacher.from_run == str(ids["baseline-r8x4"][-1])
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))
    (run,) = Store(home).runs(experiment="kd-from-baseline")
    assert run.status == "queued" and run.depends_on == ids["baseline-r8x4"][-1]


async def test_a_two_process_run_shows_its_processes_and_effective_batch(project):
    from kdtui.screens.dialogs import ConfigScreen
    from kdtui.screens.leaderboard import COLUMNS, LeaderboardScreen
    from kdtui.screens.runs import RunsScreen

    home = project / ".kdtui"
    store = Store(home)
    text = 'name = "ddp"\n[data]\ndataset = "digits"\nbatch_size = 32\n[run]\nnproc_per_node = 4\n'
    (run,) = store.submit(reading.loads(text), source="experiments/ddp.toml")
    store.close()
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.table.selected_id == run.id)
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, ConfigScreen))
        assert "· 4 processes, effective batch 128 = 4×32 ·" in app.screen.title_text
        assert "nproc_per_node = 4" in app.screen.text
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        board = app.screen
        await until(pilot, lambda: len(board.shown) == 1)
        cell = board.table.get_row_at(0)[COLUMNS.index("eff. batch")]
        assert getattr(cell, "plain", cell) == "128 = 4×32"


# ---------------------------------------------------------------- leaderboard
async def test_leaderboard_sorts_by_the_chosen_column(seeded):
    from kdtui.screens.leaderboard import COLUMNS, LeaderboardScreen

    home, _ = seeded
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.loaded)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        board = app.screen
        await until(pilot, lambda: len(board.shown) == 5)
        names = lambda: [r.name for r in board.shown]  # noqa: E731
        # finished rows by mean best top-1, then the running row, then queued / failed ones
        assert names() == [
            "kd-r32x4-r8x4",
            "baseline-r8x4",
            "simkd-r32x4-r8x4 [lr=0.05]",
            "simkd-r32x4-r8x4 [lr=0.01]",
            "simkd-wrn",
        ]
        await pilot.press("s")
        await pilot.press(*["down"] * COLUMNS.index("experiment"), "enter")
        await until(pilot, lambda: board.board.sort_column == "experiment")
        assert names() == sorted(names(), key=str.lower)
        assert board.table.get_row_at(0)[1].plain == "baseline-r8x4"  # what is on screen
        await pilot.press("s", "enter")  # the same column again: reversed
        await until(pilot, lambda: board.board.reverse)
        assert names() == sorted(names(), key=str.lower, reverse=True)
        await pilot.press("s")
        await pilot.press(*["down"] * (COLUMNS.index("n") - COLUMNS.index("experiment")), "enter")
        await until(pilot, lambda: board.board.sort_column == "n")
        assert [r.n for r in board.shown] == [3, 2, 0, 0, 0]  # running runs are not in n


async def test_enter_on_a_grouped_row_shows_its_member_runs(seeded):
    from kdtui.screens.leaderboard import LeaderboardScreen
    from kdtui.screens.members import MembersScreen

    home, ids = seeded
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.loaded)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        board = app.screen
        await until(pilot, lambda: len(board.shown) == 5)
        assert board.selected.name == "kd-r32x4-r8x4"  # two seeds: one row
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MembersScreen))
        table = app.screen.query_one("#members")
        shown = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        kd = ids["kd-r32x4-r8x4"]
        assert [row[:4] for row in shown] == [
            [str(kd[0]), "0", "done", "73.81"],
            [str(kd[1]), "1", "done", "74.27"],
        ]
        assert all(row[-1] == "counted" for row in shown)
        detail = str(app.screen.query_one("#members-detail").render())
        # gap closed against the vanilla runs of the same recipe, by the formula
        assert "gap closed 18% = (74.04 − 72.84) / (79.42 − 72.84)" in detail
        assert f"baseline-r8x4 (#{',#'.join(map(str, ids['baseline-r8x4']))})" in detail
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        await pilot.press("down", "down", "down", "down", "enter")  # the failed row
        await until(pilot, lambda: isinstance(app.screen, MembersScreen))
        (cells,) = [app.screen.query_one("#members").get_row_at(0)]
        assert str(cells[2]) == "failed" and "out of memory" in str(cells[-1])


async def test_leaderboard_filters_pins_and_exports_markdown(seeded):
    from engine.core import leaderboard
    from kdtui.screens.leaderboard import COLUMNS, LeaderboardScreen

    home, _ = seeded
    project = home.parent
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.loaded)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        board = app.screen
        await until(pilot, lambda: len(board.shown) == 5)
        await pilot.press("slash", *"74.04", "enter")  # text in any column
        assert [r.name for r in board.shown] == ["kd-r32x4-r8x4"]
        assert app.screen is board and board.table.has_focus  # enter left the box, opened nothing
        assert board.table.row_count == 1
        await pilot.press("slash", "escape")  # escape clears the filter
        await pilot.press("f", "f", "f")  # all -> running -> queued -> done
        assert board.board.status == "done"
        assert [r.name for r in board.shown] == ["kd-r32x4-r8x4", "baseline-r8x4"]
        await pilot.press("f", "f", "f")  # failed, cancelled, back to all
        assert board.board.status == "all"
        # pin the vanilla baseline: the kd row is measured against it
        await pilot.press("down", "p")
        assert board.board.pinned.name == "baseline-r8x4"
        kd = next(r for r in board.shown if r.name == "kd-r32x4-r8x4")
        delta = board.board.cells(kd)[COLUMNS.index("Δ pin")]
        assert delta == f"+{kd.best_mean - board.board.pinned.best_mean:.2f}"
        await pilot.press("e", "enter")
        await until(pilot, lambda: board.last_export is not None, what="the export")
        path = board.last_export
        shown = str(board.query_one("#message").render())
    assert path.parent == project / "exports" and path.suffix == ".md"
    assert f"exports/{path.name}" in shown  # the path, as the user would type it
    text = path.read_text()
    rows = leaderboard.build_rows(Store(home).runs())
    assert text.splitlines()[0] == "| " + " | ".join(leaderboard.COLUMNS) + " |"
    assert "| kd-r32x4-r8x4 | kd | resnet32x4→resnet8x4 | student | 74.04 ± 0.33 |" in text
    assert len(text.splitlines()) == 2 + len(rows)


async def test_export_as_latex_and_csv(seeded):
    from kdtui.screens.leaderboard import LeaderboardScreen

    home, _ = seeded
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        board = app.screen
        await until(pilot, lambda: len(board.shown) == 5)
        await pilot.press("e", "down", "down", "enter")
        await until(pilot, lambda: board.last_export is not None)
        assert board.last_export.suffix == ".tex"
        assert "\\toprule" in board.last_export.read_text()
        board.last_export = None
        await pilot.press("e", "down", "enter")
        await until(pilot, lambda: board.last_export is not None)
        assert board.last_export.suffix == ".csv"


async def test_compare_shows_only_config_differences_and_overlaid_curves(seeded):
    from kdtui.screens.compare import CompareScreen
    from kdtui.screens.leaderboard import LeaderboardScreen
    from kdtui.widgets.plots import CurvePlot

    home, _ = seeded
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
        board = app.screen
        await until(pilot, lambda: len(board.shown) == 5)
        await pilot.press("space", "down", "space", "m")  # kd (2 seeds) and simkd lr=0.05
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        compare = app.screen
        await until(pilot, lambda: compare.diff, what="the differences")
        keys = [k for k, _ in compare.diff]
        assert "distill.method" in keys and "distill.loss" in keys
        assert "optim.lr" not in keys and "data.dataset" not in keys  # equal: not shown
        method = dict(compare.diff)["distill.method"]
        assert method == ["kd", "simkd"]
        await until(pilot, lambda: compare.query_one("#cmp-top1", CurvePlot).points > 0)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))


# ---------------------------------------------------------------- keys and palette
async def test_every_footer_key_is_also_a_palette_command(seeded):
    from kdtui.screens.compose import ComposerScreen
    from kdtui.screens.leaderboard import LeaderboardScreen

    home, _ = seeded
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded)
        for key, kind in (("l", LeaderboardScreen), ("escape", None), ("a", ComposerScreen)):
            screen = app.screen
            shown = [a.binding for a in screen.active_bindings.values() if a.binding.show]
            titles = {cmd.title for cmd in app.get_system_commands(screen)}
            assert shown
            for binding in shown:
                assert (binding.tooltip or binding.description) in titles, binding
            await pilot.press(key)
            if kind is not None:
                await until(pilot, lambda kind=kind: isinstance(app.screen, kind))
        # a palette command runs the same action as its key
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ComposerScreen))
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"leaderboard")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))


async def test_an_empty_store_says_how_to_start(project):
    app = make_app(project / ".kdtui")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded)
        await pilot.pause()
        assert app.screen.query_one("#empty").display
        assert not app.screen.query_one("#detail").display


# ---------------------------------------------------------------- GPU panel
class FakeNvml:
    """The pieces of pynvml the panel calls; one GPU that answers, one that errors."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, h):
        if h == 1:
            raise self.NVMLError("GPU is lost")
        return type("U", (), {"gpu": 87})()

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": 40 * 2**30, "total": 80 * 2**30})()

    def nvmlDeviceGetTemperature(self, h, kind):
        raise self.NVMLError("not supported")


def test_gpu_panel_reads_nvml_guarded_and_maps_runs(monkeypatch):
    from types import SimpleNamespace

    from kdtui.widgets.gpu import Nvml, gpu_index, render_gpus

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    gpus = Nvml().read()
    assert [g.name for g in gpus] == ["H100 80GB HBM3"] * 2
    assert gpus[0].util == 87 and gpus[0].mem_total == 80 and gpus[0].temp is None
    assert gpus[1].util is None  # a failing call blanks one field, nothing raises
    runs = [
        SimpleNamespace(id=12, status="running", gpu="1", device="cuda:0 NVIDIA H100"),
        SimpleNamespace(id=13, status="running", gpu=None, device="cpu"),
        SimpleNamespace(id=14, status="done", gpu="0", device="cuda:0"),
    ]
    text = render_gpus(gpus, runs).plain
    assert "87%" in text and "40.0/80G" in text
    assert text.splitlines()[-1].strip() == "#12"  # GPU 1 runs #12
    assert "idle" in text.splitlines()[1]
    assert gpu_index(None, "cuda:3 NVIDIA A100") == 3 and gpu_index(None, "cpu") is None
    # a run of two processes on GPUs 0 and 1 shows on both
    runs.append(SimpleNamespace(id=15, status="running", gpu="0,1", device="2× cuda:0 H100"))
    lines = render_gpus(gpus, runs).plain.splitlines()
    assert lines[1].split() == ["#15"] and lines[-1].split() == ["#12", "#15"]


def test_gpu_panel_is_hidden_without_a_driver(monkeypatch):
    from kdtui.widgets.gpu import Nvml

    class Broken:
        class NVMLError(Exception):
            pass

        def nvmlInit(self):
            raise self.NVMLError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", Broken())
    assert Nvml().read() is None


# ---------------------------------------------------------------- start-up
def test_the_app_never_imports_torch():
    code = (
        "import sys, pkgutil, importlib\n"
        "import kdtui.app, kdtui.screens, kdtui.widgets\n"
        "for pkg in (kdtui.screens, kdtui.widgets):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "import engine.daemon.client, engine.daemon.server\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_app_draws_the_runs_table_on_a_real_terminal(seeded):
    """Started as a user starts it, on a pseudo-terminal; its speed is `kdtui bench --only app`."""
    from kdtui.appbench import paint_seconds

    home, _ = seeded
    env = {"KDTUI_HOME": str(home), "PYTHONPATH": str(ROOT)}
    paint_seconds([sys.executable, "-m", "kdtui.cli"], env, marker=b"simkd-r32x4-r8x4")


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
async def test_end_to_end_compose_queue_watch_to_done_and_rank(project):
    """The real engine: a tiny digits run queued from the composer, watched to done, ranked."""
    from engine.daemon import client as daemon
    from kdtui.screens.compose import ComposerScreen
    from kdtui.screens.leaderboard import LeaderboardScreen
    from kdtui.screens.runs import RunsScreen
    from kdtui.widgets.plots import CurvePlot

    home = project / ".kdtui"
    app = make_app(home, start_engine=True)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, ComposerScreen))
            await type_into(pilot, "f-name", "e2e-digits")
            await type_into(pilot, "f-data-batch_size", "128")
            await type_into(pilot, "f-optim-epochs", "2")
            await pilot.press("ctrl+r")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs view")
            await until(pilot, lambda: len(app.runs) == 1, what="the queued run")
            run_id = app.runs[0].id
            screen = app.screen
            await until(
                pilot,
                lambda: app.runs_by_id[run_id].status == "done",
                timeout=240,
                what="the run to finish",
            )
            # the table redraws on the next refresh after the data that says "done"
            await until(
                pilot,
                lambda: screen.table.get_cell(str(run_id), "progress").plain.startswith("  2/2"),
                what="the progress cell at 2/2",
            )
            await until(pilot, lambda: screen.query_one("#acc", CurvePlot).points == 4)
            assert screen.query_one("#loss", CurvePlot).points > 0
            # the toast waits a second for other runs ending with it (one toast for many)
            await until(pilot, lambda: any("run finished" in n for n in notifications(app)))
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LeaderboardScreen))
            board = app.screen
            await until(pilot, lambda: len(board.shown) == 1)
            row = board.shown[0]
            assert row.name == "e2e-digits" and row.best_mean is not None
            assert board.table.get_row_at(0)[1].plain == "e2e-digits"
        # quitting the app leaves the engine (and any training) running
        assert daemon.status(home) is not None
        again = make_app(home)
        async with again.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: again.loaded and again.engine is not None)
            assert [r.status for r in again.runs] == ["done"]
            assert "engine pid" in again.sub_title
    finally:
        daemon.stop(home)


async def test_a_run_whose_slurm_job_is_pending_shows_as_queued_with_the_reason(project):
    store = Store(project / ".kdtui")
    (run,) = store.submit(reading.loads(STUDY["baseline-r8x4"].replace("[0, 1, 2]", "[0]")))
    assert store.claim(run.id)  # what the Slurm engine records once the job is submitted
    store.update(run.id, job_id="41_0", job_state="PENDING (Priority)")
    store.close()
    app = make_app(project / ".kdtui")
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.loaded)
        await pilot.pause()
        detail = app.screen.query_one("#detail")
        await until(pilot, lambda: "41_0" in str(detail.border_subtitle), what="the job")
        assert str(detail.border_subtitle).startswith(
            "queued · slurm job 41_0 PENDING (Priority) · epoch 0/240"
        )
        table = app.screen.query_one("#runs")
        assert "queued" in str(table.get_row_at(0)[1])
