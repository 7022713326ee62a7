"""The background engine: a real engine process trains tiny digits runs on CPU.

Nothing of the engine is mocked: every end-to-end test starts the engine as
a detached process (through the CLI or `ensure_running`) on a fresh store,
kills real workers and engines with real signals, and reads the outcome
from the store. Placement is also tested as a pure function.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.core import devices, layout, reading, runlog
from engine.core.liveness import pid_alive, run_process_alive
from engine.core.store import Store
from engine.daemon import client
from engine.daemon.lock import EXIT_RUNNING
from engine.daemon.scheduling import (
    build_slots,
    dependency,
    discover_gpus,
    parse_gpus,
    place,
    unplaceable,
    worker_env,
)

ROOT = Path(__file__).resolve().parent.parent


def tiny(
    name: str, *, seeds=(0,), epochs: int = 1, steps: int = 1, lr: str = "0.05", more: str = ""
) -> str:
    """A digits experiment whose runs take a few seconds on one CPU core."""
    return f"""
name = "{name}"
seeds = {list(seeds)}
[data]
dataset = "digits"
[student]
arch = "resnet8"
[optim]
lr = {lr}
epochs = {epochs}
[run]
max_steps = {steps}
log_every = 1
{more}
"""


# ---------------------------------------------------------------- placement (pure)


@dataclass
class Queued:
    id: int
    priority: int = 0
    fuse_key: str | None = None
    resume: int = 0


def test_one_slot_per_visible_gpu_by_default_and_a_cpu_slot_for_cpu_runs():
    slots = build_slots(["0", "1", "2", "3"])
    assert [(s.gpu, s.name) for s in slots] == [
        ("0", "gpu0"),
        ("1", "gpu1"),
        ("2", "gpu2"),
        ("3", "gpu3"),
        (None, "cpu0"),
    ]


def test_gpus_option_picks_gpus_and_slots_per_gpu_packs_them_interleaved():
    gpus = parse_gpus("0,2", ["0", "1", "2", "3"])
    slots = build_slots(gpus, slots_per_gpu=2)
    # spread over GPUs before packing a second run on one
    assert [s.name for s in slots] == ["gpu0.0", "gpu2.0", "gpu0.1", "gpu2.1", "cpu0"]
    assert [s.gpu for s in slots] == ["0", "2", "0", "2", None]


def test_an_invisible_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="GPU 5 is not visible here"):
        parse_gpus("0,5", ["0", "1"])


def test_a_cpu_only_box_gets_one_slot_or_as_many_as_asked():
    assert [(s.gpu, s.name) for s in build_slots([])] == [(None, "cpu0")]
    assert [s.name for s in build_slots([], cpu_slots=3)] == ["cpu0", "cpu1", "cpu2"]
    assert parse_gpus("none", ["0", "1"]) == []


def test_gpu_discovery_honours_cuda_visible_devices():
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": "1,3"}) == ["1", "3"]
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,2"}) == ["0"]  # CUDA stops at -1


def test_placement_is_fifo_with_priority_first():
    queued = [Queued(1), Queued(2), Queued(3, priority=5), Queued(4)]
    slots = build_slots(["0", "1"])
    assert [(s.name, ids) for (s,), ids in place(queued, slots)] == [
        ("gpu0", [3]),
        ("gpu1", [1]),
    ]
    assert place(queued, []) == []


def test_runs_sharing_a_fuse_key_go_to_one_worker_unless_resumed():
    queued = [
        Queued(1, fuse_key="t|digits"),
        Queued(2),
        Queued(3, fuse_key="t|digits"),
        Queued(4, fuse_key="t|digits", resume=1),  # resumes alone: its own epoch
        Queued(5, fuse_key="other"),
    ]
    placed = place(queued, build_slots([], cpu_slots=4))
    assert [ids for _, ids in placed] == [[1, 3], [2], [4], [5]]


def test_cpu_runs_take_cpu_slots_and_cuda_n_runs_wait_for_gpu_n():
    slots = build_slots(["0", "1"])  # gpu0, gpu1, cpu0
    queued = [Queued(1), Queued(2), Queued(3), Queued(4), Queued(5)]
    devices = {1: "cpu", 2: "cuda:1", 3: "auto", 4: "cpu", 5: "cuda"}
    placed = [(s.name, ids) for (s,), ids in place(queued, slots, devices)]
    # run 4 (cpu) waits for the one CPU slot; "auto" never lands on a CPU slot of a GPU box
    assert placed == [("cpu0", [1]), ("gpu1", [2]), ("gpu0", [3])]
    # only gpu0 free: the cuda:1 run waits without holding up the runs behind it
    only_gpu0 = [s for s in slots if s.name == "gpu0"]
    assert place([Queued(2), Queued(5)], only_gpu0, devices, gpu_slots_exist=True) == [
        ((only_gpu0[0],), [5])
    ]
    # a CPU box: every run but a CUDA one fits its CPU slots
    cpu = build_slots([], cpu_slots=2)
    assert [ids for _, ids in place(queued[:2], cpu, {1: "auto", 2: "cpu"})] == [[1], [2]]


def test_a_device_no_slot_can_serve_is_refused_with_the_fix():
    gpu_box = build_slots(["0", "2"])
    assert unplaceable("cuda:2", gpu_box) is None
    assert unplaceable("cpu", gpu_box) is None
    why = unplaceable("cuda:1", gpu_box)
    assert "run.device = 'cuda:1'" in why and "GPU 0, 2" in why and "--gpus" in why
    why = unplaceable("cuda", build_slots([]))
    assert "no GPU" in why and 'device = "auto"' in why
    assert unplaceable("auto", build_slots([])) is None
    assert unplaceable("mps", build_slots([])) is None  # a Mac: the host's GPU
    assert [s.name for (s,), _ in place([Queued(1)], gpu_box, {1: "mps"})] == ["cpu0"]


def names(placed) -> list[tuple[list[str], list[int]]]:
    return [([s.name for s in slots], ids) for slots, ids in placed]


def test_a_run_of_n_processes_takes_n_slots_on_n_distinct_gpus_or_n_cpu_slots():
    gpu_box = build_slots(["0", "1", "2"], slots_per_gpu=2)  # gpu0.0 gpu1.0 gpu2.0 gpu0.1 ...
    queued = [Queued(1), Queued(2)]
    placed = place(queued, gpu_box, {1: "cuda", 2: "cpu"}, nprocs={1: 2, 2: 1})
    # two GPUs, one process each: never two ranks on one GPU's two slots
    assert names(placed) == [(["gpu0.0", "gpu1.0"], [1]), (["cpu0"], [2])]
    cpu_box = build_slots([], cpu_slots=3)
    placed = place([Queued(1), Queued(2)], cpu_box, nprocs={1: 2})
    assert names(placed) == [(["cpu0", "cpu1"], [1]), (["cpu2"], [2])]
    # a fused group of two-process runs: one worker, two slots
    fused = [Queued(1, fuse_key="k"), Queued(2, fuse_key="k")]
    assert names(place(fused, cpu_box, nprocs={1: 2, 2: 2})) == [(["cpu0", "cpu1"], [1, 2])]


def test_a_run_of_n_processes_holds_the_free_slots_until_enough_are_free():
    cpu_box = build_slots([], cpu_slots=4)
    free = cpu_box[2:]  # cpu0 and cpu1 are busy
    queued = [Queued(1), Queued(2), Queued(3, priority=-1)]
    # run 1 needs three slots, two are free: the runs behind it do not take them
    assert place(queued, free, nprocs={1: 3}) == []
    # once three are free it starts, and the fourth goes to the next run
    assert names(place(queued, cpu_box[1:], nprocs={1: 3})) == [(["cpu1", "cpu2", "cpu3"], [1])]
    assert names(place(queued, cpu_box, nprocs={1: 3})) == [
        (["cpu0", "cpu1", "cpu2"], [1]),
        (["cpu3"], [2]),
    ]
    # what it holds is its kind of slot only: a GPU run behind it goes on
    gpu_box = build_slots(["0"])  # gpu0, cpu0
    assert names(place(queued, gpu_box, {1: "cpu", 2: "cuda"}, nprocs={1: 2})) == [(["gpu0"], [2])]


def test_a_worker_sees_the_gpus_of_its_slots_and_a_cpu_group_a_share_of_the_cores():
    gpu_box = build_slots(["0", "2", "3"])
    (slots, _), *_ = place([Queued(1)], gpu_box, {1: "cuda"}, nprocs={1: 2})
    env = worker_env(slots, len(gpu_box), {}, cpus=16)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2" and env[devices.ENGINE_GPU_ENV] == "0,2"
    assert "OMP_NUM_THREADS" not in env  # GPU ranks: torchrun's default
    cpu_box = build_slots([], cpu_slots=4)
    (slots, _), *_ = place([Queued(1)], cpu_box, nprocs={1: 2})
    env = worker_env(slots, len(cpu_box), {}, cpus=16)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "4"  # per process
    assert "OMP_NUM_THREADS" not in worker_env(slots, 4, {"OMP_NUM_THREADS": "1"}, cpus=16)


def test_a_run_of_more_processes_than_the_engine_has_slots_is_refused_naming_both():
    cpu_box = build_slots([], cpu_slots=2)
    assert unplaceable("auto", cpu_box, 2) is None
    why = unplaceable("auto", cpu_box, 3)
    assert "[run] nproc_per_node = 3" in why and "this engine has 2 CPU slots" in why
    assert "--cpu-slots 3" in why and "nproc_per_node = 2 or less" in why
    gpu_box = build_slots(["0", "1"], slots_per_gpu=4)  # 8 slots, 2 GPUs
    assert unplaceable("cuda", gpu_box, 2) is None
    why = unplaceable("cuda", gpu_box, 4)
    assert "[run] nproc_per_node = 4" in why and "2 GPU slots on distinct GPUs" in why
    assert "GPU 0, 1" in why and "--gpus" in why
    # a CPU run on a GPU box counts the CPU slots
    why = unplaceable("cpu", gpu_box, 2)
    assert "this engine has 1 CPU slot (cpu0)" in why


def test_a_worker_sees_its_slots_gpu_as_cuda_0():
    wd = devices.worker_device
    assert wd("cuda:3", "3") == "cuda:0"  # GPU 3 as the engine numbers them
    assert wd("cuda", "3") == "cuda:0" and wd("auto", "3") == "auto"
    assert wd("cpu", "") == "cpu" and wd("auto", "") == "auto" and wd("mps", "") == "mps"
    with pytest.raises(devices.DeviceError, match=r"placed this run on GPU 3.*\"cuda:3\""):
        wd("cuda:1", "3")
    with pytest.raises(devices.DeviceError, match="CPU slot"):
        wd("cuda", "")
    # not under the engine (`kdtui run`): torch's own numbering
    assert wd("cuda:1", None) == "cuda:1" and wd("auto", None) == "auto"


@dataclass
class Row:
    id: int
    depends_on: int | None = None
    status: str = "queued"
    error: str | None = None
    experiment: str = "exp"


def test_a_student_waits_for_its_teacher_run_and_fails_when_it_failed():
    student = Row(id=2, depends_on=1)
    assert dependency(Row(id=3), None) == ("ready", "")
    assert dependency(student, Row(id=1, status="running"))[0] == "wait"
    assert dependency(student, Row(id=1, status="done")) == ("ready", "")
    state, reason = dependency(student, Row(id=1, status="failed", error="boom"))
    assert state == "fail" and "teacher run 1" in reason and "boom" in reason
    assert dependency(student, None)[0] == "fail"  # the teacher run was removed


def test_a_recorded_pid_counts_only_while_it_still_runs_a_kdtui_process():
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "kdtui"])
    other = subprocess.Popen(["sleep", "30"])
    try:
        now = time.time()
        assert run_process_alive(ours.pid, since=now)
        # a process that started long after the row was written reuses the number
        assert not run_process_alive(ours.pid, since=now - 3600)
        assert not run_process_alive(other.pid, since=now)  # not a kdtui process
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()
    assert not run_process_alive(ours.pid, since=now)


def test_a_dead_worker_is_reported_by_the_last_line_the_run_logged(tmp_path):
    (tmp_path / "log.txt").write_text(
        "2026-01-01 10:00:00 epoch 2/3 train top1 40.00\n2026-01-01 10:00:01 engine: placed\n"
    )
    (tmp_path / "worker.log").write_text("Traceback (most recent call last):\nMemoryError: oom\n")
    assert runlog.last_line(tmp_path) == "epoch 2/3 train top1 40.00"  # killed: where it stopped
    assert runlog.last_line(tmp_path, output_first=True) == "MemoryError: oom"  # crashed: why


def test_the_engine_and_its_commands_import_without_torch():
    code = "import sys, engine.daemon.client, engine.daemon.server, kdtui.cli.engine, kdtui.cli.runs; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m in ('engine.worker', 'engine.train')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- end to end


class Box:
    """A store directory and the means to drive its engine like a user would."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.store = Store(self.home)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def cli(self, *args: str, check: bool = True, timeout: float = 60, **kw):
        proc = subprocess.run(
            [sys.executable, "-m", "kdtui.cli", *map(str, args)],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"kdtui {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def run(self, run_id: int):
        return self.store.run(run_id)

    def engine_pid(self) -> int:
        st = client.status(self.home)
        assert st is not None, "no engine running"
        return int(st["pid"])

    def wait(self, predicate, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        rows = [(r.id, r.status, r.epoch, r.error) for r in self.store.runs()]
        log = (
            (self.home / layout.ENGINE_LOG).read_text()
            if (self.home / "engine.log").exists()
            else ""
        )
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\nruns: {rows}\n{log}")

    def wait_status(self, run_id: int, *statuses: str, timeout: float = 60.0):
        return self.wait(
            lambda: (r := self.run(run_id)).status in statuses and r,
            f"run {run_id} to be {'/'.join(statuses)}",
            timeout,
        )

    def wait_training(self, run_id: int, epoch: int = 0, timeout: float = 60.0):
        """Until the run's worker has logged a step (and finished `epoch` epochs)."""
        return self.wait(
            lambda: (
                (r := self.run(run_id)).status == "running"
                and r.pid
                and r.epoch >= epoch
                and self.store.metrics(run_id)[:1]
                and r
            ),
            f"run {run_id} to train past epoch {epoch}",
            timeout,
        )

    def epochs_tested(self, run_id: int) -> list[int]:
        return [m.epoch for m in self.store.metrics(run_id, names=["test/top1"])]


def our_processes(home: Path) -> list[int]:
    """Engines and workers of this test's store (their command lines name it)."""
    mine = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(home).encode() in cmdline and pid_alive(int(entry)):
            mine.append(int(entry))
    return mine


@pytest.fixture
def box(tmp_path, monkeypatch):
    box = Box(tmp_path)
    monkeypatch.setenv("KDTUI_HOME", str(box.home))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU slots, even on a GPU machine
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two workers on two cores stay sane
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    yield box
    client.stop(box.home, timeout=5, stop_runs=True)
    left = our_processes(box.home)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    box.store.close()
    assert not left, f"processes left behind: {left}"


def gpu_seen_by(run) -> str | None:
    """CUDA_VISIBLE_DEVICES in the environment of a run's live worker process."""
    for item in Path(f"/proc/{run.pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            return item.split(b"=", 1)[1].decode()
    return None


def interval(run) -> tuple[float, float]:
    return run.started, run.ended


@pytest.mark.slow
def test_submit_returns_at_once_and_the_engine_trains_three_runs_in_order_in_one_slot(box):
    exp = box.write("three.toml", tiny("three", seeds=[0, 1, 2]))
    t0 = time.monotonic()
    out = box.cli("submit", exp).stdout
    assert time.monotonic() - t0 < 10  # queued and engine started, nothing trained yet
    assert "queued 3 runs (1, 2, 3)" in out and "engine started" in out
    assert [s["name"] for s in client.status(box.home)["slots"]] == ["cpu0"]

    follow = box.cli("logs", "3", "-f", timeout=120)  # returns when run 3 ends
    assert "epoch 1/1" in follow.stdout and "run 3 done" in follow.stderr

    runs = box.store.runs()
    assert [r.status for r in runs] == ["done"] * 3
    for a, b in zip(runs, runs[1:]):
        assert a.ended <= b.started  # one after the other, in submission order
    assert "done" in box.cli("ls").stdout

    # removing a finished run asks first, then takes its row, metrics and folder
    kept = box.cli("rm", "1", input="n\n", check=False)
    assert kept.returncode != 0 and box.run(1).status == "done"
    folder = box.run(1).path
    box.cli("rm", "1", "--yes")
    assert not folder.exists() and [r.id for r in box.store.runs()] == [2, 3]
    assert box.store.metrics(1) == []


@pytest.mark.slow
def test_cancel_a_queued_run_at_once_and_running_ones_even_if_their_worker_hangs(box):
    box.cli("engine", "start", "--cancel-grace", "3")
    exp = box.write("long.toml", tiny("long", seeds=[0, 1, 2], epochs=3, steps=100))
    box.cli("submit", exp)
    first = box.wait_training(1)

    assert "cancelled" in box.cli("cancel", "2").stdout
    assert box.run(2).status == "cancelled"  # queued: at once
    refused = box.cli("rm", "1", "--yes", check=False)
    assert refused.returncode != 0 and "cancel" in refused.stderr

    assert "cancelling" in box.cli("cancel", "1").stdout
    box.wait_status(1, "cancelled", timeout=20)
    assert box.run(1).error == "cancelled during epoch 1"  # stopped by itself, no signal
    box.wait(lambda: not pid_alive(first.pid), "the worker of run 1 to exit", 20)

    # a frozen worker cannot stop by itself: the engine escalates to signals
    third = box.wait_training(3)
    os.kill(third.pid, signal.SIGSTOP)
    box.cli("cancel", "3")
    box.wait_status(3, "cancelled", timeout=30)
    assert not pid_alive(third.pid)
    assert "SIGTERM" in (box.home / "engine.log").read_text()
    assert pid_alive(box.engine_pid())


@pytest.mark.slow
def test_a_worker_killed_with_sigkill_fails_its_run_the_queue_goes_on_and_resume_completes_it(
    box,
):
    victim = box.write("victim.toml", tiny("victim", epochs=3, steps=5))
    after = box.write("after.toml", tiny("after"))
    box.cli("submit", victim)
    box.cli("submit", after)
    run = box.wait_training(1, epoch=1)
    os.kill(run.pid, signal.SIGKILL)

    failed = box.wait_status(1, "failed")
    assert "killed by SIGKILL" in failed.error and "last log line" in failed.error
    box.wait_status(2, "done")  # a failed run never stops the queue

    assert "queued to continue from its last checkpoint" in box.cli("resume", "1").stdout
    box.wait_status(1, "done")
    assert box.epochs_tested(1) == [0, 1, 2]  # every epoch's test accuracy, exactly once
    assert "resumed from" in (run.path / "log.txt").read_text()


@pytest.mark.slow
def test_after_the_engine_is_killed_workers_train_on_and_a_restart_resumes_what_died(box):
    box.cli("engine", "start")
    box.cli("submit", box.write("long.toml", tiny("long", epochs=4, steps=8)))
    box.cli("submit", box.write("next.toml", tiny("next")))
    run = box.wait_training(1, epoch=1)
    engine = box.engine_pid()

    os.kill(engine, signal.SIGKILL)
    box.wait(lambda: not pid_alive(engine), "the engine to die")
    assert pid_alive(run.pid)  # the worker does not need the engine
    assert client.status(box.home) is None

    box.cli("engine", "start")
    st = client.status(box.home)
    assert st["slots"][0]["worker"] == run.pid  # adopted, not trained twice
    assert box.run(2).status == "queued"  # its slot is taken by the adopted worker

    # now the machine "crashes": engine and worker die together
    os.kill(box.engine_pid(), signal.SIGKILL)
    box.wait(lambda: client.status(box.home) is None, "the engine to die")
    os.kill(run.pid, signal.SIGKILL)
    box.wait(lambda: not pid_alive(run.pid), "the worker to die")
    assert box.run(1).status == "running"  # nobody is left to notice

    box.cli("engine", "start")
    box.wait_status(1, "done")
    second = box.wait_status(2, "done")
    assert box.epochs_tested(1) == [0, 1, 2, 3]
    assert "resumed from" in (run.path / "log.txt").read_text()
    assert box.run(1).ended <= second.started


@pytest.mark.slow
def test_the_engine_outlives_the_command_that_started_it_and_is_one_per_store(box):
    started = box.cli("engine", "start")
    assert "engine started: pid" in started.stdout
    pid = box.engine_pid()
    assert pid_alive(pid)  # the starting command has exited; the engine has not
    assert os.getsid(pid) != os.getsid(0)  # its own session: no terminal hangs it up
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent != os.getpid()

    again = box.cli("engine", "start", check=False)
    assert again.returncode != 0
    assert f"already running for {box.home} (pid {pid}" in " ".join(again.stderr.split())

    # the lock, not a pid file, keeps a second engine out
    (box.home / layout.ENGINE_STATE).unlink()
    raw = subprocess.run(
        [sys.executable, "-m", "engine.daemon", "--home", str(box.home)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert raw.returncode == EXIT_RUNNING and f"pid {pid}" in raw.stderr

    # private store, no network
    assert stat.S_IMODE(os.stat(box.home).st_mode) == 0o700
    for name in ("kdtui.db", "engine.log", "engine.lock"):
        assert stat.S_IMODE(os.stat(box.home / name).st_mode) == 0o600
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert not [f for f in fds if f.startswith("socket:")]

    assert "stopped" in box.cli("engine", "stop").stdout
    assert not pid_alive(pid) and client.status(box.home) is None


@pytest.mark.slow
def test_two_cpu_slots_train_two_runs_at_once(box):
    box.cli("engine", "start", "--cpu-slots", "2")
    exp = box.write("pair.toml", tiny("pair", seeds=[0, 1], epochs=2, steps=3))
    box.cli("run", "--detach", exp)  # = kdtui submit
    a = box.wait_training(1)
    b = box.wait_training(2)
    assert gpu_seen_by(a) == gpu_seen_by(b) == ""  # a CPU slot hides every GPU
    a, b = box.wait_status(1, "done"), box.wait_status(2, "done")
    (a0, a1), (b0, b1) = interval(a), interval(b)
    assert max(a0, b0) < min(a1, b1)  # their running intervals overlap


@pytest.mark.slow
def test_students_wait_for_their_teacher_run_share_one_worker_and_fail_if_it_failed(box):
    kd = tiny(
        "kd-digits",
        steps=4,
        lr="[0.01, 0.05]",  # a sweep: two students behind one teacher pass
        more='[teacher]\narch = "resnet8"\ntrain = true\n[distill]\nmethod = "kd"',
    )
    bad_teacher = tiny("bad-teacher", more='device = "cuda"')  # fails: no CUDA here
    orphan = tiny(
        "orphan",
        more='[teacher]\narch = "resnet8"\nfrom_run = "bad-teacher"\n[distill]\nmethod = "kd"',
    )
    box.cli("submit", box.write("kd.toml", kd), "--no-start")
    box.cli("submit", box.write("bad.toml", bad_teacher), "--no-start")
    box.cli("submit", box.write("orphan.toml", orphan), "--no-start")
    teacher, student, other, bad, waiting = box.store.runs()
    assert student.depends_on == other.depends_on == teacher.id
    assert waiting.depends_on == bad.id

    # two (pretend) GPUs: room for a student that did not wait; no CUDA here, so the
    # workers train on the CPU, each seeing only the GPU of its slot
    box.cli("engine", "start", "--gpus", "0,1")
    running = box.wait_training(teacher.id)
    assert gpu_seen_by(running) == running.gpu
    failed = box.wait_status(waiting.id, "failed")
    assert {box.run(bad.id).gpu, running.gpu} == {"0", "1"}  # side by side
    assert box.run(bad.id).status == "failed"
    assert f"teacher run {bad.id} (bad-teacher) failed" in failed.error
    assert "CUDA is not available" in failed.error

    fused = box.wait_training(student.id)
    assert box.run(other.id).pid == fused.pid  # the sweep trains in one worker
    assert gpu_seen_by(fused) == fused.gpu
    student = box.wait_status(student.id, "done")
    box.wait_status(other.id, "done")
    teacher = box.run(teacher.id)
    assert teacher.status == "done" and teacher.ended <= student.started
    assert "teacher resnet8 from" in (student.path / "log.txt").read_text()


@pytest.mark.slow
def test_runs_of_a_foreground_kdtui_run_are_left_alone_until_it_dies(box):
    # stands in for `kdtui run` (the engine checks a holder's command line names kdtui)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kdtui", "run", "held.toml"]
    )
    try:
        exp = reading.loads(tiny("held"), file="held.toml")
        (run,) = box.store.submit(exp, source="held.toml", holder=holder.pid)
        client.ensure_running(box.home)
        time.sleep(1.5)
        assert box.run(run.id).status == "queued" and box.run(run.id).pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    done = box.wait_status(run.id, "done")  # adopted once its holder is gone
    assert done.pid is None


def test_engine_options_are_declared_once_and_reach_every_command_line():
    """`kdtui engine start`, `python -m engine.daemon` and the command line a client starts the
    engine with are all made from engine.daemon.options.Options."""
    import argparse

    from typer.main import get_command

    from engine.daemon import options
    from kdtui.cli import app

    start = get_command(app).commands["engine"].commands["start"]
    typer_flags = {flag: param for param in start.params for flag in param.opts}
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    for spec in options.specs():
        assert spec.flag in typer_flags and spec.flag in parser._option_string_actions
        assert typer_flags[spec.flag].hidden == spec.hidden
        if not spec.hidden:
            assert typer_flags[spec.flag].help == spec.help
    assert len(typer_flags) == len(options.specs()) + 2  # and --foreground, --home
    chosen = options.Options(
        gpus="0,2", slots_per_gpu=2, cpu_slots=3, recover=False, cancel_grace=1.5, poll=0.1
    )
    assert options.from_namespace(parser.parse_args(chosen.argv())) == chosen
    assert options.from_namespace(parser.parse_args([])) == options.Options()
    with pytest.raises(SystemExit):  # the same minimum as `kdtui engine start`
        parser.parse_args(["--cpu-slots=0"])


@pytest.mark.slow
def test_a_two_process_run_takes_two_cpu_slots_and_one_too_wide_for_the_engine_fails_at_once(
    box,
):
    box.cli("engine", "start", "--cpu-slots", "2")
    exp = box.write("ddp.toml", tiny("ddp", epochs=2, steps=2, more="nproc_per_node = 2"))
    box.cli("submit", exp)
    run = box.wait_training(1, timeout=120)
    # one worker holds both slots: the launcher, whose two ranks train the run
    st = client.status(box.home)
    assert [(s["name"], s["worker"]) for s in st["slots"]] == [
        ("cpu0", run.pid),
        ("cpu1", run.pid),
    ]
    assert gpu_seen_by(run) == ""  # CPU slots hide every GPU from the group

    def ranks():
        found = []
        for pid in our_processes(box.home):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"engine.worker" in cmd and pid != run.pid:
                found.append(pid)
        return len(found) == 2 and found

    box.wait(ranks, "the launcher's two ranks", timeout=60)
    done = box.wait_status(1, "done", "failed", timeout=180)
    assert done.status == "done", done.error
    assert (done.world_size, done.effective_batch) == (2, 128)
    log = (done.path / layout.LOG).read_text()
    assert "engine: placed on cpu0, cpu1 (2 processes)" in log
    assert "2 processes (gloo), batch 64 per process, effective batch 128" in log

    # three processes on an engine of two CPU slots: failed at once, never left queued
    wide = box.write("wide.toml", tiny("wide", more="nproc_per_node = 3"))
    box.cli("submit", wide)
    failed = box.wait_status(2, "failed", "done", timeout=30)
    assert failed.status == "failed"
    assert "[run] nproc_per_node = 3" in failed.error
    assert "this engine has 2 CPU slots (cpu0, cpu1)" in failed.error
    assert "--cpu-slots 3" in failed.error
