"""`kdtui models` and `kdtui methods`: what the registries hold, with shapes and options."""

from __future__ import annotations

import difflib
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from engine.core import writing
from kdtui.cli.common import console, fail
from kdtui.cli.render import add_text_row


def models(
    num_classes: Annotated[int, typer.Option(help="Classes of the head.")] = 100,
    input_size: Annotated[
        int, typer.Option(help="Input side for feature shapes (CIFAR: 32).")
    ] = 32,
) -> None:
    """Every architecture with its parameter count, its stages and the map its head pools.

    Stages are what feature methods pair and what stage indices count (0 = first stage after
    the stem): the reference code's feature maps without the stem and the pooled vector.
    """
    from engine.models import describe  # torch

    t = Table(
        title=f"architectures ({num_classes} classes, {input_size}×{input_size} input)",
        title_justify="left",
        caption="stages: what AT, FitNet (hint_stage) and SimKD (projectors) index, "
        "0 = first after the stem; pooled: the map the classifier pools",
        caption_justify="left",
    )
    for col in ("arch", "params", "stages (C×H×W)", "pooled", "head"):
        t.add_column(col)
    from engine.core.registry import ARCHS

    def shape(s) -> str:
        return "×".join(map(str, s))

    for name in ARCHS:
        size = max(input_size, 64) if name.startswith("tv_") else input_size
        d = describe(name, num_classes=num_classes, input_size=size)
        stages = "  ".join(shape(s) for s in d["stages"])
        if d["final_is_last_stage"]:
            pooled = "last stage"
        elif d["final"] == d["stages"][-1]:
            pooled = "last stage, activated"  # WRN: its final BN-ReLU
        else:
            pooled = shape(d["final"])
        t.add_row(name, f"{d['params'] / 1e6:.2f}M", stages, pooled, d.get("head", ""))
    console.print(t)


def methods(
    name: Annotated[
        str | None, typer.Argument(help="Show only this method (default: every method).")
    ] = None,
) -> None:
    """Every distillation method: its reference, test-time head and options with defaults."""
    from engine.core.registry import METHODS

    if name is not None and name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise fail(f"unknown method {name!r}{hint} (methods: {', '.join(METHODS)})")
    for spec in [METHODS[name]] if name else METHODS.values():
        head = "reused teacher classifier" if spec.head == "teacher" else "student's classifier"
        lines = [
            Text.assemble((spec.name, "bold"), f"  {spec.summary}"),
            Text(f"  reference: {spec.reference or '–'}"),
            Text(
                f"  test-time head: {head}; reads the teacher's {spec.teacher_outputs}"
                + (
                    "; trains on a weak and a strong view ([data] strong_view)"
                    if spec.strong_view
                    else ""
                )
                if spec.needs_teacher
                else f"  test-time head: {head}; no teacher"
            ),
        ]
        for line in lines:
            console.print(line, highlight=False)
        if spec.options:
            t = Table(show_header=True, box=None, padding=(0, 1, 0, 2))
            for col in ("option", "default", "help"):
                t.add_column(col, overflow="fold")
            for key, opt in spec.options.items():
                add_text_row(t, key, writing.toml_value(opt.default), opt.help)
            console.print(t)
        console.print()
