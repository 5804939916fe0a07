"""Long-tail bookkeeping: the exponential profile, the splits, the class groups.

Pure numpy so it is exact and testable without torch.
"""

from __future__ import annotations

import numpy as np

from engine.common.groups import FEW_BELOW, MANY_ABOVE, TAIL_AT_MOST  # noqa: F401


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

