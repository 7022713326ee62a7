"""Terminal line plots of run metrics (textual-plotext)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import RenderResult
from textual.content import Content
from textual_plotext import PlotextPlot

from engine.core.inert import printable

# RGB so the legend in the border title can use exactly the curve's colour
COLORS = (
    (79, 195, 247),
    (255, 183, 77),
    (129, 199, 132),
    (240, 98, 146),
    (186, 104, 200),
    (229, 115, 115),
    (255, 241, 118),
    (144, 164, 174),
)
MAX_POINTS = 400


def downsample(xs: Sequence[float], ys: Sequence[float], limit: int = MAX_POINTS):
    """Bucket means: a 100k-step loss curve costs the same to draw as a short one."""
    n = len(xs)
    if n <= limit:
        return list(xs), list(ys)
    size = n / limit
    out_x, out_y = [], []
    for i in range(limit):
        lo, hi = int(i * size), max(int((i + 1) * size), int(i * size) + 1)
        out_x.append(xs[hi - 1])
        out_y.append(sum(ys[lo:hi]) / (hi - lo))
    return out_x, out_y


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[int]:
    """Round integer ticks (steps, epochs) instead of plotext's 123.5-style ones."""
    span = max(hi - lo, 1)
    raw = span / max(count, 1)
    magnitude = 10 ** max(len(str(int(raw))) - 1, 0)
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = int(-(-lo // step) * step)
    return list(range(first, int(hi) + 1, int(step))) or [int(lo)]


def tick_label(value: int) -> str:
    return f"{value / 1000:g}k" if abs(value) >= 10_000 else str(value)


class CurvePlot(PlotextPlot):
    """Named series drawn as lines; `set_series` replaces them and redraws."""

    DEFAULT_CSS = """
    CurvePlot { width: 1fr; height: 1fr; }
    """

    def __init__(
        self,
        title: str,
        *,
        xlabel: str = "",
        empty: str = "no data yet",
        log_y: bool = False,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.title_text = title
        self.xlabel_text = xlabel
        self.empty = empty
        self.log_y = log_y
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.log_shown = False

    def set_series(self, series: dict[str, tuple[Sequence[float], Sequence[float]]]) -> None:
        self.series = {k: (list(x), list(y)) for k, (x, y) in series.items() if len(x)}
        self.log_shown = self.log_y and all(min(y) > 0 for _, y in self.series.values())
        self.border_title = self.legend()
        self.border_subtitle = self.xlabel_text
        self.refresh()

    def legend(self) -> Content:
        """The title, then each series' name in its curve's colour (plotext's legend hides data)."""
        # a log axis says so: its ticks alone read like a linear scale at a glance
        parts: list = [self.title_text + (" (log y)" if self.log_shown else "")]
        if len(self.series) > 1:
            for i, name in enumerate(self.series):
                r, g, b = COLORS[i % len(COLORS)]
                parts.append((f" ━{printable(name)}", f"rgb({r},{g},{b})"))
        return Content.assemble(*parts)

    @property
    def points(self) -> int:
        return sum(len(x) for x, _ in self.series.values())

    def last(self, name: str) -> float | None:
        xs_ys = self.series.get(name)
        return xs_ys[1][-1] if xs_ys and xs_ys[1] else None

    def render(self) -> RenderResult:
        width, height = self.size
        if not self.series or width < 16 or height < 5:
            return Text(self.empty if self.series == {} else "", style="dim")
        plt = self.plt
        plt.clear_figure()
        if self.log_shown:
            plt.yscale("log")
        for i, (xs, ys) in enumerate(self.series.values()):
            dx, dy = downsample(xs, ys, max(16, min(MAX_POINTS, 2 * width)))
            plt.plot(dx, dy, marker="hd", color=COLORS[i % len(COLORS)])
        xs_all = [x for xs, _ in self.series.values() for x in xs]
        if all(float(x).is_integer() for x in xs_all):
            ticks = nice_ticks(min(xs_all), max(xs_all), max(2, (width - 6) // 8))
            plt.xticks(ticks, [tick_label(t) for t in ticks])
        return super().render()
