"""Exported logits on disk: writing them atomically and checking them before the gating stage.

    logits/
        manifest.json                 experts, splits, shapes, sha256, accuracy, source checkpoints,
                                      and the train-LT split each expert was trained on (version 2)
        <expert>/<split>_logits.npz   logits (N, C) float32, targets (N,), predictions (N,)
        <expert>/<split>_logits.pt    the logits tensor [N, C], the layout the original gating scripts read
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.core.errors import JobError
from engine.core.rundir import atomic_write, read_json

MANIFEST = "manifest.json"
# 2: each expert's entry records its train split (``train_split``), so the gating stage takes the
# class counts that define head and tail from the split the experts were trained on.
MANIFEST_VERSION = 2


class TrainSplit(BaseModel):
    """The train-LT split an expert was trained on: its identity and its class counts."""

    model_config = ConfigDict(extra="allow")

    fingerprint: str  # of the split index files (engine.longtail.data.splits)
    class_counts: list[int] = Field(min_length=2)  # train-LT images per class (expert + gating splits)
    file: str | None = None  # the class_counts.json these came from, where one was on disk


class ManifestExpert(BaseModel):
    model_config = ConfigDict(extra="allow")

    splits: dict[str, dict]
    train_split: TrainSplit | None = None  # absent in version 1


class LogitsManifest(BaseModel):
    """What manifest.json must hold for the gating stage to trust it (other fields pass through)."""

    model_config = ConfigDict(extra="allow")

    version: int = 1  # version 1 wrote no version
    num_classes: int = Field(ge=2)
    experts: dict[str, ManifestExpert]


def read_manifest(folder: Path) -> LogitsManifest | None:
    """``folder``'s manifest.json, validated; None when there is none (a folder not written by recompute-logits)."""
    path = Path(folder) / MANIFEST
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise JobError(f"{path} cannot be read ({e}); run `engine recompute-logits` again") from None
    if data is None:
        return None
    try:
        manifest = LogitsManifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "top level"
        raise JobError(f"{path}: {where}: {err['msg']}; run `engine recompute-logits` again") from None
    if manifest.version > MANIFEST_VERSION:
        raise JobError(f"{path} is version {manifest.version}, newer than this engine reads ({MANIFEST_VERSION}); "
                       "update moe-tui")
    return manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_split_logits(folder: Path, split: str, logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Write ``<split>_logits.npz`` and ``.pt``; return their manifest entry."""
    folder.mkdir(parents=True, exist_ok=True)
    z = logits.float().cpu().numpy().astype(np.float32)
    y = targets.cpu().numpy().astype(np.int64)
    pred = z.argmax(1).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, logits=z, targets=y, predictions=pred)
    npz = folder / f"{split}_logits.npz"
    atomic_write(npz, buf.getvalue())
    buf = io.BytesIO()
    torch.save(torch.from_numpy(z), buf)
    pt = folder / f"{split}_logits.pt"
    atomic_write(pt, buf.getvalue())
    return {"file": npz.name, "pt": pt.name, "shape": list(z.shape), "sha256": sha256_file(npz),
            "pt_sha256": sha256_file(pt), "accuracy": float((pred == y).mean()) if len(y) else None}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def logits_folder(path: str) -> Path:
    p = Path(path).expanduser()
    for cand in (p, p / "artifacts" / "logits"):
        if (cand / MANIFEST).is_file():
            return cand
    raise JobError(f"{path} holds no {MANIFEST} (nor artifacts/logits/{MANIFEST}); pass a recompute-logits run directory")


def verify(folder: Path) -> list[Check]:
    """Every check on an exported logits folder, one result per check."""
    manifest = read_json(folder / MANIFEST)
    experts: dict = manifest["experts"]
    num_classes = manifest["num_classes"]
    problems: dict[str, list[str]] = {k: [] for k in ("files", "shapes", "argmax", "finite", "accuracy", "targets", "pt")}
    targets_by_split: dict[str, list[tuple[str, np.ndarray]]] = {}
    loaded = 0
    for name, exp in experts.items():
        for split, entry in exp["splits"].items():
            where = f"{name}/{split}"
            path = folder / name / entry["file"]
            if not path.is_file():
                problems["files"].append(f"{where}: {entry['file']} missing")
                continue
            if sha256_file(path) != entry["sha256"]:
                problems["files"].append(f"{where}: sha256 differs from the manifest (file changed)")
            try:
                with np.load(path, allow_pickle=False) as f:
                    z, y, pred = f["logits"], f["targets"], f["predictions"]
            except (OSError, ValueError, KeyError) as e:
                problems["files"].append(f"{where}: unreadable ({e})")
                continue
            loaded += 1
            n = len(y)
            if z.ndim != 2 or z.shape != (n, num_classes) or pred.shape != (n,) or z.dtype != np.float32:
                problems["shapes"].append(f"{where}: logits {z.shape} {z.dtype}, targets ({n},), predictions "
                                          f"{pred.shape}; expected ({n}, {num_classes}) float32")
                continue
            finite = np.isfinite(z).all(axis=1)
            if not finite.all():
                problems["finite"].append(f"{where}: {int((~finite).sum())} rows with NaN/Inf")
            diff = int((pred != z.argmax(1)).sum())
            if diff:
                problems["argmax"].append(f"{where}: {diff} predictions differ from argmax(logits)")
            acc = float((pred == y).mean()) if n else 0.0
            if acc <= 1.0 / num_classes:
                problems["accuracy"].append(f"{where}: accuracy {acc:.3f} not above chance {1 / num_classes:.3f}")
            targets_by_split.setdefault(split, []).append((name, y))
            pt = folder / name / entry["pt"]
            if not pt.is_file():
                problems["pt"].append(f"{where}: {entry['pt']} missing")
            else:
                t = torch.load(pt, map_location="cpu", weights_only=True)
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != z.shape or not np.array_equal(t.numpy(), z, equal_nan=True):
                    problems["pt"].append(f"{where}: {entry['pt']} does not hold the same [N, C] logits")
    for split, ys in targets_by_split.items():
        ref_name, ref = ys[0]
        for name, y in ys[1:]:
            if y.shape != ref.shape or not np.array_equal(y, ref):
                problems["targets"].append(f"{split}: {name} has other targets than {ref_name}")
    files = sum(len(e["splits"]) for e in experts.values())
    summary = {
        "files": f"{files} files of {len(experts)} experts present, sha256 as in the manifest",
        "shapes": f"logits (N, {num_classes}) float32, targets and predictions (N,)",
        "argmax": "predictions equal argmax(logits)",
        "finite": "no NaN or Inf",
        "accuracy": f"every accuracy above chance ({1 / num_classes:.3f})",
        "targets": f"identical targets per split across experts ({', '.join(sorted(targets_by_split))})",
        "pt": "<split>_logits.pt hold the same [N, C] logits",
    }
    checks = []
    for key, issues in problems.items():
        if issues:
            more = f" (+{len(issues) - 3} more)" if len(issues) > 3 else ""
            checks.append(Check(key, False, "; ".join(issues[:3]) + more))
        else:
            checks.append(Check(key, loaded > 0 or key == "files", summary[key]))
    return checks
