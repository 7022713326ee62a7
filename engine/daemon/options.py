"""Engine options, declared once: the dataclass below is the only list.

`python -m engine.daemon`'s flags (`add_arguments`), the command line a client
starts it with (`Options.argv`) and `kdtui engine start`'s options (kdtui.cli)
are all made from the fields' metadata. `kdtui engine start` saves them to the
store (engine-options.json); later automatic starts (submit, resume, the app)
use the saved ones.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from engine.core import layout, safefs


def _option(
    default: Any,
    flag: str,
    help: str,
    *,
    min: float | None = None,
    hidden: bool = False,
    negated: bool = False,
) -> Any:
    """A field with its command-line form: `negated` flags (--no-recover) set it to False."""
    meta = {"flag": flag, "help": help, "min": min, "hidden": hidden, "negated": negated}
    return field(default=default, metadata=meta)


@dataclass
class Options:
    """How the engine slices the machine; saved by `kdtui engine start` for later auto-starts."""

    gpus: str | None = _option(
        None, "--gpus", "GPU ids to use, e.g. 0,2 ('none': CPU only). Default: every visible GPU."
    )
    slots_per_gpu: int = _option(1, "--slots-per-gpu", "Workers per GPU (pack small runs).", min=1)
    cpu_slots: int = _option(
        1,
        "--cpu-slots",
        'CPU workers at once: every run on a CPU box, runs with device = "cpu" on a GPU box.',
        min=1,
    )
    recover: bool = _option(
        True,
        "--no-recover",
        "Mark runs left running by a dead engine as failed instead of resuming them.",
        negated=True,
    )
    cancel_grace: float = _option(
        20.0,
        "--cancel-grace",
        "Seconds a cancelled worker has to stop before SIGTERM, then SIGKILL.",
        min=0.0,
    )
    poll: float = _option(
        0.5, "--poll", "Seconds between two passes over the queue.", min=0.05, hidden=True
    )
    backend: str = _option(
        "local",
        "--backend",
        "Where runs train: local (worker processes on this machine) or slurm (one Slurm job "
        "per run or fused group, submitted from this login node).",
    )
    partition: str | None = _option(None, "--partition", "Slurm partition of the jobs.")
    account: str | None = _option(None, "--account", "Slurm account the jobs are charged to.")
    time: str | None = _option(
        None,
        "--time",
        "Slurm time limit of each job, [D-]HH:MM:SS (default 24:00:00); a job that reaches it "
        "is requeued and resumes from its last checkpoint.",
    )
    gpus_per_job: int = _option(
        0,
        "--gpus-per-job",
        "GPUs each Slurm job asks for (a run of N processes per node asks for N per node).",
        min=0,
    )
    max_parallel: int | None = _option(
        None,
        "--max-parallel",
        "Slurm: at most this many jobs of one sweep's job array run at once.",
        min=1,
    )
    slurm_option: list[str] | None = _option(
        None,
        "--slurm-option",
        "Slurm: another sbatch option as KEY=VALUE (repeat it), e.g. cpus_per_task=8 (per "
        "process), qos=high, constraint=a100; a run's config decides its nodes and tasks.",
    )
    slurm_poll: float = _option(
        5.0, "--slurm-poll", "Seconds between two squeue calls.", min=0.1, hidden=True
    )

    def argv(self) -> list[str]:
        """These options as `python -m engine.daemon` flags."""
        out = []
        for spec in specs():
            value = getattr(self, spec.name)
            if spec.negated:
                if not value:
                    out.append(spec.flag)
            elif spec.multiple:
                out.extend(f"{spec.flag}={item}" for item in value or ())
            elif value is not None:
                out.append(f"{spec.flag}={value}")
        return out


@dataclass(frozen=True)
class Spec:
    """One option as a command line shows it."""

    name: str
    type: Any  # str | None, int, float or bool
    default: Any
    flag: str
    help: str
    min: float | None
    hidden: bool
    negated: bool

    @property
    def multiple(self) -> bool:
        """A repeatable flag (list[str] | None): every use adds one value."""
        return "list" in str(self.type)


def specs() -> list[Spec]:
    hints = get_type_hints(Options)
    return [Spec(f.name, hints[f.name], f.default, **f.metadata) for f in fields(Options)]


TIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")
DEFAULT_TIME = "24:00:00"


def time_minutes(text: str | None) -> int:
    """`--time` [D-]HH:MM:SS as whole minutes (rounded up: Slurm's --time in minutes)."""
    match = TIME.match((text or DEFAULT_TIME).strip())
    if not match:
        raise ValueError(
            f"--time {text}: not a time limit; write [D-]HH:MM:SS, e.g. --time 12:00:00 "
            "or --time 2-00:00:00"
        )
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"--time {text}: the time limit must be longer than zero")
    return -(-total // 60)


def slurm_options(items: list[str] | None) -> dict[str, str]:
    """`--slurm-option KEY=VALUE ...` as a dict (keys with - or _ alike)."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ValueError(
                f"--slurm-option {item}: write KEY=VALUE, e.g. --slurm-option cpus_per_task=8"
            )
        out[key] = value.strip()
    return out


def check(options: Options, names: tuple[str, ...]) -> None:
    """Every option a command line cannot check alone (ValueError: one line, with the fix);
    `names`: the backends there are (engine.daemon.backends.NAMES, which imports this)."""
    if options.backend not in names:
        raise ValueError(
            f"--backend {options.backend}: unknown backend; use one of {', '.join(names)}"
        )
    time_minutes(options.time)
    slurm_options(options.slurm_option)


def _at_least(kind: type, low: float | None, flag: str):
    def parse(text: str):
        value = kind(text)
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be at least {low}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option as an argparse flag (`python -m engine.daemon`)."""
    for spec in specs():
        help = argparse.SUPPRESS if spec.hidden else spec.help
        if spec.negated:
            parser.add_argument(spec.flag, dest=spec.name, action="store_false", help=help)
        elif spec.multiple:
            parser.add_argument(spec.flag, dest=spec.name, action="append", help=help)
        else:
            kind = next((t for t in (int, float) if spec.type in (t, t | None)), str)
            parser.add_argument(
                spec.flag,
                dest=spec.name,
                type=_at_least(kind, spec.min, spec.flag),
                default=spec.default,
                help=help,
            )


def from_namespace(args: argparse.Namespace) -> Options:
    return Options(**{spec.name: getattr(args, spec.name) for spec in specs()})


def load(home: Path, options: dict[str, Any]) -> Options:
    """Explicit options win; otherwise the ones saved by the last `kdtui engine start`."""
    saved: dict[str, Any] = {}
    path = home / layout.ENGINE_OPTIONS
    if path.exists():
        try:
            saved = json.loads(safefs.read_text(path))
        except (OSError, ValueError):
            saved = {}
    known = set(Options.__dataclass_fields__)
    bad = set(options) - known
    if bad:
        raise TypeError(f"unknown engine options {sorted(bad)}")
    merged = {k: v for k, v in saved.items() if k in known}
    merged.update({k: v for k, v in options.items() if v is not None})
    return Options(**merged)


def save(home: Path, options: Options) -> None:
    safefs.write_private(home / layout.ENGINE_OPTIONS, json.dumps(asdict(options), indent=1))
