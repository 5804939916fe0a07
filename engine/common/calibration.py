"""Temperature scaling (Guo et al. 2017) and the numbers of a reliability diagram."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.common.metrics import ECE_BINS

T_RANGE = (0.05, 20.0)  # temperatures searched; outside it the model is degenerate, not miscalibrated


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T minimising the NLL of softmax(logits / T) on held-out data.

    The NLL is convex in 1/T, so a coarse log-spaced grid followed by a golden-section
    refinement finds the minimum; unlike L-BFGS it cannot overflow on a degenerate
    (e.g. barely trained) model's huge logits.
    """
    z, y = logits.float().cpu(), targets.cpu()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    grid = [lo + (hi - lo) * i / 60 for i in range(61)]
    best = min(range(len(grid)), key=lambda i: nll(grid[i]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if nll(c) < nll(d):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin (lo, hi]: count, accuracy, mean confidence (None when empty)."""
    conf, pred = probs.float().max(dim=1)
    correct = (pred == targets).float()
    idx = (conf * bins).ceil().long().clamp_(1, bins) - 1
    out = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                    "accuracy": float(correct[m].mean()) if n else None,
                    "confidence": float(conf[m].mean()) if n else None})
    return out


def draw_reliability(bins: list[dict], title: str, size: int = 360):
    """A reliability diagram as a PIL image: accuracy bars per confidence bin, the diagonal, gaps in red."""
    from PIL import Image, ImageDraw

    pad = 40
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    w = size - 2 * pad

    def xy(x: float, y: float) -> tuple[float, float]:
        return pad + x * w, size - pad - y * w

    d.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    for b in bins:
        if not b["count"]:
            continue
        x0, x1 = xy(b["lo"], 0)[0], xy(b["hi"], 0)[0]
        acc, conf = b["accuracy"], b["confidence"]
        d.rectangle([x0, xy(0, acc)[1], x1, xy(0, 0)[1]], fill=(70, 110, 200), outline="black")
        lo, hi = sorted((acc, conf))
        d.rectangle([x0, xy(0, hi)[1], x1, xy(0, lo)[1]], outline=(200, 40, 40))
    d.line([xy(0, 0), xy(1, 1)], fill="gray", width=1)
    d.text((pad, 10), title, fill="black")
    d.text((pad, size - pad + 8), "confidence", fill="black")
    d.text((4, pad - 16), "accuracy", fill="black")
    return img
