"""Live line plots of metric series and a bar chart, bounded and downsampled to their width."""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

from textual_plotext import PlotextPlot

MAX_POINTS = 5000  # per series; older points are dropped (a bounded buffer)
MAX_SERIES = 16  # series a plot keeps when it takes keys by pattern (e.g. one per expert)
SMOOTHING = 0.6  # EMA weight of the previous value (TensorBoard's default slider position)
# Readable in a 256-colour terminal and on light or dark backgrounds.
PALETTE = ["cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white"]
RAW_COLOR = "gray"


def ema(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average, as TensorBoard's smoothing.

    ``s_t = w s_{t-1} + (1 - w) x_t`` started at 0, divided by ``1 - w^t``, so
    the first points are not pulled towards zero. Non-finite values are passed
    through unsmoothed and do not poison the average.
    """
    out, last, n = [], 0.0, 0
    for x in values:
        if not math.isfinite(x):
            out.append(x)
            continue
        n += 1
        last = weight * last + (1 - weight) * x
        out.append(last / (1 - weight**n))
    return out


def downsample(points: list[tuple[float, float]], width: int) -> list[tuple[float, float]]:
    """At most about ``width`` points: a terminal column cannot show more."""
    if len(points) <= width:
        return points
    stride = len(points) / width
    picked = [points[int(i * stride)] for i in range(width)]
    if picked[-1] is not points[-1]:
        picked.append(points[-1])  # always show the newest value
    return picked


class _LivePlot(PlotextPlot):
    """Redraws only when something changed since the last frame (callers redraw on a timer)."""

    _dirty = True

    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.plt.clear_data()
        self.plt.clear_figure()
        self.draw(self.plt)
        self.refresh()

    def draw(self, plt) -> None:
        raise NotImplementedError


class Curves(_LivePlot):
    """Series keyed by metric name; ``add`` points, then ``redraw``.

    ``series`` names the keys to plot and their legend labels; ``match`` (a
    predicate over keys) also takes any other key it accepts, labelled by
    ``label_of`` (for per-expert or per-(n, k, m) series whose keys are only
    known at run time).
    """

    def __init__(self, title: str, series: dict[str, str] | None = None, ylabel: str = "",
                 match: Callable[[str], bool] | None = None, label_of: Callable[[str], str] | None = None,
                 xlabel: str = "epoch", **kwargs):
        super().__init__(**kwargs)
        self.title_text = title
        self.series_labels = dict(series or {})  # metric key -> legend label
        self.match, self.label_of = match, label_of or (lambda k: k)
        self.ylabel, self.xlabel = ylabel, xlabel
        self.points: dict[str, deque] = {k: deque(maxlen=MAX_POINTS) for k in self.series_labels}
        self.smooth = False
        self.log_y = False
        self._dirty = True

    def accepts(self, key: str) -> bool:
        if key in self.points:
            return True
        if self.match is not None and self.match(key) and len(self.points) < MAX_SERIES:
            self.series_labels[key] = self.label_of(key)
            self.points[key] = deque(maxlen=MAX_POINTS)
            return True
        return False

    def add(self, key: str, x: float, y: float) -> None:
        if self.accepts(key):
            self.points[key].append((x, y))
            self._dirty = True

    def replace(self, key: str, pts: list[tuple[float, float]], label: str | None = None) -> None:
        """Set a whole series at once (compare view)."""
        self.series_labels[key] = label or key
        self.points[key] = deque(pts, maxlen=MAX_POINTS)
        self._dirty = True

    def has_data(self) -> bool:
        return any(self.points.values())

    def set_options(self, smooth: bool, log_y: bool) -> None:
        if (smooth, log_y) != (self.smooth, self.log_y):
            self.smooth, self.log_y = smooth, log_y
            self._dirty = True

    def on_resize(self) -> None:
        self._dirty = True  # the downsampling width changed

    def draw(self, plt) -> None:
        title = self.title_text + (" · smoothed" if self.smooth else "") + (" · log" if self.log_y else "")
        plt.title(title)
        plt.xlabel(self.xlabel)
        if self.ylabel:
            plt.ylabel(self.ylabel)
        width = max(self.size.width - 10, 10)
        for i, (key, pts) in enumerate(self.points.items()):
            pts = [(x, y) for x, y in pts if math.isfinite(y) and (y > 0 or not self.log_y)]
            if not pts:
                continue
            color = PALETTE[i % len(PALETTE)]
            xs, ys = zip(*downsample(pts, width))
            if self.smooth:
                # The raw curve stays visible, dim, under the smoothed one (as in TensorBoard).
                plt.plot(xs, ys, marker="braille", color=RAW_COLOR)
                sm = ema([y for _, y in pts])
                xs, ys = zip(*downsample(list(zip([x for x, _ in pts], sm)), width))
            plt.plot(xs, ys, label=self.series_labels[key], marker="braille", color=color)
        plt.yscale("log" if self.log_y else "linear")


class Bars(_LivePlot):
    """One bar per expert, labelled by its name: the latest routing load."""

    def __init__(self, title: str, **kwargs):
        super().__init__(**kwargs)
        self.title_text = title
        self.labels: list[str] = []
        self.values: list[float] = []
        self.caption = ""
        self._dirty = True

    def set(self, labels: list[str], values: list[float], caption: str) -> None:
        self.labels, self.values, self.caption = list(labels), list(values), caption
        self._dirty = True

    def draw(self, plt) -> None:
        plt.title(f"{self.title_text} {self.caption}".strip())
        if self.values:
            plt.bar(self.labels, self.values, color="cyan")
