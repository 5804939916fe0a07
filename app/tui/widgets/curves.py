"""A live line plot of a few metric series, bounded and downsampled to its width."""

from __future__ import annotations

from collections import deque

from textual_plotext import PlotextPlot

MAX_POINTS = 5000  # per series; older points are dropped (a bounded buffer)


class Curves(PlotextPlot):
    """Series keyed by metric name; ``add`` points, then ``redraw``."""

    def __init__(self, title: str, series: dict[str, str], ylabel: str = "", **kwargs):
        super().__init__(**kwargs)
        self.title_text = title
        self.series_labels = series  # metric key -> legend label
        self.ylabel = ylabel
        self.points: dict[str, deque] = {k: deque(maxlen=MAX_POINTS) for k in series}
        self._dirty = True

    def add(self, key: str, x: float, y: float) -> None:
        if key in self.points:
            self.points[key].append((x, y))
            self._dirty = True

    def has_data(self) -> bool:
        return any(self.points.values())

    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title_text)
        plt.xlabel("epoch")
        if self.ylabel:
            plt.ylabel(self.ylabel)
        width = max(self.size.width - 10, 10)
        for key, pts in self.points.items():
            if not pts:
                continue
            xs, ys = zip(*downsample(list(pts), width))
            plt.plot(xs, ys, label=self.series_labels[key], marker="braille")
        self.refresh()


def downsample(points: list[tuple[float, float]], width: int) -> list[tuple[float, float]]:
    """At most about ``width`` points: a terminal column cannot show more."""
    if len(points) <= width:
        return points
    stride = len(points) / width
    picked = [points[int(i * stride)] for i in range(width)]
    if picked[-1] is not points[-1]:
        picked.append(points[-1])  # always show the newest value
    return picked
