"""Temperature scaling (Guo et al. 2017) and the numbers of a reliability diagram."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.metrics import ECE_BINS


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on held-out data (L-BFGS on log T)."""
    # clone: the logits may come from inference mode, whose tensors autograd refuses
    logits, targets = logits.float().cpu().clone(), targets.cpu().clone()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    # A degenerate fit (e.g. a constant predictor) would return 0 or inf; no scaling is the safe answer.
    return t if 1e-2 < t < 1e2 else 1.0


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
