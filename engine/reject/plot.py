"""The risk-coverage figure: balanced and worst-group error against rejection rate, one line per
source x method. Drawn with PIL, as the reliability diagrams are (the engine has no matplotlib)."""

from __future__ import annotations

# Distinct on white, and still apart in grey: one per line, in order.
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (174, 199, 232)]


def draw_risk_coverage(lines: list[tuple[str, list[float], list[float], list[float]]], title: str,
                       panel: int = 380):
    """``lines``: (label, rejection rates, balanced errors, worst errors). Two panels side by side, a legend below."""
    from PIL import Image, ImageDraw

    pad, legend_row = 44, 14
    rows = (len(lines) + 1) // 2
    width, height = 2 * panel + pad, panel + 30 + rows * legend_row + 10
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    xs = [x for _, r, _, _ in lines for x in r]
    x_max = max(max(xs, default=0.8), 1e-6)
    d.text((pad, 6), title, fill="black")
    for p, (name, which) in enumerate((("balanced error", 2), ("worst-group error", 3))):
        left, top = pad + p * panel, 26
        size = panel - pad

        def xy(x: float, y: float) -> tuple[float, float]:
            return left + x / x_max * size, top + (1 - y) * size

        d.rectangle([xy(0, 1), xy(x_max, 0)], outline="black")
        for tick in (0.0, 0.5, 1.0):
            d.text((left - 26, xy(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
        d.text((xy(x_max, 0)[0] - 16, xy(0, 0)[1] + 4), f"{x_max:.2f}", fill="black")
        d.text((left, xy(0, 0)[1] + 4), "0", fill="black")
        d.text((left + size / 2 - 40, xy(0, 0)[1] + 4), "rejection rate", fill="black")
        d.text((left + 4, top + 4), name, fill="black")
        for i, line in enumerate(lines):
            colour = PALETTE[i % len(PALETTE)]
            pts = [xy(x, min(max(y, 0.0), 1.0)) for x, y in zip(line[1], line[which]) if y is not None]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
    base = panel + 26
    for i, (label, *_rest) in enumerate(lines):
        x = pad + (i % 2) * panel
        y = base + (i // 2) * legend_row
        colour = PALETTE[i % len(PALETTE)]
        d.line([(x, y + 6), (x + 18, y + 6)], fill=colour, width=3)
        d.text((x + 24, y), label, fill="black")
    return img
