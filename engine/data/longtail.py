"""Long-tail bookkeeping: the exponential profile, the splits, the class groups.

Pure numpy so it is exact and testable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Group boundaries in training images per class (Liu et al. 2019, OLTR; used
# by every CIFAR-LT / ImageNet-LT paper since).
MANY_ABOVE = 100  # many-shot: more than 100 images
FEW_BELOW = 20  # few-shot: fewer than 20 images
TAIL_AT_MOST = 20  # tail: at most 20 images (head/tail split used by the gating stage)


def lt_counts(n_max: int, num_classes: int, imb_factor: float) -> list[int]:
    """n_i = floor(n_max * IF^(-i/(C-1))): class 0 is the head, class C-1 has n_max/IF."""
    if num_classes == 1:
        return [n_max]
    return [int(np.floor(n_max * imb_factor ** (-i / (num_classes - 1)))) for i in range(num_classes)]


def select_lt(targets: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """Indices taking the first ``counts[c]`` of a seeded shuffle of each class."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(targets == c)
        if len(idx) < n:
            raise ValueError(f"class {c} has {len(idx)} images, the profile asks for {n}")
        chosen.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(chosen))


def split_per_class(
    indices: np.ndarray, targets: np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Split ``indices`` class by class so every part keeps the class profile.

    Parts after the first get ``round(fraction * n_c)`` of each class; the first
    part takes the rest, so no image is lost and the parts are disjoint.
    """
    rng = np.random.default_rng(seed)
    names = list(fractions)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for c in np.unique(targets[indices]):
        idx = rng.permutation(indices[targets[indices] == c])
        start = 0
        sizes = {n: int(round(fractions[n] * len(idx))) for n in names[1:]}
        first = len(idx) - sum(sizes.values())
        for n in names:
            size = first if n == names[0] else sizes[n]
            parts[n].append(idx[start : start + size])
            start += size
    return {n: np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for n, p in parts.items()}


@dataclass(frozen=True)
class ClassGroups:
    """Which classes are many/medium/few-shot and head/tail, from train counts."""

    counts: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def mask(self, group: str) -> np.ndarray:
        c = np.asarray(self.counts)
        return {
            "many": c > MANY_ABOVE,
            "medium": (c >= FEW_BELOW) & (c <= MANY_ABOVE),
            "few": c < FEW_BELOW,
            "head": c > TAIL_AT_MOST,
            "tail": c <= TAIL_AT_MOST,
        }[group]

    def to_json(self) -> dict:
        return {
            "class_counts": list(self.counts),
            "boundaries": {"many_above": MANY_ABOVE, "few_below": FEW_BELOW, "tail_at_most": TAIL_AT_MOST},
            "groups": {g: np.flatnonzero(self.mask(g)).tolist() for g in ("many", "medium", "few", "head", "tail")},
        }
