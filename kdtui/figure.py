"""Paper figures of runs' curves (matplotlib, Agg): `kdtui plot` and the app's `g` key.

matplotlib is imported inside `render` only, so neither the CLI's start-up nor the app's
pays for it. Sized for a paper: 3.4 in per panel (a column of a two-column paper; two
panels make the text width), 8 pt text, vector output for pdf and svg (fonts embedded
as TrueType / text kept as text, so the figure stays editable), 300 dpi for png, and the
legend under the panels, never over a curve. Reproducible: no dates in the files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core import curves as curvesmod
from engine.core import metrics as M
from engine.core.store import Store

FORMATS = ("pdf", "png", "svg")
DEFAULT_METRICS = (M.TEST_TOP1, M.LOSS)  # the compare view's two panels
PANEL_W, PANEL_H = 3.4, 2.3  # inches
MAX_COLS = 2
# Okabe & Ito's colour-blind-safe palette, then line styles once it runs out
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
STYLES = ("-", "--", ":", "-.")
STYLE = {
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "lines.linewidth": 1.2,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "pdf.fonttype": 42,  # TrueType, not Type 3: journals ask for it, editors can edit it
    "svg.fonttype": "none",  # text stays text
    "svg.hashsalt": "kdtui",  # stable ids: the same runs give the same file
}
ERROR = "use a .pdf, .png or .svg file name"


class FigureError(ValueError):
    """A figure that cannot be drawn as asked (says why and what to do)."""


@dataclass
class Written:
    path: Path
    groups: list[curvesmod.Group]
    metrics: list[str]
    figure: Any = None  # the matplotlib Figure drawn (tests count its artists)

    def summary(self) -> str:
        parts = [f"{g.label} (n={g.n})" if g.n > 1 else g.label for g in self.groups]
        shown = ", ".join(parts[:6]) + (f", … {len(parts) - 6} more" if len(parts) > 6 else "")
        panels = len(self.metrics)
        return (
            f"{panels} panel{'s' * (panels != 1)} ({', '.join(self.metrics)}), "
            f"{len(self.groups)} curve{'s' * (len(self.groups) != 1)}: {shown}"
        )


def format_of(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FigureError(f"{path}: {ERROR} (the suffix picks the format)")
    return fmt


def default_path(root: Path, fmt: str = "pdf") -> Path:
    """Where the app proposes to write: exports/figure-<time>.pdf, beside the leaderboard's."""
    return root / "exports" / f"figure-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"


def label(group: curvesmod.Group) -> str:
    return f"{group.label} (n={group.n})" if group.n > 1 else group.label


def legend_columns(labels: Sequence[str], width_in: float) -> int:
    """As many columns as fit across the figure at 7 pt (≈18 characters per inch)."""
    per_entry = max(len(s) for s in labels) + 5  # the line sample and the gap
    return max(1, min(len(labels), int(width_in * 18 // per_entry)))


def render(groups: Sequence[curvesmod.Group], metrics: Sequence[str], path: Path):
    """Draw one panel per metric and save it to `path` (format from its suffix); returns
    the matplotlib Figure. Each group is a line (its seeds' mean) and, over 2+ seeds, a
    band of ± one sample std; in panel p, group i's line has the gid `panel<p>-curve-<i>`, its band
    `panel<p>-band-<i>` (ids an SVG keeps)."""
    fmt = format_of(path)
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, MaxNLocator

    cols = min(len(metrics), MAX_COLS)
    rows = math.ceil(len(metrics) / cols)
    width = PANEL_W * cols
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, PANEL_H * rows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        handles = {}
        for p, (ax, name) in enumerate(zip(axes, metrics)):
            for i, g in enumerate(groups):
                c = g.curves.get(name)
                if c is None:
                    continue
                color, style = COLORS[i % len(COLORS)], STYLES[i // len(COLORS) % len(STYLES)]
                (line,) = ax.plot(c.x, c.mean, color=color, linestyle=style, label=label(g))
                line.set_gid(f"panel{p}-curve-{i}")
                handles.setdefault(i, line)
                if c.seeds > 1:
                    lo = [m - s for m, s in zip(c.mean, c.std)]
                    hi = [m + s for m, s in zip(c.mean, c.std)]
                    band = ax.fill_between(c.x, lo, hi, color=color, alpha=0.22, linewidth=0)
                    band.set_gid(f"panel{p}-band-{i}")
            ax.set_ylabel(curvesmod.display_name(name))
            ax.set_xlabel(curvesmod.axis_name(name))
            if curvesmod.per_step(name):
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 20k, not 2e4 offsets
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
                ends = [x for g in groups if name in g.curves for x in g.curves[name].x]
                if ends:
                    ax.set_xlim(1, max(max(ends), 2))
        for ax in axes[len(metrics) :]:
            ax.set_visible(False)
        if handles:
            ordered = [handles[i] for i in sorted(handles)]
            labels = [h.get_label() for h in ordered]
            fig.legend(
                ordered,
                labels,
                loc="outside lower center",
                ncols=legend_columns(labels, width),
                frameon=False,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        no_dates = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}[fmt]
        fig.savefig(
            path,
            format=fmt,
            dpi=300,
            bbox_inches="tight",
            pad_inches=0.02,
            metadata={**no_dates, "Creator": "kdtui"} if fmt != "png" else None,
        )
    return fig


def write(
    store: Store,
    refs: Sequence[str],
    metrics: Sequence[str],
    path: Path,
    *,
    skip_missing: bool = False,
) -> Written:
    """The figure of the runs named by `refs` (run ids or experiment names): what
    `kdtui plot` and the app's figure key both call. A metric no run logged is an error
    (FigureError lists what they logged), or with `skip_missing` (the app's default
    panels) left out while another remains."""
    format_of(path)  # before any work
    metrics = list(dict.fromkeys(metrics)) or list(DEFAULT_METRICS)
    runs = curvesmod.select(store, refs)
    groups = curvesmod.groups(store, runs, metrics)
    missing = [m for m in metrics if not any(m in g.curves for g in groups)]
    if skip_missing and len(missing) < len(metrics):
        metrics, missing = [m for m in metrics if m not in missing], []
    if missing:
        have = curvesmod.metric_names(store, runs)
        named = ", ".join(missing)
        raise FigureError(
            f"no run of those named logged {named}"
            + (f"; they logged: {', '.join(have)}" if have else "; they logged nothing yet")
        )
    drawn = [g for g in groups if g.curves]
    fig = render(drawn, metrics, path)
    return Written(path, drawn, metrics, fig)
