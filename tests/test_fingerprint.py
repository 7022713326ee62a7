"""Run identity: the fingerprint says when two runs are the same experiment up to the seed."""

from __future__ import annotations

import json

from engine.core import fingerprint as fp
from engine.core import planning, reading
from engine.core.store import SCHEMA_VERSION, Store

BASE = """
name = "fp"
seeds = [0]
[data]
dataset = "digits"
[teacher]
arch = "resnet20"
checkpoint = "{ckpt}"
[student]
arch = "resnet8"
[distill]
method = "kd"
[optim]
epochs = 2
"""


def exp(tmp_path, *overrides: str, ckpt: str = "t.pth"):
    path = tmp_path / "fp.toml"
    path.write_text(BASE.format(ckpt=tmp_path / ckpt))
    if not (tmp_path / ckpt).exists():  # load() checks that the checkpoint exists
        (tmp_path / ckpt).write_bytes(b"weights")
    return reading.load(path, list(overrides))


def one(tmp_path, *overrides, **kw) -> str:
    (plan,) = planning.expand(exp(tmp_path, *overrides, **kw))
    return fp.fingerprint(plan.config)


def test_seed_names_and_speed_settings_do_not_change_the_fingerprint(tmp_path):
    ref = one(tmp_path)
    same = [
        "seeds=[3]",
        "name='other'",
        "description='again'",
        "run.device='cuda:1'",
        "run.threads=1",
        "run.compile=true",
        "run.compile_mode='max-autotune'",
        "run.channels_last='on'",
        "run.priority=5",
        "run.fuse=false",
        "run.teacher_cache='disk'",
        "run.teacher_cache_dtype='fp32'",
        "run.teacher_cache_mb=64",
        "run.log_every=1",
        "run.checkpoint_every=7",
        "data.root='/elsewhere'",
        "data.download=true",
        "data.eval_batch_size=17",
        "data.loader='device'",  # what auto means for an in-memory data set
        "data.num_workers=7",  # read only by the DataLoader path
        "data.hflip='off'",  # what auto means for digits
        "data.num_classes=3",  # synthetic-only keys
        "optim.milestones=[1]",  # not read by the cosine schedule...
    ]
    cosine = one(tmp_path, "optim.schedule='cosine'")
    for item in same:
        base = cosine if item.startswith("optim.milestones") else ref
        extra = ["optim.schedule='cosine'"] if base is cosine else []
        assert one(tmp_path, item, *extra) == base, item


def test_what_changes_the_experiment_changes_the_fingerprint(tmp_path):
    ref = one(tmp_path)
    differ = [
        "optim.lr=0.1",
        "optim.epochs=3",
        "optim.milestones=[1]",  # read by multistep (the default schedule)
        "data.batch_size=32",
        "data.augment=false",
        "data.hflip='on'",
        "data.loader='dataloader'",
        "data.data_seed=1",
        "student.arch='resnet14'",
        "distill.temperature=2.0",
        "run.eval_every=2",
        "run.max_steps=3",
        "run.amp='bf16'",
    ]
    seen = {ref}
    for item in differ:
        value = one(tmp_path, item)
        assert value not in seen, item
        seen.add(value)


def test_a_teacher_checkpoint_enters_by_its_content_not_its_path(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"weights")
    (tmp_path / "b.pth").write_bytes(b"weights")
    (tmp_path / "c.pth").write_bytes(b"other weights")
    a, b, other = (one(tmp_path, ckpt=name) for name in ("a.pth", "b.pth", "c.pth"))
    assert a == b and a != other


def test_resubmitting_a_trained_teacher_experiment_groups_with_the_earlier_one(store):
    """store.submit rewrites `train = true` to a run id; the fingerprint keeps the recipe."""
    text = BASE.replace('checkpoint = "{ckpt}"', "train = true")
    first = store.submit(reading.loads(text))
    again = store.submit(reading.loads(text.replace("seeds = [0]", "seeds = [1]")))
    assert first[1].load_config().teacher.from_run != again[1].load_config().teacher.from_run
    assert [r.fingerprint for r in first] == [r.fingerprint for r in again]
    assert first[0].fingerprint != first[1].fingerprint
    # naming the teacher run by experiment gives the same student fingerprint as training it
    named = store.submit(reading.loads(text.replace("train = true", f'from_run = "{first[0].id}"')))
    assert named[0].fingerprint == first[1].fingerprint
    ident = json.loads(first[1].identity)
    assert ident["teacher"] == {"arch": "resnet20", "source": f"run:{first[0].fingerprint}"}
    assert fp.digest(ident) == first[1].fingerprint
    # a different teacher recipe is a different experiment
    longer = store.submit(
        reading.loads(text.replace("[student]", "[teacher.optim]\nepochs = 5\n[student]"))
    )
    assert longer[1].fingerprint != first[1].fingerprint


def test_an_older_store_gets_the_new_columns_and_fingerprints_from_its_configs(home, tmp_path):
    (tmp_path / "t.pth").write_bytes(b"weights")
    store = Store(home)
    runs = store.submit(reading.loads(BASE.format(ckpt=tmp_path / "t.pth")))
    teacher_trained = store.submit(
        reading.loads(BASE.replace('checkpoint = "{ckpt}"', "train = true"))
    )
    expected = [r.fingerprint for r in runs + teacher_trained]
    # turn it into a version-1 store: no fingerprint, identity or trained_params columns
    con = store.conn
    con.execute("DROP INDEX runs_fingerprint")
    for column in ("fingerprint", "identity", "trained_params"):
        con.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    con.execute("PRAGMA user_version = 1")
    store.close()

    migrated = Store(home)
    assert migrated.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r.fingerprint for r in migrated.runs()] == expected
    assert all(r.trained_params is None for r in migrated.runs())
    migrated.update(runs[0].id, trained_params=123)
    assert migrated.run(runs[0].id).trained_params == 123


def test_diff_labels_show_only_the_keys_that_differ_with_short_names():
    a = {"distill": {"method": "kd", "T": 4.0}, "optim": {"lr": 0.05, "epochs": 2}}
    b = {"distill": {"method": "kd", "T": 4.0}, "optim": {"lr": 0.1, "epochs": 3}}
    d = {"distill": {"method": "vanilla"}, "optim": {"lr": 0.05, "epochs": 2}}
    labels = fp.diff_labels({"a": a, "b": b, "d": d})
    # T is held by two of them with one value: not a difference
    assert labels == {
        "a": "method=kd lr=0.05 epochs=2",
        "b": "method=kd lr=0.1 epochs=3",
        "d": "method=vanilla lr=0.05 epochs=2",
    }
    teacher = {"teacher": {"arch": "resnet20"}, "student": {"arch": "resnet8"}}
    student = {"teacher": {"arch": "resnet56"}, "student": {"arch": "resnet14"}}
    assert fp.diff_labels({"t": teacher, "s": student})["s"] == (
        "teacher.arch=resnet56 student.arch=resnet14"
    )


def test_labels_stay_distinct_when_configs_differ_only_by_a_key_one_lacks():
    plain = {"student": {"arch": "resnet8"}, "optim": {"lr": 0.05}}
    warm = {"student": {"arch": "resnet8", "init": "sha256:abcdef0123"}, "optim": {"lr": 0.05}}
    other = {"student": {"arch": "resnet8"}, "optim": {"lr": 0.1}}
    labels = fp.diff_labels({"p": plain, "w": warm, "o": other})
    assert labels == {"p": "lr=0.05 init=none", "w": "lr=0.05 init=sha256:abcdef01", "o": "lr=0.1"}
