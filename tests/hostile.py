"""A corpus of hostile experiment files, and the table of what kdtui does with them.

Every case is one defect in an otherwise valid experiment (or a file that is
not an experiment at all): non-UTF-8 bytes, deep nesting, integers past what
SQLite stores, NaN/inf, names that are paths or carry a newline, missing
checkpoints, sweeps of millions of runs, control characters, markup... Each
must get exactly one clear error line naming the file (and the key), exit 2,
and store nothing. `tests/test_hostile_inputs.py` checks that in-process;

    python -m tests.hostile [--out DIR]

runs every case through `kdtui validate`, `kdtui run --dry-run` and
`kdtui submit --no-start` as real subprocesses (60 s limit each) and prints
the table: tried / clear error / traceback / wrongly accepted / hang.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BIG = 2**63  # one past SQLite's INTEGER
# a valid experiment, section -> key -> TOML literal; each case changes one thing
BASE: dict[str, dict[str, str]] = {
    "": {"name": '"hostile"', "seeds": "[0]"},
    "data": {"dataset": '"digits"', "batch_size": "64"},
    "teacher": {"arch": '"resnet8"', "train": "true"},
    "student": {"arch": '"resnet8"'},
    "distill": {"method": '"kd"', "temperature": "4.0"},
    "optim": {"lr": "0.05", "epochs": "2"},
    "run": {"max_steps": "1"},
}
INT_KEYS = {  # every integer field with a range, and the first value past its maximum
    "data.batch_size": 65537,
    "data.eval_batch_size": 65537,
    "data.num_workers": 257,
    "data.data_seed": 2**32,
    "data.num_classes": 100_001,
    "data.train_size": 10_000_001,
    "data.test_size": 10_000_001,
    "data.image_size": 1025,
    "optim.epochs": 100_001,
    "optim.warmup_epochs": 100_001,
    "run.threads": 1025,
    "run.eval_every": 100_001,
    "run.log_every": 1_000_000_001,
    "run.checkpoint_every": 100_001,
    "run.priority": 1_000_001,
    "run.teacher_cache_mb": 2**20 + 1,
    "run.max_steps": 1_000_000_001,
}
FLOAT_KEYS = ("optim.lr", "optim.momentum", "optim.weight_decay", "optim.gamma", "optim.min_lr")
OPTION_FLOATS = {  # method -> float options
    "kd": ("temperature", "kd_weight", "ce_weight"),
    "dkd": ("nckd_weight", "tckd_weight"),
    "simkd": ("feat_weight", "kl_weight"),
    "at": ("at_p", "at_weight"),
    "fitnet": ("hint_weight",),
}


@dataclass
class Case:
    """One hostile input: its bytes (None: the path is made by `make`), the key the error
    must name (None: a file-level error names only the file), extra `--set` items."""

    id: str
    data: bytes | None
    key: str | None
    sets: list[str] = field(default_factory=list)
    make: Callable[[Path], None] | None = None  # builds a non-regular path


def render(tables: dict[str, dict[str, str]]) -> str:
    lines = [f"{k} = {v}" for k, v in tables.get("", {}).items()]
    for sec, items in tables.items():
        if sec:
            lines += ["", f"[{sec}]", *(f"{k} = {v}" for k, v in items.items())]
    return "\n".join(lines) + "\n"


def edit(changes: dict[str, str | None], *, drop: tuple[str, ...] = ()) -> bytes:
    """BASE with dotted keys set to TOML literals (None deletes); "sec.sub.key" makes [sec.sub]."""
    tables = {sec: dict(items) for sec, items in BASE.items()}
    for dotted in drop:
        sec, _, key = dotted.rpartition(".")
        tables.get(sec, {}).pop(key, None)
    for dotted, literal in changes.items():
        sec, _, key = dotted.rpartition(".")
        if sec.startswith("sweep"):
            sec, key = "sweep", f'"{dotted.removeprefix("sweep.")}"'
        table = tables.setdefault(sec, {})
        if literal is None:
            table.pop(key, None)
        else:
            table[key] = literal
    return render(tables).encode()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()


def _to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _loop(path: Path) -> None:
    path.symlink_to(path.name)  # a symlink to itself


def corpus() -> list[Case]:
    cases: list[Case] = []

    def add(id: str, data: bytes | None, key: str | None, **kw) -> None:
        cases.append(Case(f"{len(cases):03d}-{id}", data, key, **kw))

    base = edit({})
    # ---- not an experiment file at all
    add("missing-file", None, None, make=lambda p: None)
    add("a-folder", None, None, make=_folder)
    add("a-fifo", None, None, make=_fifo)
    add("dev-zero", None, None, make=_to_dev_zero)
    add("symlink-loop", None, None, make=_loop)
    add("two-mib", base + b"# " + b"x" * (2 << 20) + b"\n", None)
    add("empty", b"", "name")
    add("only-comments", b"# nothing here\n", "name")
    # ---- bytes that are not UTF-8
    add("latin1", base.replace(b'"hostile"', b'"caf\xe9"'), None)
    add("utf16le", b"\xff\xfe" + base.decode().encode("utf-16-le"), None)
    add("utf16be", b"\xfe\xff" + base.decode().encode("utf-16-be"), None)
    add("lone-ff", base + b"\xff\n", None)
    add("overlong-slash", base.replace(b'"digits"', b'"\xc0\xafdigits"'), None)
    add("encoded-surrogate", base.replace(b'"hostile"', b'"\xed\xa0\x80"'), None)
    add("cut-multibyte", base + b'description = "\xe2\x82', None)
    add("continuation-only", b"\x80\x80\x80" + base, None)
    add("cp1252-quotes", base.replace(b'"hostile"', b"\x93hostile\x94"), None)
    rnd = bytes((i * 73 + 41) % 256 for i in range(4096))
    add("binary-noise", rnd, None)
    add("nul-bytes", base.replace(b"[data]", b"[data]\x00"), None)
    # ---- TOML that does not parse, or parses into something no experiment is
    add("unclosed-table", base.replace(b"[optim]", b"[optim"), None)
    add("duplicate-key", base + b"\n[run]\nmax_steps = 2\n", None)
    add("raw-esc-in-string", base.replace(b'"hostile"', b'"host\x1bile"'), None)
    add("unterminated-string", base.replace(b'"hostile"', b'"hostile'), None)
    add("bad-escape", base.replace(b'"hostile"', b'"host\\qile"'), None)
    add("5000-digit-int", edit({"optim.epochs": "9" * 5000}), None)
    add("deep-arrays", edit({"optim.milestones": "[" * 3000 + "]" * 3000}), None)
    add("deep-inline-tables", edit({"distill.projectors": "{a = " * 2000 + "1" + "}" * 2000}), None)
    add("deep-table-headers", base + ("[" + ".".join(["t"] * 500) + "]\nx = 1\n").encode(), None)
    add(
        "deep-sweep-tables",
        base + ("[" + ".".join(["sweep"] + ["a"] * 200) + "]\nx = [1]\n").encode(),
        None,
    )
    add("deep-array-12", edit({"seeds": "[" * 12 + "0" + "]" * 12}), None)
    # ---- integers past what SQLite (or the field) takes; NaN and infinities
    for dotted, above in INT_KEYS.items():
        short = dotted.split(".")[1]
        add(f"{short}-2^63", edit({dotted: str(BIG)}), dotted)
        add(f"{short}-minus-2^63", edit({dotted: str(-BIG - 1)}), dotted)
        add(f"{short}-above-max", edit({dotted: str(above)}), dotted)
    for dotted in ("optim.epochs", "run.threads", "data.batch_size"):
        add(f"{dotted}-hex-4000-bits", edit({dotted: "0x" + "f" * 1000}), dotted)
        add(f"{dotted}-float", edit({dotted: "2.5"}), dotted)
        add(f"{dotted}-nan", edit({dotted: "nan"}), dotted)
    for dotted in FLOAT_KEYS:
        short = dotted.split(".")[1]
        for lit in ("nan", "inf", "-inf", "+nan"):
            add(f"{short}-{lit}", edit({dotted: lit}), dotted)
        add(f"{short}-10^400", edit({dotted: "1" + "0" * 400}), dotted)
    for method, options in OPTION_FLOATS.items():
        for opt in options:
            for lit in ("nan", "inf"):
                add(
                    f"{method}-{opt}-{lit}",
                    edit(
                        {
                            "distill.method": f'"{method}"',
                            "distill.temperature": None,
                            f"distill.{opt}": lit,
                        }
                    ),
                    f"distill.{opt}",
                )
    add(
        "dkd-warmup-2^63",
        edit({"distill.method": '"dkd"', "distill.warmup": str(BIG)}),
        "distill.warmup",
    )
    add(
        "simkd-projector-weight-nan",
        edit(
            {
                "distill.method": '"simkd"',
                "distill.temperature": None,
                "distill.projectors": "[{stage = -1, weight = nan}]",
            }
        ),
        "distill.projectors",
    )
    add(
        "simkd-projector-stage-2^70",
        edit(
            {
                "distill.method": '"simkd"',
                "distill.temperature": None,
                "distill.projectors": f"[{{stage = {2**70}}}]",
            }
        ),
        "distill.projectors",
    )
    add(
        "fitnet-stage-2^63",
        edit(
            {
                "distill.method": '"fitnet"',
                "distill.temperature": None,
                "distill.hint_stage": str(BIG),
            }
        ),
        "distill.hint_stage",
    )
    add("seeds-2^64", edit({"seeds": f"[{2**64}]"}), "seeds")
    add("seeds-2^32", edit({"seeds": f"[0, {2**32}]"}), "seeds")
    add("seeds-negative", edit({"seeds": "[-1]"}), "seeds")
    add("seeds-scalar-2^70", edit({"seeds": str(2**70)}), "seeds")
    add("seeds-float", edit({"seeds": "[1.5]"}), "seeds")
    add("seeds-nan", edit({"seeds": "[nan]"}), "seeds")
    add("seeds-nested", edit({"seeds": "[[0]]"}), "seeds")
    add("seeds-empty", edit({"seeds": "[]"}), "seeds")
    add("seeds-repeat", edit({"seeds": "[1, 1]"}), "seeds")
    add("milestones-2^63", edit({"optim.milestones": f"[{BIG}]"}), "optim.milestones")
    add("milestones-negative", edit({"optim.milestones": "[-5]"}), "optim.milestones")
    add("teacher-optim-lr-nan", edit({"teacher.optim.lr": "nan"}), "teacher.optim.lr")
    add(
        "teacher-optim-epochs-2^63",
        edit({"teacher.optim.epochs": str(BIG)}),
        "teacher.optim.epochs",
    )
    add("sweep-lr-nan", edit({"sweep.optim.lr": "[0.1, nan]"}), "sweep.optim.lr")
    add("sweep-lr-inf", edit({"sweep.optim.lr": "[inf]"}), "sweep.optim.lr")
    add("sweep-epochs-2^63", edit({"sweep.optim.epochs": f"[1, {BIG}]"}), "sweep.optim.epochs")
    add("sweep-priority-2^63", edit({"sweep.run.priority": f"[{BIG}]"}), "sweep.run.priority")
    add(
        "sweep-temperature-nan",
        edit({"sweep.distill.temperature": "[nan]"}),
        "sweep.distill.temperature",
    )
    add("list-sweep-lr-nan", edit({"optim.lr": "[0.1, nan]"}), "optim.lr")
    add("list-sweep-epochs-huge", edit({"optim.epochs": f"[1, {BIG}]"}), "optim.epochs")
    # ---- names
    for id, lit in [
        ("trailing-newline", '"x\\n"'),
        ("trailing-cr", '"x\\r"'),
        ("leading-space", '" x"'),
        ("space", '"a b"'),
        ("empty", '""'),
        ("100k", '"' + "a" * 100_000 + '"'),
        ("129", '"' + "a" * 129 + '"'),
        ("dotdot", '"a/../../etc/passwd"'),
        ("dot-part", '"a/./b"'),
        ("double-slash", '"a//b"'),
        ("trailing-slash", '"a/"'),
        ("leading-dash", '"-rf"'),
        ("leading-dot", '".hidden"'),
        ("esc", '"x\\u001b[31m"'),
        ("bidi", '"x\\u202eevil"'),
        ("markup", '"[bold red]x[/]"'),
        ("nul", '"x\\u0000"'),
        ("non-ascii", '"名前"'),
        ("int", "12"),
        ("list", '["a"]'),
        ("table", "{a = 1}"),
        ("datetime", "1979-05-27T07:32:00Z"),
    ]:
        add(f"name-{id}", edit({"name": lit}), "name")
    # ---- strings: control characters, devices, lengths
    for id, lit in [
        ("esc", '"\\u001b[2J"'),
        ("cr", '"data\\rX"'),
        ("nul", '"da\\u0000ta"'),
        ("bidi", '"\\u202edata"'),
        ("c1-csi", '"\\u009b31m"'),
        ("del", '"da\\u007fta"'),
        ("5000-chars", '"' + "d" * 5000 + '"'),
    ]:
        add(f"root-{id}", edit({"data.root": lit}), "data.root")
    add(
        "from-run-newline",
        edit({"teacher.train": None, "teacher.from_run": '"t\\nx"'}),
        "teacher.from_run",
    )
    add("description-esc", edit({"description": '"fine\\u001b]0;title\\u0007"'}), "description")
    add("description-30k", edit({"description": '"' + "d" * 30_000 + '"'}), "description")
    for id, lit in [
        ("gpu", '"gpu"'),
        ("cuda-9999", '"cuda:9999"'),
        ("shell", '"cpu; rm -rf ~"'),
        ("empty", '""'),
    ]:
        add(f"device-{id}", edit({"run.device": lit}), "run.device")
    # ---- checkpoints: named at validate time, resolved like kdtui run/submit resolve them
    add(
        "teacher-ckpt-missing",
        edit({"teacher.train": None, "teacher.checkpoint": '"nope/teacher.pth"'}),
        "teacher.checkpoint",
    )
    add(
        "teacher-ckpt-folder",
        edit({"teacher.train": None, "teacher.checkpoint": '"."'}),
        "teacher.checkpoint",
    )
    add(
        "teacher-ckpt-home-missing",
        edit({"teacher.train": None, "teacher.checkpoint": '"~/no-such-kdtui.pth"'}),
        "teacher.checkpoint",
    )
    add(
        "teacher-ckpt-dev-null",
        edit({"teacher.train": None, "teacher.checkpoint": '"/dev/null"'}),
        "teacher.checkpoint",
    )
    add("student-ckpt-missing", edit({"student.checkpoint": '"student.pth"'}), "student.checkpoint")
    add("student-ckpt-folder", edit({"student.checkpoint": '"/"'}), "student.checkpoint")
    add(
        "swept-ckpt-one-missing",
        edit(
            {
                "teacher.train": None,
                "teacher.checkpoint": '"exists.pth"',
                "sweep.teacher.checkpoint": '["exists.pth", "gone.pth"]',
            }
        ),
        "teacher.checkpoint",
    )
    # ---- sweeps and seed lists past the limit (10,000 runs), or malformed
    hundred = "[" + ", ".join(str(i / 1000) for i in range(1, 101)) + "]"
    add(
        "sweep-1e6-runs",
        edit(
            {
                "sweep.optim.lr": hundred,
                "sweep.optim.momentum": "[" + ", ".join(str(i / 200) for i in range(100)) + "]",
                "sweep.optim.weight_decay": "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]"
                + "",
            }
        ),
        "sweep",
    )
    add(
        "sweep-10-keys-3^10",
        edit(
            {
                f"sweep.{k}": "[1, 2, 3]"
                for k in (
                    "data.batch_size",
                    "data.eval_batch_size",
                    "data.num_workers",
                    "optim.epochs",
                    "optim.warmup_epochs",
                    "run.eval_every",
                    "run.log_every",
                    "run.checkpoint_every",
                    "run.priority",
                    "run.max_steps",
                )
            }
        ),
        "sweep",
    )
    add("seeds-20000", edit({"seeds": "[" + ", ".join(map(str, range(20_000))) + "]"}), "seeds")
    add(
        "sweep-x-seeds-20000",
        edit({"seeds": "[" + ", ".join(map(str, range(200))) + "]", "sweep.optim.lr": hundred}),
        "sweep",
    )
    add("sweep-empty-list", edit({"sweep.optim.lr": "[]"}), "sweep.optim.lr")
    add("sweep-not-list", edit({"sweep.optim.lr": "0.1"}), "sweep.optim.lr")
    add("sweep-unknown-key", edit({"sweep.optim.lrr": "[0.1]"}), "sweep.optim.lrr")
    add("sweep-no-section", edit({"sweep.lr": "[0.1]"}), "sweep.lr")
    add("sweep-seeds", edit({"sweep.seeds.x": "[1]"}), "sweep.seeds.x")
    add(
        "sweep-milestones", edit({"sweep.optim.milestones": "[[1], [2]]"}), "sweep.optim.milestones"
    )
    add(
        "sweep-method-unknown",
        edit({"sweep.distill.method": '["kd", "kdd"]'}),
        "sweep.distill.method",
    )
    add("sweep-method-table", edit({"sweep.distill.method": "[{a = 1}]"}), "sweep.distill.method")
    add("sweep-method-int", edit({"sweep.distill.method": "[1]"}), "sweep.distill.method")
    add("sweep-lr-nested", edit({"sweep.optim.lr": "[[0.1]]"}), "sweep.optim.lr")
    add("sweep-lr-string", edit({"sweep.optim.lr": '[0.1, "fast"]'}), "sweep.optim.lr")
    add("sweep-bad-option", edit({"sweep.distill.temprature": "[1.0]"}), "sweep.distill.temprature")
    add("sweep-root-esc", edit({"sweep.data.root": '["a", "\\u001b[31m"]'}), "sweep.data.root")
    add("sweep-is-int", base.replace(b"seeds = [0]", b"seeds = [0]\nsweep = 3"), "sweep")
    add("swept-twice", edit({"optim.lr": "[0.1, 0.2]", "sweep.optim.lr": "[0.3]"}), "optim.lr")
    # ---- structure and types
    add(
        "section-is-int",
        base.replace(b"[run]\nmax_steps = 1\n", b"").replace(
            b"seeds = [0]", b"seeds = [0]\nrun = 1"
        ),
        "run",
    )
    add("section-array-of-tables", base.replace(b"[run]", b"[[run]]"), "run")
    add(
        "section-is-string",
        base.replace(b"seeds = [0]", b'seeds = [0]\nrun = "fast"').replace(
            b"[run]\nmax_steps = 1\n", b""
        ),
        "run",
    )
    add(
        "distill-is-string-with-sweep",
        edit({"sweep.distill.method": '["kd"]'})
        .replace(b'[distill]\nmethod = "kd"\ntemperature = 4.0\n', b"")
        .replace(b"seeds = [0]", b'seeds = [0]\ndistill = "kd"'),
        "distill",
    )
    add("teacher-optim-is-int", edit({"teacher.optim": "3"}), "teacher.optim")
    add("teacher-optim-unknown", edit({"teacher.optim.lrr": "0.1"}), "teacher.optim.lrr")
    add("unknown-top-level", edit({"bogus": "1"}), "bogus")
    for sec in ("data", "teacher", "student", "optim", "run"):
        add(f"unknown-key-{sec}", edit({f"{sec}.bogus_key": "1"}), f"{sec}.bogus_key")
    add("unknown-key-distill", edit({"distill.bogus_key": "1"}), "distill.bogus_key")
    add("option-of-other-method", edit({"distill.warmup": "5"}), "distill.warmup")
    add("unknown-method", edit({"distill.method": '"kdd"'}), "distill.method")
    add("method-is-int", edit({"distill.method": "3"}), "distill.method")
    add("unknown-arch", edit({"student.arch": '"resnet9000"'}), "student.arch")
    add("unknown-dataset", edit({"data.dataset": '"imagenet22k"'}), "data.dataset")
    add("epochs-bool", edit({"optim.epochs": "true"}), "optim.epochs")
    add("epochs-string", edit({"optim.epochs": '"2"'}), "optim.epochs")
    add("epochs-zero", edit({"optim.epochs": "0"}), "optim.epochs")
    add("epochs-datetime", edit({"optim.epochs": "1979-05-27"}), "optim.epochs")
    add("lr-datetime", edit({"optim.lr": "07:32:00"}), "optim.lr")
    add("lr-table", edit({"optim.lr": "{v = 1}"}), "optim.lr")
    add("download-string", edit({"data.download": '"yes"'}), "data.download")
    add("momentum-above-1", edit({"optim.momentum": "1.5"}), "optim.momentum")
    add("lr-negative", edit({"optim.lr": "-0.1"}), "optim.lr")
    add("warmup-not-shorter", edit({"optim.warmup_epochs": "2"}), "optim.warmup_epochs")
    add("milestones-decreasing", edit({"optim.milestones": "[5, 1]"}), "optim.milestones")
    add("teacher-two-sources", edit({"teacher.from_run": '"t"'}), "teacher")
    add("teacher-no-arch", edit({"teacher.arch": None}), "teacher.arch")
    add(
        "projectors-bad",
        edit(
            {
                "distill.method": '"simkd"',
                "distill.temperature": None,
                "distill.projectors": '[{stage = "x"}]',
            }
        ),
        "distill.projectors",
    )
    add(
        "factor-2^70",
        edit(
            {"distill.method": '"simkd"', "distill.temperature": None, "distill.factor": str(2**70)}
        ),
        "distill.factor",
    )
    add(
        "factor-10^5000-digits",
        edit(
            {
                "distill.method": '"simkd"',
                "distill.temperature": None,
                "distill.factor": "0x" + "f" * 3000,
            }
        ),
        "distill.factor",
    )
    # ---- keys that are markup, terminal control or huge
    add("key-markup", edit({'optim."[/]"': "1"}), "optim.[/]")
    add("key-bold", edit({'optim."[bold red]x"': "1"}), "optim.[bold red]x")
    add("key-esc", edit({'optim."\\u001b[31m"': "1"}), "optim.\\x1b[31m")
    add("key-100k", edit({"optim." + "k" * 100_000: "1"}), "optim.kkkk")
    add("key-bidi", edit({'run."\\u202eevil"': "1"}), "run.\\u202eevil")
    add("top-key-100k", edit({"q" * 100_000: "1"}), "qqqq")
    # ---- hostile --set overrides
    add("set-lr-nan", base, "optim.lr", sets=["optim.lr=nan"])
    add("set-name-newline", base, "name", sets=['name="x\\n"'])
    add("set-epochs-huge", base, "optim.epochs", sets=[f"optim.epochs={BIG}"])
    add("set-on-a-scalar", base, "name.x", sets=["name.x=1"])
    add(
        "set-sweep-when-sweep-is-int",
        base.replace(b"seeds = [0]", b"seeds = [0]\nsweep = 3"),
        "sweep",
        sets=["sweep.optim.lr=[0.1]"],
    )
    add("set-deep-value", base, "seeds", sets=["seeds=" + "[" * 2000 + "]" * 2000])
    add("set-no-equals", base, None, sets=["optim.lr"])
    add("set-unknown-key", base, "optim.lrr", sets=["optim.lrr=0.1"])
    return cases


def materialize(case: Case, folder: Path) -> Path:
    """Write the case's file (and the checkpoint the swept case needs) into folder."""
    path = folder / f"{case.id}.toml"
    if case.make is not None:
        case.make(path)
    else:
        path.write_bytes(case.data or b"")
    (folder / "exists.pth").write_bytes(b"weights")
    return path


COMMANDS = (("validate",), ("run", "--dry-run"), ("submit", "--no-start"))


def verdict(case: Case, path: Path, code: int | None, out: str, home: Path) -> str:
    """clear error | traceback | wrongly accepted | hang | unclear (the error line is not one
    line naming file and key, or something was stored)."""
    if code is None:
        return "hang"
    if "Traceback" in out or code not in (0, 2):
        return "traceback"
    if code == 0:
        return "wrongly accepted"
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    if len(errors) != 1 or home.exists():
        return "unclear"
    line = errors[0]
    if str(path) not in line and path.name not in line:
        return "unclear"
    if case.key is not None and case.key[:60] not in line:
        return "unclear"
    return "clear error"


def args_for(command: tuple[str, ...], case: Case, path: Path, home: Path) -> list[str]:
    extra = [a for s in case.sets for a in ("--set", s)]
    home_args = [] if command[0] == "validate" else ["--home", str(home)]
    return [*command, str(path), *extra, *home_args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="keep the corpus here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=60.0)
    ns = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    folder = ns.out or Path(tempfile.mkdtemp(prefix="kdtui-hostile-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "COLUMNS": "200",
        "KDTUI_HOME": str(folder / "never"),
    }
    counts: dict[str, int] = {}
    bad: list[str] = []
    cases = corpus()
    for case in cases:
        path = materialize(case, folder)
        for command in COMMANDS:
            home = folder / f"home-{case.id}"
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "kdtui.cli", *args_for(command, case, path, home)],
                    cwd=folder,
                    env=env,
                    capture_output=True,
                    text=True,
                    errors="replace",
                    timeout=ns.timeout,
                )
                code, out = proc.returncode, proc.stdout + proc.stderr
            except subprocess.TimeoutExpired:
                code, out = None, ""
            v = verdict(case, path, code, re.sub(r"\x1b\[[0-9;]*m", "", out), home)
            counts[v] = counts.get(v, 0) + 1
            if v != "clear error":
                bad.append(f"{case.id} {' '.join(command)}: {v}\n{out[-800:]}")
    tried = len(cases) * len(COMMANDS)
    print(
        f"{len(cases)} hostile files x {len(COMMANDS)} commands ({', '.join(' '.join(c) for c in COMMANDS)})"
    )
    print("| tried | clear error | traceback | wrongly accepted | hang | unclear |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {tried} | {counts.get('clear error', 0)} | {counts.get('traceback', 0)} | "
        f"{counts.get('wrongly accepted', 0)} | {counts.get('hang', 0)} | {counts.get('unclear', 0)} |"
    )
    for line in bad:
        print(line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
