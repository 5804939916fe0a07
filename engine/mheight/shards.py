"""m-height data on disk: .npz shards plus a manifest, safe to read.

    <data dir>/                 (a generate/import run's artifacts/shards/)
        manifest.json           grid [(n, k, [m...])], how P was drawn, shard list, complete flag
        n9_k4_00000.npz         P (N, k, n-k) float64, m (M,), height (N, M) float64 (inf kept),
                                infinite (N, M) bool, n, k

Shards are written atomically and read with ``allow_pickle=False``: a shard
holds numbers only, never code. Numpy-only (no torch).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.core.errors import JobError
from engine.core.rundir import ARTIFACTS, atomic_write, atomic_write_json, read_json

FORMAT = "moe-tui/mheight-shards"
VERSION = 1
MANIFEST = "manifest.json"
SHARDS_DIRNAME = "shards"


def shard_name(n: int, k: int, index: int, m: int | None = None) -> str:
    """n9_k4_00000.npz (every m of the grid), or n9_k4_m2_00000.npz (one m: imported data)."""
    return f"n{n}_k{k}_{index:05d}.npz" if m is None else f"n{n}_k{k}_m{m}_{index:05d}.npz"


def grid_groups(n_values, k_values, m_min: int, m_max: int | None) -> list[tuple[int, int, list[int]]]:
    """[(n, k, [m...])] for every n > k; m from m_min to m_max (default n-k)."""
    groups = []
    for n in n_values:
        for k in k_values:
            if not 1 <= k < n:
                continue
            top = n - k if m_max is None else min(m_max, n - 1)
            ms = list(range(m_min, top + 1))
            if ms:
                groups.append((n, k, ms))
    return groups


def data_dir(path: str | Path) -> Path:
    """The shards folder behind a path: the folder itself, or a generate/import run directory."""
    p = Path(path).expanduser()
    for cand in (p, p / ARTIFACTS / SHARDS_DIRNAME, p / SHARDS_DIRNAME):
        if (cand / MANIFEST).is_file():
            return cand
    if not p.exists():
        raise JobError(f"data {p} does not exist; give a generate/import run directory or its artifacts/shards folder")
    raise JobError(f"no m-height {MANIFEST} in {p} (nor in {p / ARTIFACTS / SHARDS_DIRNAME}); "
                   "give a generate/import run directory or its shards folder")


def read_manifest(directory: Path) -> dict:
    man = read_json(Path(directory) / MANIFEST)
    if not man or man.get("format") != FORMAT:
        raise JobError(f"{Path(directory) / MANIFEST} is not an m-height shard manifest")
    if man.get("version", 0) > VERSION:
        raise JobError(f"{directory} was written by a newer moe-tui (shard format v{man['version']}); upgrade")
    return man


def write_manifest(directory: Path, man: dict) -> None:
    atomic_write_json(Path(directory) / MANIFEST, {"format": FORMAT, "version": VERSION, **man})


def write_shard(path: Path, n: int, k: int, P: np.ndarray, ms: list[int], heights: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, n=np.int64(n), k=np.int64(k), P=P.astype(np.float64), m=np.asarray(ms, dtype=np.int64),
             height=heights.astype(np.float64), infinite=np.isinf(heights))
    atomic_write(path, buf.getvalue())


@dataclass
class Shard:
    n: int
    k: int
    P: np.ndarray  # (N, k, n-k)
    m: np.ndarray  # (M,)
    height: np.ndarray  # (N, M), inf where infinite

    @property
    def labels(self) -> int:
        return self.height.size


def read_shard(path: Path) -> Shard:
    try:
        with np.load(path, allow_pickle=False) as z:
            n, k = int(z["n"]), int(z["k"])
            sh = Shard(n, k, z["P"], z["m"], z["height"])
    except FileNotFoundError:
        raise JobError(f"shard {path} listed in the manifest is missing; re-run the generator with --resume-from") from None
    except (ValueError, KeyError, OSError, EOFError) as e:
        raise JobError(f"shard {path} is damaged or not an m-height shard ({type(e).__name__}); delete it and resume") from None
    N = sh.P.shape[0]
    if sh.P.shape != (N, k, n - k) or sh.height.shape != (N, len(sh.m)):
        raise JobError(f"shard {path} is inconsistent: P {sh.P.shape}, height {sh.height.shape} for n={n}, k={k}")
    return sh


def check_same_grid(have: dict, want: dict, where: Path) -> None:
    """Shards of another grid or distribution must not be mixed in."""
    for key in ("grid", "source"):
        if have.get(key) != want.get(key):
            raise JobError(f"shards in {where} come from a different {key} ({json.dumps(have.get(key))}) than asked "
                           f"({json.dumps(want.get(key))}); resume only a run with the same grid and settings")


@dataclass
class LabelSet:
    """One row per (code, m) label, flattened across shards."""

    n: np.ndarray  # (L,) int64
    k: np.ndarray
    m: np.ndarray
    P: np.ndarray  # (L, pad, pad) float32, zero-padded
    log2h: np.ndarray  # (L,) float64, inf where infinite
    code: np.ndarray  # (L,) int64: labels of one code share it (splits keep codes whole)

    def __len__(self) -> int:
        return len(self.n)

    @property
    def finite(self) -> np.ndarray:
        return np.isfinite(self.log2h)

    def take(self, idx: np.ndarray) -> "LabelSet":
        return LabelSet(self.n[idx], self.k[idx], self.m[idx], self.P[idx], self.log2h[idx], self.code[idx])

    def groups(self) -> list[tuple[int, int, int]]:
        return sorted(set(zip(self.n.tolist(), self.k.tolist(), self.m.tolist())))

    def finite_groups(self) -> list[tuple[int, int, int]]:
        """The (n, k, m) groups that have at least one finite label (the ones a model is scored on)."""
        f = self.finite
        return sorted(set(zip(self.n[f].tolist(), self.k[f].tolist(), self.m[f].tolist())))


def load_labels(path: str | Path, pad: int) -> tuple[LabelSet, dict]:
    """Every shard of a data dir as labels, P padded to pad x pad; the manifest beside it."""
    directory = data_dir(path)
    man = read_manifest(directory)
    grid = {(g[0], g[1]): list(g[2]) for g in man["grid"]}
    parts = []
    code_base = 0
    for entry in man.get("shards", []):
        sh = read_shard(directory / entry["file"])
        if (sh.n, sh.k) not in grid or not set(sh.m.tolist()) <= set(grid[(sh.n, sh.k)]):
            raise JobError(f"shard {entry['file']} holds n={sh.n}, k={sh.k}, m={sh.m.tolist()}, which is not in the grid "
                           f"of {directory / MANIFEST}; it comes from a different data set")
        if sh.k > pad or sh.n - sh.k > pad:
            raise JobError(f"shard {entry['file']} has P of {sh.k} x {sh.n - sh.k}, larger than the models' {pad} x {pad} input")
        N, M = sh.height.shape
        Pp = np.zeros((N, pad, pad), dtype=np.float32)
        Pp[:, :sh.k, :sh.n - sh.k] = sh.P
        with np.errstate(divide="ignore"):
            lg = np.log2(sh.height)
        parts.append(LabelSet(np.full(N * M, sh.n), np.full(N * M, sh.k), np.tile(sh.m, N),
                              np.repeat(Pp, M, axis=0), lg.reshape(-1), np.repeat(np.arange(N) + code_base, M)))
        code_base += N
    if not parts:
        raise JobError(f"{directory} holds no shards yet; wait for the generator to finish or resume it")
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    labels = LabelSet(cat("n"), cat("k"), cat("m"), cat("P"), cat("log2h"), cat("code"))
    return labels, man


def infinite_fraction(height: np.ndarray) -> float:
    return float(np.isinf(height).mean()) if height.size else math.nan
