"""Class groups of a long-tailed training set: many/medium/few-shot and head/tail."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Group boundaries in training images per class (Liu et al. 2019, OLTR; used
# by every CIFAR-LT / ImageNet-LT paper since).
MANY_ABOVE = 100  # many-shot: more than 100 images
FEW_BELOW = 20  # few-shot: fewer than 20 images
TAIL_AT_MOST = 20  # tail: at most 20 images (head/tail split used by the gating stage)



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
