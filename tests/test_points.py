"""How runs are named on screen: sweep points abbreviated (one function), names shortened
in the middle so the point stays whole, and the first epoch's ETA from the steps done."""

from __future__ import annotations

from types import SimpleNamespace

from engine.core import reading
from engine.core.points import short_point
from kdtui.widgets.cells import name_point

LONG = "cifar100/simkd-lr-factor-sweep-r32x4-mobilenetv2"


def test_short_point_abbreviates_long_keys_and_keeps_values_and_prefixes():
    assert short_point("lr=0.05 factor=4 seed=0") == "lr=0.05 f=4 seed=0"
    assert short_point("weight_decay=0.0005 batch_size=64") == "wd=0.0005 bs=64"
    assert short_point("temperature=4 run 3") == "T=4 run 3"
    # two shown keys sharing a tail stay told apart by their prefix
    assert short_point("teacher.arch=resnet8 student.arch=resnet8") == (
        "teacher.arch=resnet8 student.arch=resnet8"
    )
    assert short_point("distill.factor=2") == "distill.f=2"
    assert short_point("") == ""


def test_a_name_shortens_in_the_middle_so_the_point_stays_whole():
    point = "lr=0.05 factor=2 weight_decay=0.0005 seed=0"
    assert name_point(LONG, point).plain == f"{LONG} lr=0.05 f=2 wd=0.0005 seed=0"
    for width in (40, 50, 60):
        shown = name_point(LONG, point, width).plain
        assert len(shown) <= width
        assert shown.endswith(" lr=0.05 f=2 wd=0.0005 seed=0")
        assert shown.startswith("cifar") and "…" in shown and shown.split(" ")[0].endswith("v2")
    # no room at all: the name keeps 8 characters and the point is cut at its end
    assert name_point(LONG, point, 20).plain == "cif…etv2 lr=0.05 f=…"
    assert name_point("kd", "lr=0.1", 30, brackets=True).plain == "kd [lr=0.1]"


def test_the_first_epoch_has_an_eta_from_the_steps_done(store):
    from engine.worker import FolderCallbacks

    exp = reading.loads(
        'name = "eta"\n[data]\ndataset = "digits"\n[student]\narch = "resnet8"\n'
        '[distill]\nmethod = "vanilla"\n[optim]\nepochs = 10\n'
    )
    (run,) = store.submit(exp)
    store.claim(run.id)
    m = SimpleNamespace(name=str(run.id), epoch=0, step=0, cfg=exp, dir=store.run(run.id).path)
    cb = FolderCallbacks({m.name: run.path})  # what the worker writes: the run's folder
    info = {"epochs": 10, "params": 1, "trainable_params": 1, "steps_per_epoch": 100}
    cb.on_start(m, info)
    cb.epoch_started[m.name] -= 2.0  # 2 s for the first 20 steps: 0.1 s a step
    cb.on_step(m, 0, 20, {"loss": 1.0}, 0.1)
    eta = store.run(run.id).eta_s
    assert eta is not None and 98 <= eta <= 100  # 980 steps left at 0.1 s (+ this test's time)
    # once an epoch is timed, on_epoch's whole-epoch estimate takes over
    cb.epoch_times[m.name] = [10.0]
    store.update(run.id, eta_s=None)
    cb.on_step(m, 1, 20, {"loss": 1.0}, 0.1)
    assert store.run(run.id).eta_s is None
