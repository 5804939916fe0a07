"""Small data sets in the real on-disk formats (CIFAR python pickles, file lists of PNGs).

Images are random uint8 noise plus a class-dependent brightness pattern, so a
network can learn something in a few epochs and accuracy checks mean something.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def _images(labels: np.ndarray, num_classes: int, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    x = rng.integers(0, 96, size=(len(labels), 3, side, side))
    # class c: a bright horizontal band at a class-specific height and colour
    for i, c in enumerate(labels):
        row = int(c) * side // num_classes
        x[i, c % 3, row : row + max(2, side // num_classes)] += 150
    return x.clip(0, 255).astype(np.uint8)


def write_cifar(root: Path, dataset: str, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` (5 train batches + test_batch) or ``root/cifar-100-python`` (train, test)."""
    rng = np.random.default_rng(seed)
    num_classes = 10 if dataset == "cifar10" else 100
    key = b"labels" if dataset == "cifar10" else b"fine_labels"

    def batch(per_class: int) -> tuple[np.ndarray, list[int]]:
        y = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        return _images(y, num_classes, rng).reshape(len(y), 3072), y.tolist()

    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        x, y = batch(train_per_class)
        for i, part in enumerate(np.array_split(np.arange(len(y)), 5), 1):
            with open(folder / f"data_batch_{i}", "wb") as f:
                pickle.dump({b"data": x[part], key: [y[j] for j in part], b"batch_label": b"training"}, f)
        x, y = batch(test_per_class)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"data": x, key: y}, f)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, n in (("train", train_per_class), ("test", test_per_class)):
            x, y = batch(n)
            with open(folder / name, "wb") as f:
                pickle.dump({b"data": x, key: y, b"coarse_labels": [c // 5 for c in y]}, f)
    return root


def write_filelist(root: Path, train_counts: list[int], test_per_class: int, side: int = 40, seed: int = 0):
    """PNG images under ``root/images`` plus ``train.txt`` (long-tailed) and ``test.txt`` (balanced)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    num_classes = len(train_counts)
    lists = {}
    for part, counts in (("train", train_counts), ("test", [test_per_class] * num_classes)):
        y = np.repeat(np.arange(num_classes), counts)
        x = _images(y, num_classes, rng, side)
        lines = []
        for i, (img, c) in enumerate(zip(x, y)):
            rel = f"images/{part}/c{c}/{i:04d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(root / rel)
            lines.append(f"{rel} {c}")
        lists[part] = root / f"{part}.txt"
        lists[part].write_text("\n".join(lines) + "\n")
    return lists["train"], lists["test"]
