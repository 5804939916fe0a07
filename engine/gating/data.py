"""Frozen experts' logits for the gating stage: loading and validation.

Two layouts per expert and split:

- ``DIR/<expert>/<split>_logits.npz`` (``engine recompute-logits``): arrays
  ``logits`` (N, C) float, ``targets`` (N,) int, ``predictions`` (N,);
- ``DIR/<expert>/<split>_logits.pt`` (the original layout): one [N, C] tensor,
  labels from ``LABELS/<split>_targets.npy`` (or ``.json``, a list of ints).

``--logits-dir`` names DIR itself, or a ``recompute-logits`` run (its
directory, or its run id under the workspace's ``runs/``), whose
``artifacts/logits`` is DIR.

Every check ends in a one-line :class:`JobError` naming the file and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.common.logit_files import MANIFEST, read_manifest
from engine.core.errors import JobError
from engine.core.rundir import RUNS_DIRNAME, RunDir, is_run_id, resolve_workspace

LOGIT_SUFFIXES = (".npz", ".pt")
_FINITE_CHUNK = 1 << 22  # elements per NaN/Inf check, so a 1.4 GB array needs no 1.4 GB mask


@dataclass
class SplitLogits:
    """One split seen by E experts: per-expert float32 (N, C) arrays and shared targets."""

    name: str
    experts: list[str]
    logits: list[np.ndarray]
    targets: np.ndarray  # int64 (N,)

    @property
    def num_samples(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return int(self.logits[0].shape[1])


def logit_file(logits_dir: Path, expert: str, split: str) -> Path | None:
    for suffix in LOGIT_SUFFIXES:
        path = logits_dir / expert / f"{split}_logits{suffix}"
        if path.is_file():
            return path
    return None


def available_splits(logits_dir: Path, expert: str) -> list[str]:
    folder = logits_dir / expert
    return sorted({p.name.rsplit("_logits", 1)[0] for s in LOGIT_SUFFIXES for p in folder.glob(f"*_logits{s}")})


def has_split(logits_dir: str | Path, experts: list[str], split: str) -> bool:
    return all(logit_file(Path(logits_dir), e, split) is not None for e in experts)


def check_logits_dir(logits_dir: str | None, experts: list[str], runs_roots: list[Path] | None = None) -> Path:
    """The folder holding ``<expert>/<split>_logits.*`` for every expert.

    ``logits_dir`` is that folder, a recompute-logits run directory (its
    ``artifacts/logits`` is used), or such a run's id, looked up in
    ``runs_roots`` (default: the workspace's ``runs/``, from
    ``$MOE_TUI_WORKSPACE`` or the cwd, as a queued job has them).
    """
    if not logits_dir:
        raise JobError("no logits folder given; pass --logits-dir DIR (holding DIR/<expert>/<split>_logits.npz), "
                       "a recompute-logits run directory or id, or a data-set --preset")
    root = Path(logits_dir).expanduser()
    if not root.is_dir() and is_run_id(str(logits_dir)):
        roots = runs_roots if runs_roots is not None else [resolve_workspace() / RUNS_DIRNAME]
        found = next((r / str(logits_dir) for r in roots if (r / str(logits_dir)).is_dir()), None)
        if found is None:
            raise JobError(f"--logits-dir {logits_dir}: no such folder, nor a run {logits_dir} in "
                           f"{', '.join(str(r) for r in roots)}; pass the run's directory or set --workspace")
        root = found
    if not root.is_dir():
        raise JobError(f"logits folder {root} does not exist; run `engine recompute-logits` first or fix --logits-dir")
    if not any((root / e).is_dir() for e in experts):
        nested = root / "artifacts" / "logits"
        if nested.is_dir():
            root = nested
        elif (run := RunDir(root).read_run()) is not None:
            state = (RunDir(root).read_status() or {}).get("state", "not started")
            raise JobError(f"--logits-dir {root} is a {run.get('kind', '?')} run ({state}) with no artifacts/logits; "
                           "pass a recompute-logits run that has succeeded, or the logits folder itself")
        else:
            subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise JobError(f"--logits-dir {root} holds neither DIR/<expert>/<split>_logits.npz for experts "
                           f"{', '.join(experts)} (sub-folders: {', '.join(subdirs) or 'none'}) nor a recompute-logits "
                           "run's artifacts/logits; point it at one of the two")
    missing = [e for e in experts if not (root / e).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise JobError(f"expert {', '.join(missing)} not found: no folder {root / missing[0]}; "
                       f"experts in {root}: {', '.join(found) or 'none'}")
    return root


def _read_labels(labels_dir: Path, split: str) -> np.ndarray:
    for name in (f"{split}_targets.npy", f"{split}_targets.json"):
        path = labels_dir / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".npy":
                arr = np.load(path, allow_pickle=False)
            else:
                arr = np.asarray(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise JobError(f"labels file {path} cannot be read ({str(e).splitlines()[0]}); rewrite it as an int array") from None
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise JobError(f"labels file {path} must hold a 1-D integer array, found shape {arr.shape} {arr.dtype}")
        return arr.astype(np.int64)
    raise JobError(f"no labels for split '{split}' in {labels_dir}; expected {split}_targets.npy or {split}_targets.json")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("logits", "targets") if k not in f.files]
            if missing:
                raise JobError(f"{path} lacks array {', '.join(missing)} (has {', '.join(f.files)}); "
                               "recompute it with `engine recompute-logits`")
            return f["logits"], f["targets"]
    except JobError:
        raise
    except Exception as e:  # zipfile, numpy and pickle refusals all mean "not a logits file"
        raise JobError(f"{path} cannot be read as an npz logits file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       "recompute it") from None


def _read_pt(path: Path) -> np.ndarray:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JobError(f"{path} cannot be read as a logits tensor ({first}); it is truncated or not a logits file") from None
    if isinstance(obj, dict) and "logits" in obj:
        obj = obj["logits"]
    if not isinstance(obj, torch.Tensor):
        raise JobError(f"{path} holds a {type(obj).__name__}, not an [N, C] logits tensor")
    return obj.detach().float().numpy()


def _check_finite(arr: np.ndarray, path: Path) -> None:
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _FINITE_CHUNK):
        part = flat[start : start + _FINITE_CHUNK]
        bad = ~np.isfinite(part)
        if bad.any():
            first = (start + int(np.argmax(bad))) // arr.shape[1]
            raise JobError(f"{path} holds NaN or Inf logits (first in row {first}); the expert diverged or the file is "
                           "damaged: retrain or recompute it")


def load_split(logits_dir: Path, experts: list[str], split: str, labels_dir: str | Path | None = None,
               num_classes: int | None = None, dataset: str | None = None) -> SplitLogits:
    """Every expert's logits on ``split``, validated against each other and the labels."""
    labels = _read_labels(Path(labels_dir).expanduser(), split) if labels_dir else None
    logits: list[np.ndarray] = []
    targets: np.ndarray | None = None
    first_path: Path | None = None
    for expert in experts:
        path = logit_file(logits_dir, expert, split)
        if path is None:
            have = available_splits(logits_dir, expert)
            raise JobError(f"no logits for split '{split}' of expert '{expert}': expected {logits_dir / expert}/"
                           f"{split}_logits.npz (or .pt); splits there: {', '.join(have) or 'none'}")
        if path.suffix == ".npz":
            arr, tgt = _read_npz(path)
            tgt = np.asarray(tgt)
            if labels is not None and (tgt.shape != labels.shape or not np.array_equal(tgt, labels)):
                raise JobError(f"targets in {path} disagree with the labels in {labels_dir}/{split}_targets.*; "
                               "one of them comes from another split or order")
        else:
            arr = _read_pt(path)
            if labels is None:
                raise JobError(f"{path} holds logits without targets; pass --labels-dir DIR with {split}_targets.npy")
            tgt = labels
        if arr.ndim != 2:
            raise JobError(f"{path} holds logits of shape {tuple(arr.shape)}; expected (N, C)")
        if not np.issubdtype(tgt.dtype, np.integer):
            raise JobError(f"targets in {path} are {tgt.dtype}, not integers; recompute the file")
        if tgt.ndim != 1 or len(tgt) != len(arr):
            raise JobError(f"{path}: {len(arr)} logit rows but {tgt.shape[0] if tgt.ndim else 0} targets; recompute it")
        arr = np.ascontiguousarray(arr, dtype=np.float32)  # no copy when already float32 (the npz format)
        _check_finite(arr, path)
        if logits:
            ref = logits[0]
            if arr.shape[0] != ref.shape[0]:
                raise JobError(f"experts disagree on split '{split}': {experts[0]} has {ref.shape[0]} samples, "
                               f"{expert} has {arr.shape[0]}; recompute their logits on the same split")
            if arr.shape[1] != ref.shape[1]:
                raise JobError(f"experts disagree on the classes of split '{split}': {experts[0]} has {ref.shape[1]}, "
                               f"{expert} has {arr.shape[1]}")
            if not np.array_equal(tgt, targets):
                n_diff = int((tgt != targets).sum())
                raise JobError(f"experts disagree on the targets of split '{split}': {experts[0]} ({first_path}) and "
                               f"{expert} ({path}) differ on {n_diff} of {len(tgt)} samples; recompute both on the same split order")
        else:
            targets, first_path = tgt.astype(np.int64), path
        logits.append(arr)
    assert targets is not None
    c = logits[0].shape[1]
    if num_classes is not None and c != num_classes:
        what = f"preset {dataset}" if dataset else "--num-classes"
        raise JobError(f"logits in {logits_dir} have {c} classes but {what} expects {num_classes}; "
                       "point --logits-dir at that data set's logits or drop the preset")
    if len(targets) == 0:
        raise JobError(f"split '{split}' is empty in {first_path}")
    if targets.min() < 0 or targets.max() >= c:
        raise JobError(f"targets of split '{split}' ({first_path}) run from {targets.min()} to {targets.max()}, "
                       f"outside the {c} classes of the logits")
    return SplitLogits(split, list(experts), logits, targets)


def _json_list(path: Path, keys: tuple[str, ...], what: str) -> list:
    """A list of numbers: the whole file, or the first of ``keys`` it holds
    (so the files engine make-splits writes are read as they are)."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except OSError as e:
        raise JobError(f"cannot read {what} file {path}: {e.strerror}") from None
    except ValueError as e:
        raise JobError(f"{what} file {path} is not valid JSON: {e}") from None
    if isinstance(data, dict):
        data = next((data[k] for k in keys if k in data), None)
    if not isinstance(data, list) or not all(isinstance(v, (int, float)) for v in data):
        raise JobError(f"{what} file {path} must hold a list of numbers or {{\"{keys[0]}\": [...]}}")
    return data


def load_class_weights(path: str | None, num_classes: int) -> tuple[np.ndarray, str]:
    """Per-class loss weights normalised to sum to C (so 1 means 'as uniform'), and where they came from."""
    if not path:
        return np.ones(num_classes), "uniform class weights (no --class-weights given)"
    w = np.asarray(_json_list(Path(path), ("class_weights", "weights"), "class weights"), dtype=np.float64)
    if len(w) != num_classes:
        raise JobError(f"class weights file {path} has {len(w)} weights but the logits have {num_classes} classes")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise JobError(f"class weights in {path} must be finite, non-negative and not all zero")
    return w * (num_classes / w.sum()), f"class weights from {path} (normalised to sum to {num_classes})"


def load_class_counts(path: str | None, logits_dir: Path, experts: list[str], train_targets: np.ndarray,
                      num_classes: int, train_share: float) -> tuple[np.ndarray, str]:
    """Train-LT class counts, which define the head/tail groups, and where they came from.

    In order: ``--class-counts``; the train split the experts were trained on, as the
    recompute-logits manifest records it; else estimated from the gating split, which is
    only a tenth of train-LT: a tail class with no gating image reads as 0 images and
    a head class with few reads low, so the boundary moves (64 head classes instead of 69
    on CIFAR-100-LT).
    """
    if path:
        return read_class_counts(path, num_classes)
    counts, note = manifest_class_counts(logits_dir, experts, num_classes)
    if counts is not None:
        return counts, note
    estimate = f"class counts estimated as {len(train_targets)} train-split samples / {train_share}"
    if note.startswith("manifest version"):
        print(f"warning: {logits_dir / MANIFEST} is from an older recompute-logits ({note}) and "
              f"records no train split: {estimate}; run recompute-logits again or pass --class-counts", flush=True)
        return _estimate(train_targets, num_classes, train_share), f"{estimate} ({note})"
    return _estimate(train_targets, num_classes, train_share), f"{estimate} ({note}; pass --class-counts for the exact ones)"


def read_class_counts(path: str | Path, num_classes: int) -> tuple[np.ndarray, str]:
    """Train-LT counts from a JSON file: a list, ``{"class_counts": [...]}`` or make-splits'
    ``class_counts.json`` (``{"train_lt": [...], ...}``), and where they came from."""
    counts = np.asarray(_json_list(Path(path), ("class_counts", "train_lt"), "class counts"), dtype=np.int64)
    if len(counts) != num_classes:
        raise JobError(f"class counts file {path} has {len(counts)} classes but the logits have {num_classes}")
    return counts, f"class counts from {path}"


def manifest_class_counts(logits_dir: Path, experts: list[str], num_classes: int) -> tuple[np.ndarray | None, str]:
    """The train-LT counts of the split the experts were trained on, as the recompute-logits manifest
    (version 2) records them, and where they came from; ``(None, why)`` when the folder has no
    manifest or one that records no train split (version 1)."""
    manifest = read_manifest(logits_dir)
    if manifest is None:
        return None, f"no {MANIFEST} in {logits_dir}"
    recorded = {e: manifest.experts[e].train_split for e in experts if e in manifest.experts}
    if not recorded or any(r is None for r in recorded.values()):
        return None, f"manifest version {manifest.version}"
    fingerprints = {r.fingerprint for r in recorded.values()}
    if len(fingerprints) > 1:
        raise JobError(f"experts {', '.join(recorded)} were trained on different splits (fingerprints "
                       f"{', '.join(sorted(fingerprints))} in {logits_dir / MANIFEST}); pass --class-counts")
    train_split = next(iter(recorded.values()))
    if len(train_split.class_counts) != num_classes:
        raise JobError(f"{logits_dir / MANIFEST} records {len(train_split.class_counts)} class counts but the logits "
                       f"have {num_classes} classes; run recompute-logits again")
    source = train_split.file or f"splits {train_split.fingerprint}"
    return np.asarray(train_split.class_counts, dtype=np.int64), f"class counts of the experts' train split ({source})"


def _estimate(train_targets: np.ndarray, num_classes: int, train_share: float) -> np.ndarray:
    return np.round(np.bincount(train_targets, minlength=num_classes) / train_share).astype(np.int64)
