"""Logit files for gating tests, in the formats `engine recompute-logits` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HEAD, TAIL = list(range(5)), list(range(5, 10))
C = 10
# Train-LT counts: classes 0-4 are head (> 20 images), 5-9 tail (<= 20).
COUNTS = [200, 150, 100, 60, 40, 20, 15, 12, 10, 8]


def write_npz(path: Path, logits: np.ndarray, targets: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, logits=logits.astype(np.float32), targets=targets.astype(np.int64),
             predictions=logits.argmax(1).astype(np.int64))


def specialist_logits(targets: np.ndarray, good_on: list[int], rng: np.random.Generator) -> np.ndarray:
    """Right but modest (p(y) ~ 0.65) on ``good_on`` classes, confidently wrong (p ~ 0.93) elsewhere.

    Averaging two such experts is wrong everywhere (the wrong one is surer);
    the confidence pattern tells a gate which one to trust.
    """
    logits = rng.normal(0, 0.5, size=(len(targets), C))
    good = np.isin(targets, good_on)
    rows = np.arange(len(targets))
    logits[rows[good], targets[good]] += 3.0
    wrong = (targets[~good] + rng.integers(1, C, size=(~good).sum())) % C
    logits[rows[~good], wrong] += 5.0
    return logits


def split_targets(name: str, rng: np.random.Generator, scale: int) -> np.ndarray:
    if name == "gating":  # long-tailed like the train-LT set it is drawn from
        per_class = [max(2, c * scale // 20) for c in COUNTS]
    else:  # balanced evaluation splits
        per_class = [3 * scale] * C
    return rng.permutation(np.repeat(np.arange(C), per_class))


def write_head_tail_experts(root: Path, seed: int = 0, scale: int = 10) -> Path:
    """DIR/{head_expert,tail_expert}/{gating,val,test}_logits.npz plus class_counts.json."""
    rng = np.random.default_rng(seed)
    for split in ("gating", "val", "test"):
        y = split_targets(split, rng, scale)
        write_npz(root / "head_expert" / f"{split}_logits.npz", specialist_logits(y, HEAD, rng), y)
        write_npz(root / "tail_expert" / f"{split}_logits.npz", specialist_logits(y, TAIL, rng), y)
    (root / "class_counts.json").write_text(json.dumps({"class_counts": COUNTS}))
    return root
