"""File-list data sets in the ImageNet-LT / iNaturalist 2018 style.

A list file holds one ``relative/path.jpg label`` per line, the images live
under ``--data-root``. The training list is already long-tailed: it is split
90/10 per class into expert/gating; the evaluation list (balanced) into
test/val/tunev 80/10/10 per class. Images are decoded by DataLoader workers
with the usual ResNet-50 transforms (Goyal et al. 2017 / torchvision):
RandomResizedCrop + flip for training, resize to 8/7 of the crop and a
centre crop for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.core.errors import JobError
from engine.longtail.data.images import ImageData
from engine.longtail.data.splits import make_splits, reuse_or_make

# ImageNet channel statistics in [0, 1] units (torchvision's pretrained-model convention).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


@dataclass
class FileSplit:
    """Images of one split, by path, decoded on demand."""

    root: Path
    paths: list[str]
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(self.y.numpy(), minlength=num_classes).tolist()


def read_list(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Paths and labels of a ``path label`` list, with the line number of any bad line."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text().splitlines()
    except OSError as e:
        raise JobError(f"cannot read file list {p} ({e.strerror}); check --train-list/--test-list") from None
    paths, labels = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise JobError(f"{p}:{n}: expected 'relative/path label' with a label >= 0, got {line.strip()[:80]!r}")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise JobError(f"file list {p} is empty")
    return paths, np.asarray(labels, dtype=np.int64)


def load_filelist_lt(data_root: str | None, train_list: str | None, test_list: str | None, split_seed: int = 0,
                     splits_dir: str | None = None) -> ImageData:
    if not (data_root and train_list and test_list):
        raise JobError("--dataset filelist needs --data-root (image folder), --train-list and --test-list")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise JobError(f"--data-root {root} is not a folder")
    tr_paths, tr_y = read_list(train_list)
    te_paths, te_y = read_list(test_list)
    num_classes = int(max(tr_y.max(), te_y.max())) + 1
    missing = [c for c in range(num_classes) if not (tr_y == c).any()]
    if missing:
        raise JobError(f"{train_list} has no image of class(es) {missing[:10]}; labels must run 0..C-1")
    first = root / tr_paths[0]
    if not first.is_file():
        raise JobError(f"image {first} (line 1 of {train_list}) not found; --data-root must be the folder the paths "
                       "are relative to")
    import hashlib

    lists_hash = hashlib.sha256("\n".join([*tr_paths, *map(str, tr_y), *te_paths, *map(str, te_y)]).encode()).hexdigest()[:16]
    recipe = {"dataset": "filelist", "num_classes": num_classes, "lists": lists_hash, "seed": split_seed,
              "sizes": [len(tr_y), len(te_y)]}
    index = reuse_or_make(splits_dir, recipe, lambda: make_splits(
        np.arange(len(tr_y)), tr_y, np.arange(len(te_y)), te_y, recipe, split_seed))
    pools = {"train": (tr_paths, tr_y), "test": (te_paths, te_y)}
    splits = {}
    for name, idx in index.indices.items():
        paths, y = pools[index.sources[name]]
        splits[name] = FileSplit(root, [paths[i] for i in idx], torch.from_numpy(y[idx]))
    return ImageData(name="filelist", num_classes=num_classes, splits=splits, groups=index.groups, mean=MEAN, std=STD,
                     hflip=True, index=index, source_targets={"train": tr_y, "test": te_y},
                     info={"data_root": str(root), "train_list": str(train_list), "test_list": str(test_list)},
                     in_channels=3, streamed=True)
