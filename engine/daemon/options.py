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

    def argv(self) -> list[str]:
        """These options as `python -m engine.daemon` flags."""
        out = []
        for spec in specs():
            value = getattr(self, spec.name)
            if spec.negated:
                if not value:
                    out.append(spec.flag)
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


def specs() -> list[Spec]:
    hints = get_type_hints(Options)
    return [Spec(f.name, hints[f.name], f.default, **f.metadata) for f in fields(Options)]


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
        else:
            kind = spec.type if spec.type in (int, float) else str
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
