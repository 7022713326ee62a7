"""The experiment TOML: what users write, what errors they get, what runs it expands to."""

from __future__ import annotations

import pytest

from engine.core import planning, reading, schema, writing

BASE = """
name = "kd-r20-r8"
seeds = [0]

[data]
dataset = "digits"
batch_size = 64

[teacher]
arch = "resnet20"
checkpoint = "teacher.pth"

[student]
arch = "resnet8"

[distill]
method = "kd"
temperature = 4.0

[optim]
lr = 0.05
epochs = 2
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Load from a folder holding BASE's teacher checkpoint (load checks that it exists)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher.pth").write_bytes(b"weights")


def load_text(tmp_path, text, name="exp.toml", overrides=None):
    path = tmp_path / name
    path.write_text(text)
    return reading.load(path, overrides)


def error_of(tmp_path, text, overrides=None) -> schema.ConfigError:
    with pytest.raises(schema.ConfigError) as info:
        load_text(tmp_path, text, overrides=overrides)
    return info.value


def test_a_valid_file_loads_with_its_values_and_defaults(tmp_path):
    exp = load_text(tmp_path, BASE)
    assert exp.name == "kd-r20-r8"
    assert exp.teacher.arch == "resnet20" and exp.student.arch == "resnet8"
    assert exp.distill.method == "kd"
    assert exp.option("temperature") == 4.0
    assert exp.option("kd_weight") == 0.9  # registry default
    assert exp.optim.epochs == 2 and exp.optim.momentum == 0.9


def test_unknown_key_names_file_line_key_and_suggests(tmp_path):
    e = error_of(tmp_path, BASE.replace("epochs = 2", "epocs = 2"))
    msg = str(e)
    assert "exp.toml" in msg and "optim.epocs" in msg
    assert "did you mean 'epochs'" in msg
    assert e.line == BASE.splitlines().index("epochs = 2") + 1


def test_unknown_top_level_key(tmp_path):
    e = error_of(tmp_path, "nmae = 'x'\n" + BASE.replace('name = "kd-r20-r8"', ""))
    assert "did you mean 'name'" in str(e) and e.line == 1


def test_wrong_type_is_named(tmp_path):
    e = error_of(tmp_path, BASE.replace("lr = 0.05", 'lr = "fast"'))
    assert "optim.lr" in str(e) and "must be a number" in str(e)


def test_bool_is_not_an_int(tmp_path):
    e = error_of(tmp_path, BASE.replace("epochs = 2", "epochs = true"))
    assert "must be an integer" in str(e)


def test_out_of_range_value(tmp_path):
    e = error_of(tmp_path, BASE.replace("lr = 0.05", "lr = -0.1"))
    assert "below the minimum" in str(e) and "optim.lr" in str(e)


def test_unknown_architecture_lists_valid_ones(tmp_path):
    e = error_of(tmp_path, BASE.replace('arch = "resnet8"', 'arch = "resnet9"'))
    msg = str(e)
    assert "student.arch" in msg and "resnet8x4" in msg and "did you mean 'resnet8'" in msg


def test_unknown_method_and_dataset_list_valid_ones(tmp_path):
    e = error_of(tmp_path, BASE.replace('method = "kd"', 'method = "kdd"'))
    assert "vanilla" in str(e) and "simkd" in str(e)
    e = error_of(tmp_path, BASE.replace('dataset = "digits"', 'dataset = "cifar"'))
    assert "cifar100" in str(e) and "digits" in str(e)


def test_option_of_another_method_is_refused_with_its_owner(tmp_path):
    e = error_of(tmp_path, BASE.replace("temperature = 4.0", "factor = 2"))
    assert "not an option of method 'kd'" in str(e) and "simkd" in str(e)


def test_misspelt_method_option_suggests(tmp_path):
    e = error_of(tmp_path, BASE.replace("temperature = 4.0", "temprature = 4.0"))
    assert "did you mean 'temperature'" in str(e)


def test_invalid_toml_gives_the_parser_line(tmp_path):
    e = error_of(tmp_path, BASE.replace("[optim]", "[optim"))
    assert "not valid TOML" in str(e) and e.line is not None


def test_teacher_source_is_required_for_distillation(tmp_path):
    e = error_of(tmp_path, BASE.replace('checkpoint = "teacher.pth"', ""))
    assert "exactly one of checkpoint" in str(e)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(schema.ConfigError, match="no such file"):
        reading.load(tmp_path / "nope.toml")


def test_round_trip_is_stable(tmp_path):
    exp = load_text(tmp_path, BASE)
    text = writing.dumps(exp)
    again = reading.loads(text)
    assert again == exp
    assert writing.dumps(again) == text
    full = reading.loads(writing.resolved_toml(exp), resolved=True)
    assert full == exp


def test_save_writes_a_header_comment_and_loads_back(tmp_path):
    exp = load_text(tmp_path, BASE)
    path = writing.save(exp, tmp_path / "out" / "x.toml", header="made by a test")
    assert path.read_text().startswith("# made by a test\n")
    assert reading.load(path) == exp


def test_command_line_overrides(tmp_path):
    exp = load_text(
        tmp_path, BASE, overrides=["optim.epochs=3", "optim.lr=0.01", "student.arch=resnet14"]
    )
    assert exp.optim.epochs == 3 and exp.optim.lr == 0.01 and exp.student.arch == "resnet14"


def test_bad_override_is_reported_like_a_file_error(tmp_path):
    e = error_of(tmp_path, BASE, overrides=["optim.epohcs=3"])
    assert "did you mean 'epochs'" in str(e)
    with pytest.raises(schema.ConfigError, match="KEY=VALUE"):
        load_text(tmp_path, BASE, overrides=["optim.epochs"])


def test_a_list_value_is_a_sweep_and_seeds_repeat_each_point(tmp_path):
    exp = load_text(
        tmp_path,
        BASE.replace("seeds = [0]", "seeds = [0, 1]").replace("lr = 0.05", "lr = [0.01, 0.05]"),
    )
    plans = planning.expand(exp)
    assert [(p.config.optim.lr, p.seed) for p in plans] == [
        (0.01, 0),
        (0.01, 1),
        (0.05, 0),
        (0.05, 1),
    ]
    assert all(p.config.sweep == {} and p.config.seeds == [p.seed] for p in plans)


def test_sweep_table_over_method_keeps_each_methods_options(tmp_path):
    text = BASE + '\n[sweep]\n"distill.method" = ["vanilla", "kd", "simkd"]\n'
    plans = planning.expand(load_text(tmp_path, text))
    by_method = {p.config.distill.method: p.config.distill.options for p in plans}
    assert by_method["vanilla"] == {}
    assert by_method["kd"]["temperature"] == 4.0
    assert by_method["simkd"]["factor"] == 2


def test_sweep_of_unknown_key_is_refused(tmp_path):
    e = error_of(tmp_path, BASE + '\n[sweep]\n"optim.lrr" = [0.1]\n')
    assert "did you mean 'optim.lr'" in str(e)


def test_each_sweep_point_is_validated(tmp_path):
    e = error_of(tmp_path, BASE + '\n[sweep]\n"optim.lr" = [0.1, -1.0]\n')
    assert "below the minimum" in str(e)


def test_train_one_teacher_adds_a_teacher_run_first(tmp_path):
    text = BASE.replace('checkpoint = "teacher.pth"', "train = true\n[teacher.optim]\nepochs = 5")
    plans = planning.expand(load_text(tmp_path, text))
    assert [p.role for p in plans] == ["teacher", "student"]
    teacher = plans[0].config
    assert teacher.distill.method == "vanilla" and teacher.student.arch == "resnet20"
    assert teacher.optim.epochs == 5 and plans[1].config.optim.epochs == 2


def test_projector_list_is_checked(tmp_path):
    text = BASE.replace(
        'method = "kd"\ntemperature = 4.0',
        'method = "simkd"\nprojectors = [{stage = -1, weight = 0.5}, {stag = -2}]',
    )
    e = error_of(tmp_path, text)
    assert "distill.projectors" in str(e) and "unknown key" in str(e)


def test_config_module_is_torch_free():
    import subprocess
    import sys

    code = (
        "import kdtui.cli, engine.core.reading, engine.core.planning, engine.core.writing, engine.core.store, engine.core.leaderboard, engine.core.export, sys; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


MULTISTEP = BASE.replace("epochs = 2", "epochs = 6\nschedule = 'multistep'\nmilestones = [3, 6]")


def test_a_milestone_at_or_past_the_last_epoch_is_an_error_that_suggests_the_fix(tmp_path):
    e = error_of(tmp_path, MULTISTEP)
    assert (
        e.key == "optim.milestones"
        and e.line == MULTISTEP.splitlines().index("milestones = [3, 6]") + 1
    )
    assert e.reason.startswith("6 never takes effect: optim.epochs = 6 ends at epoch 5")
    assert "optim.milestones = [3, 4, 5]" in e.reason and 'schedule = "cosine"' in e.reason
    assert load_text(tmp_path, MULTISTEP.replace("[3, 6]", "[3, 5]")).optim.milestones == [3, 5]
    # another schedule never reads them; the default milestones are not the file's doing
    assert load_text(tmp_path, MULTISTEP.replace("'multistep'", "'cosine'"))
    assert load_text(tmp_path, BASE).optim.milestones == [150, 180, 210]
    # a sweep point and an override are checked the same way
    swept = MULTISTEP.replace(
        "milestones = [3, 6]", "milestones = [3]\n[sweep]\n'optim.epochs' = [6, 3]"
    )
    assert "optim.epochs = 3 (a sweep point)" in error_of(tmp_path, swept).reason
    e = error_of(tmp_path, MULTISTEP.replace("[3, 6]", "[3, 5]"), overrides=["optim.epochs=4"])
    assert e.key == "optim.milestones" and e.reason.startswith("5 never takes effect")


def test_a_teacher_trained_here_gets_the_milestones_check_with_its_own_epochs(tmp_path):
    text = MULTISTEP.replace("[3, 6]", "[3, 5]").replace(
        'checkpoint = "teacher.pth"', "train = true\n[teacher.optim]\nepochs = 4"
    )
    e = error_of(tmp_path, text)
    assert e.key == "teacher.optim.milestones"
    assert (
        "teacher.optim.epochs = 4" in e.reason and "teacher.optim.milestones = [2, 3]" in e.reason
    )


def test_an_override_of_a_key_swept_in_a_sweep_table_replaces_the_sweep(tmp_path):
    text = BASE + "\n[sweep.optim]\nlr = [0.1, 0.2]\n"
    assert load_text(tmp_path, text).sweep == {"optim.lr": [0.1, 0.2]}
    exp = load_text(tmp_path, text, overrides=["optim.lr=0.3"])
    assert exp.sweep == {} and exp.optim.lr == 0.3
    exp = load_text(tmp_path, text, overrides=["sweep.optim.lr=[0.4, 0.5]"])
    assert exp.sweep == {"optim.lr": [0.4, 0.5]}
    e = error_of(tmp_path, BASE, overrides=["optim.lr.x=1"])
    assert (
        e.file.endswith("(--set optim.lr.x=1)") and e.reason == "cannot set it: lr is not a table"
    )
