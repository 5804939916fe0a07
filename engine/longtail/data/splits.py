"""Split index files: which images form expert/gating (train-LT) and test/val/tunev.

Written once as JSON beside the class statistics, and reused when their
fingerprint (data set, sizes, imbalance factor, seed, split fractions) matches,
so every expert of a study trains and is evaluated on the same images:

    splits/
        fingerprint.json      what the splits were made from
        expert.json ...       {"split", "source", "fingerprint", "indices"}
        class_counts.json     train-LT counts per class, and per split
        class_weights.json    n / (C * n_c) per class (mean 1 over train-LT images)
        groups.json           many/medium/few and head/tail classes, with the boundaries
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.common.groups import ClassGroups
from engine.core.errors import JobError
from engine.core.rundir import atomic_write_json, read_json
from engine.longtail.data.profile import split_per_class

FORMAT = 1
TRAIN_FRACTIONS = {"expert": 0.9, "gating": 0.1}  # both keep the LT profile
EVAL_FRACTIONS = {"test": 0.8, "val": 0.1, "tunev": 0.1}  # per class, of the balanced set
SPLIT_NAMES = (*TRAIN_FRACTIONS, *EVAL_FRACTIONS)


def fingerprint(recipe: dict) -> str:
    """A short hash of everything that decides the splits."""
    blob = json.dumps({"format": FORMAT, "train": TRAIN_FRACTIONS, "eval": EVAL_FRACTIONS, **recipe}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Splits:
    indices: dict[str, np.ndarray]  # split -> indices into its source
    sources: dict[str, str]  # split -> "train" or "test": which pool of the data set the indices point into
    lt_counts: list[int]  # train-LT images per class (expert + gating)
    recipe: dict  # what the splits were made from
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.lt_counts)

    @property
    def groups(self) -> ClassGroups:
        return ClassGroups(tuple(self.lt_counts))

    def class_weights(self) -> list[float]:
        counts = np.asarray(self.lt_counts, dtype=np.float64)
        return (counts.sum() / (len(counts) * np.maximum(counts, 1))).round(6).tolist()

    def write(self, folder: Path, targets: dict[str, np.ndarray]) -> None:
        """Write every file atomically; ``targets`` are the labels of each source (for per-split counts)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, idx in self.indices.items():
            atomic_write_json(folder / f"{name}.json", {"split": name, "source": self.sources[name],
                                                       "fingerprint": self.fingerprint, "indices": idx.tolist()})
        per_split = {name: np.bincount(targets[self.sources[name]][idx], minlength=self.num_classes).tolist()
                     for name, idx in self.indices.items()}
        atomic_write_json(folder / "class_counts.json", {"train_lt": self.lt_counts, "splits": per_split})
        atomic_write_json(folder / "class_weights.json", {"rule": "n / (C * n_c) over train-LT",
                                                         "weights": self.class_weights()})
        atomic_write_json(folder / "groups.json", self.groups.to_json())
        # Last: a folder with a fingerprint is complete.
        atomic_write_json(folder / "fingerprint.json", {"fingerprint": self.fingerprint, "recipe": self.recipe,
                                                       "format": FORMAT})

    @classmethod
    def read(cls, folder: Path, expected: str | None = None) -> "Splits":
        folder = Path(folder)
        head = read_json(folder / "fingerprint.json")
        if head is None:
            raise JobError(f"splits folder {folder} has no fingerprint.json; write one with `engine make-splits` "
                           "or leave --splits-dir out")
        fp = head["fingerprint"]
        if expected is not None and fp != expected:
            raise JobError(f"splits in {folder} were made from different data settings ({_recipe_line(head['recipe'])}); "
                           "use the same settings or leave --splits-dir out to make fresh splits")
        counts = read_json(folder / "class_counts.json")
        indices, sources = {}, {}
        for name in SPLIT_NAMES:
            part = read_json(folder / f"{name}.json")
            if part is None or counts is None or part.get("fingerprint") != fp:
                raise JobError(f"splits folder {folder} is incomplete or mixed ({name}.json); "
                               "write it again with `engine make-splits`")
            indices[name] = np.asarray(part["indices"], dtype=np.int64)
            sources[name] = part["source"]
        return cls(indices, sources, counts["train_lt"], head["recipe"], fp)


def _recipe_line(recipe: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(recipe.items()) if k != "sizes")


def make_splits(train_lt: np.ndarray, train_targets: np.ndarray, held_out: np.ndarray, test_targets: np.ndarray,
                recipe: dict, seed: int, train_source: str = "train", test_source: str = "test") -> Splits:
    """Split the chosen train-LT indices 90/10 and the balanced held-out indices 80/10/10, per class."""
    num_classes = int(recipe["num_classes"])
    parts = split_per_class(train_lt, train_targets, TRAIN_FRACTIONS, seed=seed)
    parts.update(split_per_class(held_out, test_targets, EVAL_FRACTIONS, seed=seed))
    sources = {n: train_source for n in TRAIN_FRACTIONS} | {n: test_source for n in EVAL_FRACTIONS}
    counts = np.bincount(train_targets[train_lt], minlength=num_classes).tolist()
    return Splits(parts, sources, counts, recipe, fingerprint(recipe))


def reuse_or_make(splits_dir: str | None, recipe: dict, make) -> Splits:
    """The splits in ``splits_dir`` if given (their fingerprint must match), else ``make()``."""
    if splits_dir:
        if not Path(splits_dir).is_dir():
            raise JobError(f"--splits-dir {splits_dir} does not exist; write it with `engine make-splits` "
                           "(its artifacts/splits) or leave the option out")
        return Splits.read(Path(splits_dir), expected=fingerprint(recipe))
    return make()
