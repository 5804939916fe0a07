"""CIFAR-10-LT and CIFAR-100-LT from the standard python-pickle folders.

    DATA_ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch}   labels under b"labels"
    DATA_ROOT/cifar-100-python/{train, test}                       labels under b"fine_labels"

The files are pickles, so they are read with an unpickler that only builds
plain containers and numpy arrays: a tampered file cannot run code. No
checksum is required (users keep their own copies; tests write small
folders in the same format).

The train set is made long-tailed with n_i = floor(n_max * IF^(-i/(C-1)))
(class 0 the head, n_max the smallest per-class count of the train set: 5000
for CIFAR-10, 500 for CIFAR-100); each class keeps the first n_i images of a
seeded shuffle. The balanced test set becomes test/val/tunev 80/10/10 per class.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from engine.core.errors import JobError
from engine.longtail.data.images import ImageData, TensorSplit, resize_uint8
from engine.longtail.data.profile import lt_counts, select_lt
from engine.longtail.data.splits import Splits, make_splits, reuse_or_make

DEFAULT_IMB_FACTOR = 100.0
# Per-channel mean/std of the CIFAR training images in [0, 1] units (the values every CIFAR-LT repository uses).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10,
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100,
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _DataOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(d[b"data"], dtype=np.uint8), np.asarray(d[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise JobError(f"{path} is not a CIFAR python batch ({type(e).__name__}: {e}); "
                       "extract the original python-version archive again") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise JobError(f"{path} holds data of shape {data.shape} for {len(labels)} labels; expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(root: str | Path, dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (x uint8 (N,3,32,32), y), "test": (x, y)} from a python-pickle folder."""
    folder_name, train_files, test_files, key, num_classes, url = LAYOUT[dataset]
    folder = Path(root).expanduser() / folder_name
    if not folder.is_dir():
        raise JobError(f"--data-root {root} holds no {folder_name}/; extract {url} there (or point --data-root at "
                       "the folder that contains it)")
    out = {}
    for part, files in (("train", train_files), ("test", test_files)):
        xs, ys = [], []
        for name in files:
            try:
                x, y = _read_batch(folder / name, key)
            except FileNotFoundError:
                have = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
                raise JobError(f"{folder} lacks {name} (found: {have}); extract {url} again") from None
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        if y.min() < 0 or y.max() >= num_classes:
            raise JobError(f"{folder}/{files[0]} has labels outside 0..{num_classes - 1}; is this {dataset}?")
        out[part] = (x, y)
    return out


def load_cifar_lt(dataset: str, data_root: str | None, imb_factor: float | None = None, split_seed: int = 0,
                  splits_dir: str | None = None, image_size: int | None = None) -> ImageData:
    if not data_root:
        raise JobError(f"--dataset {dataset} needs --data-root DIR, the folder holding {LAYOUT[dataset][0]}/")
    num_classes = LAYOUT[dataset][4]
    imb = imb_factor or DEFAULT_IMB_FACTOR
    raw = read_cifar(data_root, dataset)
    (tx, ty), (ex, ey) = raw["train"], raw["test"]
    per_class = np.bincount(ty, minlength=num_classes)
    n_max = int(per_class.min())
    if n_max == 0:
        raise JobError(f"{dataset} train set under {data_root} has no images of class {int(per_class.argmin())}")
    recipe = {"dataset": dataset, "num_classes": num_classes, "imb_factor": imb, "n_max": n_max, "seed": split_seed,
              "sizes": [len(ty), len(ey)]}

    def make() -> Splits:
        train_lt = select_lt(ty, lt_counts(n_max, num_classes, imb), seed=split_seed)
        return make_splits(train_lt, ty, np.arange(len(ey)), ey, recipe, split_seed)

    index = reuse_or_make(splits_dir, recipe, make)
    pools = {"train": (torch.from_numpy(tx), torch.from_numpy(ty)), "test": (torch.from_numpy(ex), torch.from_numpy(ey))}
    splits = {}
    for name, idx in index.indices.items():
        x, y = pools[index.sources[name]]
        t = torch.from_numpy(idx)
        splits[name] = TensorSplit(resize_uint8(x[t], image_size or 32).contiguous(), y[t].contiguous())
    return ImageData(name=dataset, num_classes=num_classes, splits=splits, groups=index.groups, mean=MEAN, std=STD,
                     hflip=True, index=index, source_targets={"train": ty, "test": ey},
                     info={"data_root": str(data_root), "imb_factor": imb, "n_max": n_max})
