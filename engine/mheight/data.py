"""Model inputs for m-height regression: one row per code (padded P, (n, k) features, minor
statistics) with its labels for every m; symmetry.

h_m is unchanged by permuting rows or columns of P and by flipping their
signs (a coordinate permutation / sign change of the code). ``canonicalize``
picks one representative of that orbit; ``augment`` samples the orbit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from engine.core.errors import JobError
from engine.fast.switch import CpuKernels
from engine.mheight.config import PAD
from engine.mheight.minors import FEATURE_VERSION as MINOR_FEATURE_VERSION
from engine.mheight.minors import (
    STATS as MINOR_STATS,  # min, mean, std of log2 |minor| per size
)
from engine.mheight.shards import LabelSet

MAX_M = 2 * PAD  # outputs per code, one per m = 0..MAX_M-1 (m < n <= k + (n-k) <= 2 * PAD)
MINOR_FEATURES = MINOR_STATS * PAD
MODEL_FORMAT = 2  # 1: one forward pass per (code, m) label, m an input; 2: one per code, one output per m


def feature_dim(pad: int = PAD) -> int:
    return 3 + 2 * pad


@lru_cache(maxsize=None)
def pair_features(n: int, k: int, pad: int = PAD) -> np.ndarray:
    """(F,) float32, read-only: scaled n, k, n-k plus one-hots of k and n-k. m is no input: a model
    has one output per m. The same for every code of an (n, k), so computed once per pair."""
    out = np.zeros(feature_dim(pad), dtype=np.float32)
    out[:3] = np.array([n, k, n - k]) / 10
    out[3 + min(max(k - 1, 0), pad - 1)] = 1
    out[3 + pad + min(max(n - k - 1, 0), pad - 1)] = 1
    out.flags.writeable = False
    return out


def by_pair(n: np.ndarray, k: np.ndarray) -> list[tuple[int, int, slice | np.ndarray]]:
    """[(n, k, rows)]: the codes of each (n, k). Data from shards comes in runs of one (n, k), and a
    slice of a run costs no gather; codes in any other order are gathered per pair."""
    if not len(n):
        return []
    cut = np.flatnonzero((n[1:] != n[:-1]) | (k[1:] != k[:-1])) + 1
    starts, ends = np.r_[0, cut], np.r_[cut, len(n)]
    if len(starts) <= 64:
        return [(int(n[a]), int(k[a]), slice(int(a), int(b))) for a, b in zip(starts, ends)]
    return [(nn, kk, np.flatnonzero((n == nn) & (k == kk))) for nn, kk in sorted(set(zip(n.tolist(), k.tolist())))]


def input_features(P: np.ndarray, n: np.ndarray, k: np.ndarray, minors: bool, kernels: CpuKernels = "auto") -> np.ndarray:
    """(N, F) float32 features of codes P (N, pad, pad): ``pair_features``, then with ``minors`` the
    statistics of log2 |det| of P's square submatrices per size 1..PAD (version MINOR_FEATURE_VERSION:
    checkpoints record it, ``check_minor_features`` refuses a model trained on others).

    Every entry of a vertex codeword is a ratio of two such minors (Cramer), so
    their magnitudes say most of what the height depends on; a net given raw P
    would have to learn determinants. ``engine.fast.minors.minor_stats`` computes them (in C unless
    ``kernels`` is "off"), the function the prediction-speed benchmark times; singular minors count
    as |det| = 0.5 (log2 = -1); sizes a code does not have are 0.
    """
    from engine.fast.minors import minor_stats

    F0 = feature_dim()
    out = np.zeros((len(P), F0 + (MINOR_FEATURES if minors else 0)), dtype=np.float32)
    for nn, kk, rows in by_pair(n, k):
        out[rows, :F0] = pair_features(nn, kk)
        if minors:
            width = MINOR_STATS * min(kk, nn - kk)
            if isinstance(rows, slice):  # views on both sides: the kernel reads and writes in place
                minor_stats(P[rows, :kk, :nn - kk], kernels, out=out[rows, F0:F0 + width], scale=0.1)
            else:
                out[rows, F0:F0 + width] = minor_stats(P[rows, :kk, :nn - kk], kernels, scale=0.1)
    return out


def check_model_format(state: dict, source: object) -> None:
    """Refuse a checkpoint of the per-label format: its nets take m as an input and give one output."""
    got = state.get("model_format", 1)
    if got != MODEL_FORMAT:
        raise JobError(f"{source} is an m-height model of format {got} (one forward pass per label); this engine's "
                       f"models predict every m of a code at once (format {MODEL_FORMAT}): retrain it with engine mheight train")


def check_minor_features(state: dict, source: object) -> None:
    """Refuse a checkpoint whose model read minor features other than the ones this engine computes."""
    if not state.get("minor_features"):
        return
    got = state.get("minor_feature_version", 1)  # checkpoints from before versioning read version 1
    if got != MINOR_FEATURE_VERSION:
        raise JobError(f"{source} was trained on minor features version {got}, this engine computes version "
                       f"{MINOR_FEATURE_VERSION}: retrain it (engine mheight train --minor-features ...)")


def canonicalize(P: torch.Tensor) -> torch.Tensor:
    """One representative of P's signed-permutation orbit (P zero-padded, (N, pad, pad)).

    Rows, then columns, sorted by decreasing L1 norm (sign- and order-free);
    then rows flipped so the first column is >= 0 and columns flipped so the
    first row is >= 0. Padding (zero rows/columns) sorts last and stays put.
    """
    rows = P.abs().sum(2).argsort(dim=1, descending=True, stable=True)
    P = P.gather(1, rows[:, :, None].expand_as(P))
    cols = P.abs().sum(1).argsort(dim=1, descending=True, stable=True)
    P = P.gather(2, cols[:, None, :].expand_as(P))
    row_sign = torch.where(P[:, :, :1] < 0, -1.0, 1.0)
    P = P * row_sign
    col_sign = torch.where(P[:, :1, :] < 0, -1.0, 1.0)
    return P * col_sign


def augment(P: torch.Tensor, k: torch.Tensor, r: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random signed permutation of rows and columns inside each code's k x (n-k) block."""
    N, pad, _ = P.shape
    idx = torch.arange(pad, device=P.device)
    # random keys inside the block, large keys for padding: argsort permutes the block only
    rk = torch.rand(N, pad, generator=gen).to(P.device) + (idx[None] >= k[:, None]) * 2.0
    ck = torch.rand(N, pad, generator=gen).to(P.device) + (idx[None] >= r[:, None]) * 2.0
    P = P.gather(1, rk.argsort(1)[:, :, None].expand_as(P))
    P = P.gather(2, ck.argsort(1)[:, None, :].expand_as(P))
    rs = torch.randint(0, 2, (N, pad, 1), generator=gen).to(P.device) * 2 - 1
    cs = torch.randint(0, 2, (N, 1, pad), generator=gen).to(P.device) * 2 - 1
    return P * rs * cs


def model_inputs(P: np.ndarray, n: np.ndarray, k: np.ndarray, scale: float, canonical: bool, minors: bool,
                 p_input: bool, device: torch.device, kernels: CpuKernels = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """What a model reads about codes P (N, pad, pad) (raw, zero-padded): P scaled (and canonicalised),
    and the features. The whole cost of turning a code into a model input, so evaluate times it.
    Without ``p_input`` the model reads no entry of P: it is neither scaled nor canonicalised.
    ``kernels``: --cpu-kernels, for the minor features (computed on the CPU whatever the device)."""
    Pt = torch.from_numpy(np.ascontiguousarray(P, dtype=np.float32))
    if p_input:
        Pt = Pt / scale
        if canonical:
            Pt = canonicalize(Pt)
    return Pt.to(device), torch.from_numpy(input_features(P, n, k, minors, kernels)).to(device)


@dataclass
class CodeSet:
    """A labelled split on the device, one row per code: inputs, and its labels for every m.

    A code's labels share its inputs, so models run once per code with one output per m
    (MAX_M outputs); ``group`` is -1 where a code has no finite label for that m (infinite
    heights, or m outside its grid), and those outputs are left out of losses and scores.
    """

    P: torch.Tensor  # (N, pad, pad) float32, scaled (unscaled when the model reads no P)
    n: torch.Tensor  # (N,) long
    k: torch.Tensor
    feats: torch.Tensor  # (N, F)
    y: torch.Tensor  # (N, MAX_M) log2 h, 0 where group is -1
    group: torch.Tensor  # (N, MAX_M) index into groups, -1: no finite label
    groups: list[tuple[int, int, int]]
    input_seconds: float = 0.0  # time model_inputs took: part of the cost of a prediction

    def __len__(self) -> int:
        return len(self.n)

    @property
    def labels(self) -> int:
        return int((self.group >= 0).sum())

    @classmethod
    def from_labels(cls, labels: LabelSet, groups: list[tuple[int, int, int]], scale: float, canonical: bool,
                    device: torch.device, minors: bool = False, p_input: bool = True,
                    kernels: CpuKernels = "auto") -> "CodeSet":
        """The codes of ``labels`` that have at least one finite label."""
        return cls.from_codes(codes_of(labels), groups, scale, canonical, device, minors, p_input, kernels)

    @classmethod
    def from_codes(cls, codes: "Codes", groups: list[tuple[int, int, int]], scale: float, canonical: bool,
                   device: torch.device, minors: bool = False, p_input: bool = True,
                   kernels: CpuKernels = "auto") -> "CodeSet":
        t0 = time.perf_counter()
        P, feats = model_inputs(codes.P, codes.n, codes.k, scale, canonical, minors, p_input, device, kernels)
        seconds = time.perf_counter() - t0
        index = {g: i for i, g in enumerate(groups)}
        gid = np.full(codes.log2h.shape, -1, dtype=np.int64)
        for (n, k, m), i in index.items():
            gid[(codes.n == n) & (codes.k == k), m] = i
        gid[~np.isfinite(codes.log2h)] = -1
        y = np.where(gid >= 0, codes.log2h, 0.0).astype(np.float32)
        as_t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        return cls(P, as_t(codes.n), as_t(codes.k), feats, as_t(y), as_t(gid), groups, seconds)

    def flat(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction, target, group) of every finite label, code by code, m by m."""
        mask = self.group >= 0
        return pred[mask], self.y[mask], self.group[mask]


@dataclass
class Codes:
    n: np.ndarray  # (N,) int64
    k: np.ndarray
    P: np.ndarray  # (N, pad, pad) float32
    log2h: np.ndarray  # (N, MAX_M) float64: inf where infinite, NaN where not labelled


def codes_of(labels: LabelSet) -> Codes:
    """Labels regrouped by code, keeping codes with at least one finite label. Every m fits:
    ``load_labels`` refuses codes larger than pad x pad, so m < n <= 2 * pad = MAX_M."""
    _, first, inverse = np.unique(labels.code, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    log2h = np.full((len(first), MAX_M), np.nan)
    log2h[inverse, labels.m] = labels.log2h
    has = np.zeros(len(first), dtype=bool)
    has[inverse[np.isfinite(labels.log2h)]] = True
    f = first[has]
    return Codes(labels.n[f], labels.k[f], labels.P[f], log2h[has])


def group_mse(pred: torch.Tensor, y: torch.Tensor, group: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-group MSE (G,), per-group count (G,)); NaN MSE for an empty group."""
    se = (pred.float() - y.float()) ** 2
    sums = torch.zeros(num_groups, device=y.device).index_add_(0, group, se)
    cnt = torch.zeros(num_groups, device=y.device).index_add_(0, group, torch.ones_like(se))
    return torch.where(cnt > 0, sums / cnt.clamp(min=1), torch.full_like(sums, float("nan"))), cnt


def group_key(g: tuple[int, int, int]) -> str:
    return f"n{g[0]}k{g[1]}m{g[2]}"


def mse_metrics(pred: torch.Tensor, data: CodeSet, prefix: str) -> dict[str, float]:
    """Log2-MSE as the course grader scores it: the mean over (n, k, m) groups; plus each group."""
    p, y, g = data.flat(pred)
    mse, cnt = group_mse(p, y, g, len(data.groups))
    out = {f"{prefix}/log2_mse": float(mse[cnt > 0].mean()), f"{prefix}/log2_mse_pooled": float(((p - y) ** 2).mean())}
    for grp, v, c in zip(data.groups, mse.tolist(), cnt.tolist()):
        if c > 0:
            out[f"{prefix}/log2_mse_{group_key(grp)}"] = v
    return out
