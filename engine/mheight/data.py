"""Model inputs for m-height regression: padded P, (n, k, m) features, symmetry.

h_m is unchanged by permuting rows or columns of P and by flipping their
signs (a coordinate permutation / sign change of the code). ``canonicalize``
picks one representative of that orbit; ``augment`` samples the orbit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.mheight.config import PAD
from engine.mheight.minors import FEATURE_VERSION as MINOR_FEATURE_VERSION
from engine.mheight.minors import STATS as MINOR_STATS  # min, mean, std of log2 |minor| per size
from engine.mheight.shards import LabelSet
from engine.run import JobError

MAX_M = 10  # one-hot width of m (the course grid has m <= 6; n <= 10 allows m <= 9)
MINOR_FEATURES = MINOR_STATS * PAD


def feature_dim(pad: int = PAD) -> int:
    return 4 + MAX_M + 2 * pad


def features(n: torch.Tensor, k: torch.Tensor, m: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """(N, F): scaled n, k, m, n-k plus one-hots of m, k and n-k."""
    r = n - k
    base = torch.stack([n, k, m, r], 1).float() / 10
    oh = lambda v, w: torch.nn.functional.one_hot(v.clamp(0, w - 1).long(), w).float()  # noqa: E731
    return torch.cat([base, oh(m, MAX_M), oh(k - 1, pad), oh(r - 1, pad)], 1)


def minor_features(labels: LabelSet) -> torch.Tensor:
    """(L, MINOR_FEATURES): statistics of log2 |det| of P's square submatrices, per size 1..PAD (version
    MINOR_FEATURE_VERSION: checkpoints record it, ``check_minor_features`` refuses a model trained on others).

    Every entry of a vertex codeword is a ratio of two such minors (Cramer), so
    their magnitudes say most of what the height depends on; a net given raw P
    would have to learn determinants. Computed once per code (its labels for
    every m share them) by ``minors.minor_stats``, the function the prediction-speed benchmark
    times; singular minors count as |det| = 0.5 (log2 = -1); sizes a code does not have are 0.
    """
    from engine.mheight.minors import minor_stats

    _, first, inverse = np.unique(labels.code, return_index=True, return_inverse=True)
    out = np.zeros((len(first), MINOR_FEATURES), dtype=np.float32)
    n_all, k_all = labels.n[first], labels.k[first]
    for n, k in sorted(set(zip(n_all.tolist(), k_all.tolist()))):
        rows = np.flatnonzero((n_all == n) & (k_all == k))
        stats = minor_stats(labels.P[first[rows]][:, :k, :n - k])
        out[rows, :stats.shape[1]] = stats / 10
    return torch.from_numpy(out[inverse.reshape(-1)])


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


@dataclass
class Batchable:
    """A labelled split on the device: inputs, targets and the (n, k, m) group of each sample."""

    P: torch.Tensor  # (N, pad, pad) float32, scaled
    n: torch.Tensor
    k: torch.Tensor
    m: torch.Tensor
    feats: torch.Tensor  # (N, F)
    y: torch.Tensor  # (N,) log2 h
    group: torch.Tensor  # (N,) index into groups
    groups: list[tuple[int, int, int]]
    feature_seconds: float = 0.0  # time spent computing minor features (part of the cost of a prediction)

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def from_labels(cls, labels: LabelSet, groups: list[tuple[int, int, int]], scale: float, canonical: bool,
                    device: torch.device, minors: bool = False) -> "Batchable":
        finite = labels.finite
        sel = labels.take(np.flatnonzero(finite))
        t0 = time.perf_counter()
        extra = minor_features(sel) if minors else torch.zeros(len(sel), 0)
        feature_seconds = time.perf_counter() - t0
        P = torch.as_tensor(sel.P, dtype=torch.float32) / scale
        if canonical:
            P = canonicalize(P)
        n, k, m = (torch.as_tensor(a, dtype=torch.long) for a in (sel.n, sel.k, sel.m))
        index = {g: i for i, g in enumerate(groups)}
        gid = torch.tensor([index.get(g, -1) for g in zip(sel.n.tolist(), sel.k.tolist(), sel.m.tolist())], dtype=torch.long)
        return cls(P.to(device), n.to(device), k.to(device), m.to(device), torch.cat([features(n, k, m), extra], 1).to(device),
                   torch.as_tensor(sel.log2h, dtype=torch.float32).to(device), gid.to(device), groups, feature_seconds)


def group_mse(pred: torch.Tensor, y: torch.Tensor, group: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-group MSE (G,), per-group count (G,)); NaN MSE for an empty group."""
    se = (pred.float() - y.float()) ** 2
    sums = torch.zeros(num_groups, device=y.device).index_add_(0, group, se)
    cnt = torch.zeros(num_groups, device=y.device).index_add_(0, group, torch.ones_like(se))
    return torch.where(cnt > 0, sums / cnt.clamp(min=1), torch.full_like(sums, float("nan"))), cnt


def group_key(g: tuple[int, int, int]) -> str:
    return f"n{g[0]}k{g[1]}m{g[2]}"


def mse_metrics(pred: torch.Tensor, data: Batchable, prefix: str) -> dict[str, float]:
    """Log2-MSE as the course grader scores it: the mean over (n, k, m) groups; plus each group."""
    mse, cnt = group_mse(pred, data.y, data.group, len(data.groups))
    out = {f"{prefix}/log2_mse": float(mse[cnt > 0].mean()), f"{prefix}/log2_mse_pooled": float(((pred - data.y) ** 2).mean())}
    for g, v, c in zip(data.groups, mse.tolist(), cnt.tolist()):
        if c > 0:
            out[f"{prefix}/log2_mse_{group_key(g)}"] = v
    return out
