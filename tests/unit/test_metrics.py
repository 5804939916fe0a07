from __future__ import annotations

import torch

from engine.common.groups import ClassGroups
from engine.common.metrics import classification_metrics, expected_calibration_error


def ece_by_loop(probs, targets, bins=15):
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.float().mean() * abs((pred[m] == targets[m]).float().mean() - conf[m].mean())
    return float(total)


def test_ece_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g) * 3
    targets = torch.randint(0, 7, (500,), generator=g)
    probs = logits.softmax(1)
    assert abs(expected_calibration_error(probs, targets) - ece_by_loop(probs, targets)) < 1e-6


def test_balanced_and_group_accuracy():
    groups = ClassGroups((200, 50, 10))  # many, medium, few; tail = class 2
    targets = torch.tensor([0] * 8 + [1] * 4 + [2] * 2)
    pred = torch.tensor([0] * 8 + [1, 1, 0, 0] + [0, 0])  # recalls 1.0, 0.5, 0.0
    logits = torch.nn.functional.one_hot(pred, 3).float() * 10
    m = classification_metrics(logits, targets, groups, "val")
    assert abs(m["val/acc"] - 10 / 14) < 1e-6
    assert abs(m["val/balanced_acc"] - 0.5) < 1e-6
    assert m["val/many_acc"] == 1.0 and m["val/medium_acc"] == 0.5 and m["val/few_acc"] == 0.0
    assert abs(m["val/head_acc"] - 0.75) < 1e-6 and m["val/tail_acc"] == 0.0
