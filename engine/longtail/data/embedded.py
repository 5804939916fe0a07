"""The embedded default data set: scikit-learn's handwritten digits, made long-tailed.

1,797 real 8x8 grey-level scans of handwritten digits (UCI ML "Optical
Recognition of Handwritten Digits"), shipped inside scikit-learn, so the
demo and the tests need no download. Each class keeps a balanced held-out
pool of 80 images (split into test/val/tunev 80/10/10 per class, as for
CIFAR-LT's balanced test set); the rest forms the long-tailed training pool,
from which the exponential profile takes 90 images of class 0 down to 9 of
class 9 (imbalance factor 10, so tail classes have a handful of images).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.errors import JobError
from engine.longtail.data.images import ImageData, TensorSplit
from engine.longtail.data.profile import lt_counts, select_lt
from engine.longtail.data.splits import Splits, make_splits, reuse_or_make

HELD_OUT_PER_CLASS = 80  # balanced evaluation pool per class (64 test, 8 val, 8 tunev)
N_MAX = 90  # head-class size; the smallest class has 94 images after the held-out pool
DEFAULT_IMB_FACTOR = 10.0
# Mean/std of the grey levels over the whole set, in [0, 1] units.
MEAN, STD = (0.3053,), (0.3759,)


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    # The file sklearn's load_digits reads (the UCI optical digits test set), read without
    # importing sklearn.datasets: that import costs about 2 s, longer than a quick preset's epoch.
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise JobError("the embedded digits set needs scikit-learn installed (it ships the images); pip install scikit-learn")
    data = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 65:
        raise JobError(f"{path}: expected rows of 64 pixels and a label, got shape {data.shape}; reinstall scikit-learn")
    images = np.round(data[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    return images, data[:, 64].astype(np.int64)


def _resize(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images).float().unsqueeze(1)  # (N, 1, 8, 8)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp_(0, 255).to(torch.uint8)


def load_digits_lt(image_size: int | None = 32, imb_factor: float | None = None, split_seed: int = 0,
                   splits_dir: str | None = None) -> ImageData:
    imb = imb_factor or DEFAULT_IMB_FACTOR
    images, targets = _raw_digits()
    num_classes = 10
    recipe = {"dataset": "digits", "num_classes": num_classes, "imb_factor": imb, "n_max": N_MAX,
              "held_out_per_class": HELD_OUT_PER_CLASS, "seed": split_seed, "sizes": [len(targets)]}

    def make() -> Splits:
        rng = np.random.default_rng(split_seed)
        held, pool = [], []
        for c in range(num_classes):
            idx = rng.permutation(np.flatnonzero(targets == c))
            held.append(idx[:HELD_OUT_PER_CLASS])
            pool.append(idx[HELD_OUT_PER_CLASS:])
        held_idx, pool_idx = np.concatenate(held), np.concatenate(pool)
        pool_targets = np.full(len(targets), -1)
        pool_targets[pool_idx] = targets[pool_idx]
        train_lt = select_lt(pool_targets, lt_counts(N_MAX, num_classes, imb), seed=split_seed)
        return make_splits(train_lt, targets, held_idx, targets, recipe, split_seed, "all", "all")

    index = reuse_or_make(splits_dir, recipe, make)
    x = _resize(images, image_size or 32)
    y = torch.from_numpy(targets)
    splits = {name: TensorSplit(x[idx], y[idx]) for name, idx in index.indices.items()}
    return ImageData(
        name="digits",
        num_classes=num_classes,
        splits=splits,
        groups=index.groups,
        mean=MEAN,
        std=STD,
        hflip=False,  # a mirrored 2 or 7 is not a 2 or 7
        index=index,
        source_targets={"all": targets},
        info={"source": "sklearn.datasets.load_digits", "imb_factor": imb, "n_max": N_MAX},
    )
