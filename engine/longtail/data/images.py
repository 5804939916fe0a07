"""Image data held as uint8 tensors (or file lists), split and grouped for long-tail training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.common.groups import ClassGroups


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
    splits: dict[str, Any]  # expert, gating (train-LT); test, val, tunev (balanced): TensorSplit or FileSplit
    groups: ClassGroups  # from the counts of the whole train-LT set
    mean: tuple[float, ...]  # per-channel, in [0, 1] units
    std: tuple[float, ...]
    hflip: bool  # whether a mirror image keeps its label
    index: Any = None  # engine.data.splits.Splits: the split index files behind ``splits``
    source_targets: dict[str, np.ndarray] = field(default_factory=dict)  # labels of each pool the indices point into
    info: dict = field(default_factory=dict)
    in_channels: int | None = None
    streamed: bool = False  # images decoded from files by a DataLoader rather than held in memory

    @property
    def channels(self) -> int:
        if self.in_channels is not None:
            return self.in_channels
        return int(self.splits["expert"].x.shape[1])

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        c = self.groups.counts
        return f"{self.name}: {self.num_classes} classes, train-LT {sum(c)} ({c[0]} down to {c[-1]}); {sizes}"


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 images to ``size`` x ``size`` (bilinear, antialiased when shrinking), once at load time."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    import torch.nn.functional as F

    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < x.shape[-1])
    return out.round().clamp_(0, 255).to(torch.uint8)


