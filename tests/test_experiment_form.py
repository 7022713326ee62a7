"""The composer's form model, without the app: values in, an experiment and its TOML out."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core import planning, reading, schema, writing
from kdtui.experiment_form import MISSING, ExperimentForm, parse_text, show

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.toml"))
DIGITS = ROOT / "experiments" / "digits"


def opened(path: Path) -> ExperimentForm:
    return ExperimentForm(path.read_text(), file=str(path))


def plan(exp: schema.Experiment) -> list[tuple]:
    """What `kdtui run --dry-run` lists, and every resolved key of every run."""
    return [
        (p.role, p.seed, p.label, writing.resolved_toml(p.config)) for p in planning.expand(exp)
    ]


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")] + [
        "#" + line.split("#", 1)[1] for line in text.splitlines() if " # " in line
    ]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_experiment_file_opens_valid_and_saves_back_byte_for_byte(path):
    form = opened(path)
    assert form.experiment is not None, form.message
    assert form.n_runs == len(planning.expand(reading.load(path)))
    assert form.text() == path.read_text() and not form.dirty


def test_a_sweep_in_the_file_is_the_fields_value_and_editing_it_keeps_the_comments():
    path = DIGITS / "simkd_factor_r20_r8.toml"
    form = opened(path)
    assert form.value("distill.factor") == [4, 8] and form.swept("distill.factor")
    assert show(form.value("distill.factor")) == "4, 8"
    assert form.message == "valid · 2 runs (factor ×2)"
    form.set("distill.factor", parse_text("2, 4, 8", "value"))
    assert form.message == "valid · 3 runs (factor ×3)"
    form.set("optim.lr", parse_text("0.01, 0.05", "value"))  # a list typed in a field: a sweep
    assert form.message == "valid · 6 runs (factor ×3 · lr ×2)"
    text = form.text()
    assert '"distill.factor" = [2, 4, 8]' in text and '"optim.lr" = [0.01, 0.05]' in text
    assert all(line in text for line in comments(path.read_text()))
    exp = reading.loads(text)
    assert exp.sweep == {"distill.factor": [2, 4, 8], "optim.lr": [0.01, 0.05]}
    # one value again: the sweep goes, the value sits in its table
    form.set("optim.lr", 0.1)
    form.set("distill.factor", parse_text("4", "value"))
    exp = reading.loads(form.text())
    assert exp.sweep == {} and exp.optim.lr == 0.1 and exp.option("factor") == 4


def test_a_sweep_over_a_choice_and_over_the_method_is_shown_as_its_values():
    kl = opened(DIGITS / "simkd_kl_r20_r8.toml")
    assert kl.value("distill.loss") == ["kl", "l2+kl"] and kl.n_runs == 2
    assert parse_text(show(kl.value("distill.loss")), "value") == ["kl", "l2+kl"]
    quick = opened(ROOT / "experiments" / "quickstart.toml")
    assert quick.methods == ["vanilla", "kd", "simkd"] and quick.swept("distill.method")
    keys = {f.key for f in quick.fields()}
    assert {"distill.kd_weight", "distill.factor", "distill.temperature"} <= keys
    assert quick.message == "valid · 4 runs (method ×3 · + teacher)"
    quick.set("distill.method", ["kd", "simkd"])
    assert quick.n_runs == 3 and quick.methods == ["kd", "simkd"]
    assert reading.loads(quick.text()).sweep == {"distill.method": ["kd", "simkd"]}


def test_a_nested_sweep_table_is_edited_where_it_is():
    form = ExperimentForm('name = "x"\n[optim]\nepochs = 2\n[sweep.optim]\nlr = [0.1, 0.2]\n')
    assert form.value("optim.lr") == [0.1, 0.2] and form.n_runs == 2
    form.set("optim.lr", [0.1, 0.2, 0.3])
    assert "[sweep.optim]\nlr = [0.1, 0.2, 0.3]" in form.text() and form.n_runs == 3
    form.set("optim.lr", 0.3)
    assert "sweep" not in form.text() and reading.loads(form.text()).optim.lr == 0.3


def test_switching_method_away_and_back_restores_the_options_with_their_comments():
    path = DIGITS / "dkd_r20_r8.toml"
    form = opened(path)
    form.set("distill.method", "kd")
    assert form.experiment is not None, form.message
    assert "nckd_weight" not in form.text()  # kd has no such option: it would be invalid
    form.set("distill.method", "vanilla")
    assert "[teacher]" not in form.text() and form.experiment is not None
    form.set("distill.method", "dkd")
    assert "nckd_weight = 8.0   # beta" in form.text()
    assert plan(reading.loads(form.text())) == plan(reading.load(path))


def test_what_the_form_cannot_edit_is_read_only_and_kept():
    path = DIGITS / "simkd_multi_r20_mbv2.toml"
    projectors = reading.load(path).distill.options["projectors"]
    assert isinstance(projectors, list) and isinstance(projectors[0], dict)
    form = opened(path)
    assert not form.editable("distill.projectors")  # a list of tables
    assert show(form.value("distill.projectors")) == (
        "["
        + ", ".join("{ " + ", ".join(f"{k} = {v}" for k, v in p.items()) + " }" for p in projectors)
        + "]"
    )
    form.set("optim.epochs", 3)
    assert reading.loads(form.text()).distill.options["projectors"] == projectors
    cifar = opened(ROOT / "experiments" / "cifar100" / "at_r32x4_r8x4.toml")
    assert dict(cifar.kept()) == {
        "data.root": "data",
        "data.download": True,
        "optim.momentum": 0.9,
        "optim.gamma": 0.1,
    }
    future = ExperimentForm(
        'name = "x"\n[teacher]\narch = "resnet20"\ntrain = true\n'
        "[teacher.optim]\nepochs = 2\nmomentum = 0.8  # the teacher's own\n"
        '[student]\narch = "resnet8"\n[distill]\nmethod = "kd"\n[optim]\nepochs = 2\n'
        '[run]\nnew_knob = 3\n[extras]\nnote = "later"\n'
    )
    kept = dict(future.kept())
    assert kept == {"teacher.optim.momentum": 0.8, "run.new_knob": 3, "extras.note": "later"}
    assert future.message.startswith("extras: unknown top-level key")  # the validator's word
    future.set("optim.lr", 0.2)
    text = future.text()
    assert "momentum = 0.8  # the teacher's own" in text and "new_knob = 3" in text
    assert 'note = "later"' in text


def test_the_teachers_own_optim_is_in_the_form():
    form = opened(ROOT / "experiments" / "quickstart.toml")
    assert form.visible("teacher.optim.epochs") and form.value("teacher.optim.epochs") == 8
    assert form.value("teacher.optim.lr") is MISSING  # as in [optim]
    form.set("teacher.optim.epochs", 10)
    form.set("teacher.optim.lr", 0.1)
    form.set("teacher.optim.schedule", "constant")
    teacher, *students = planning.expand(form.experiment)
    assert teacher.role == "teacher"
    o = teacher.config.optim
    assert (o.epochs, o.lr, o.schedule) == (10, 0.1, "constant")
    assert {(s.config.optim.epochs, s.config.optim.lr) for s in students} == {(6, 0.05)}
    # a teacher from a checkpoint has no training of its own: its rows go, and come back
    form.set("teacher.source", "checkpoint")
    assert not form.visible("teacher.optim.epochs") and "[teacher.optim]" not in form.text()
    form.set("teacher.source", "train")
    assert form.value("teacher.optim.epochs") == 10


def test_teacher_sources_switch_one_at_a_time_and_remember_what_they_held():
    form = opened(DIGITS / "kd_r20_r8.toml")
    assert form.teacher_source == "from_run"
    form.set("teacher.source", "checkpoint")
    assert form.message == (
        'teacher: give exactly one of checkpoint = "PATH", from_run = "NAME" or train = true'
    )
    assert form.error_key == "teacher.source"
    form.set("teacher.checkpoint", "teachers/r20.pth")
    assert form.experiment.teacher.checkpoint == "teachers/r20.pth"
    form.set("teacher.source", "from_run")
    assert form.experiment.teacher.from_run == "digits/teacher-resnet20"
    assert form.experiment.teacher.checkpoint == ""


def test_milestones_past_the_last_epoch_are_the_validators_error():
    form = opened(DIGITS / "vanilla_resnet8.toml")
    form.set("optim.schedule", "multistep")
    assert form.visible("optim.milestones") and form.experiment is not None  # defaults: unset
    form.set("optim.milestones", [3, 6])
    assert form.error_key == "optim.milestones"
    assert form.message.startswith("optim.milestones: 6 never takes effect: optim.epochs = 6")
    form.set("optim.milestones", [3, 5])
    assert form.experiment is not None


def test_a_new_experiment_is_written_by_tomli_w_under_a_header():
    form = ExperimentForm()
    assert form.new and form.experiment is None and form.message.startswith("name:")
    form.set("name", "kd-digits")
    form.set("distill.method", "kd")
    form.set("teacher.arch", "resnet20")
    form.set("teacher.source", "train")
    form.set("seeds", parse_text("0, 1", "list"))
    assert form.message == "valid · 3 runs (seeds ×2 · + teacher)"
    text = form.text("experiments/kd-digits.toml")
    assert text.startswith("# kd-digits: a knowledge-distillation experiment\n")
    assert "# check: kdtui validate experiments/kd-digits.toml" in text
    assert plan(reading.loads(text)) == plan(form.experiment)
    form.saved(text)
    assert not form.new and not form.dirty and form.text() == text


def test_typed_text_reads_as_toml_lists_or_words():
    assert parse_text("0.01, 0.05", "value") == [0.01, 0.05]
    assert parse_text("kl, l2+kl", "value") == ["kl", "l2+kl"]
    assert parse_text("[{stage = -1}]", "value") == [{"stage": -1}]
    assert parse_text("teachers/x.pth", "value") == "teachers/x.pth"
    assert parse_text("0", "list") == [0]
    assert parse_text("  ", "value") is MISSING
    assert parse_text("a, b", "text") == "a, b"
    for value in (0.0005, [1, 2], "l2+kl", ["true", "x"], True):
        assert parse_text(show(value), "value") == value


def test_an_emptied_field_unsets_its_key_and_the_default_applies():
    path = DIGITS / "kd_r20_r8.toml"
    form = opened(path)
    form.set("distill.temperature", MISSING)
    assert "temperature" not in form.text() and form.experiment.option("temperature") == 4.0
    assert '[distill]\nmethod = "kd"' in form.text()
    assert form.dirty
    form.set("distill.temperature", 4.0)  # typed back: same experiment, no longer dirty
    assert not form.dirty and plan(form.experiment) == plan(reading.load(path))


def test_a_value_cleared_and_typed_again_goes_back_to_its_line():
    path = ROOT / "experiments" / "cifar100" / "at_r32x4_r8x4.toml"
    form = opened(path)
    form.set("optim.epochs", MISSING)  # the field emptied on the way to a new value
    form.set("optim.epochs", 220)
    assert form.text() == path.read_text().replace("epochs = 240", "epochs = 220")
    form.set("distill.method", "kd")  # away and back: at's options return to their lines
    form.set("distill.method", "at")
    form.set("optim.epochs", 240)
    assert form.text() == path.read_text()


def test_an_inline_list_is_a_sweep_and_an_edit_keeps_it_on_its_line():
    form = ExperimentForm('name = "x"\n[optim]\nlr = [0.01, 0.05]  # two lrs\nepochs = 2\n')
    assert form.swept("optim.lr") and show(form.value("optim.lr")) == "0.01, 0.05"
    assert form.n_runs == 2
    form.set("optim.lr", parse_text("0.01, 0.05, 0.1", "value"))
    assert "lr = [0.01, 0.05, 0.1]  # two lrs\nepochs = 2" in form.text() and form.n_runs == 3
