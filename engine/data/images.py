"""Image data held as uint8 tensors, split and grouped for long-tail training."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.data.longtail import ClassGroups


@dataclass
class TensorSplit:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(self.y.numpy(), minlength=num_classes).tolist()


@dataclass
class ImageData:
    """Everything a job needs about a long-tailed image data set."""

    name: str
    num_classes: int
    splits: dict[str, TensorSplit]  # expert, gating (train-LT); test, val, tunev (balanced)
    groups: ClassGroups  # from the counts of the whole train-LT set
    mean: tuple[float, ...]  # per-channel, in [0, 1] units
    std: tuple[float, ...]
    hflip: bool  # whether a mirror image keeps its label
    info: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.splits["expert"].x.shape[1])

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        c = self.groups.counts
        return f"{self.name}: {self.num_classes} classes, train-LT {sum(c)} ({c[0]} down to {c[-1]}); {sizes}"


def load_image_data(cfg) -> ImageData:
    """The data set a train-expert config names."""
    if cfg.dataset == "digits":
        from engine.data.embedded import load_digits_lt

        return load_digits_lt(image_size=cfg.image_size, imb_factor=cfg.imb_factor, split_seed=cfg.split_seed)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")
