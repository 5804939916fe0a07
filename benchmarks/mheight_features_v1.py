"""Version 1 of the m-height minor features, kept as the reference the `mheight_fast` benchmark compares
version 2 (``engine/mheight/minors.py``) with; no engine path uses it.

Version 1: min, 10th percentile, median, max, mean of exact log2 |det| per size, every minor from a
Laplace pass over the maximal minors of G = [I | P], a sort per size for the quantiles. As written then:

A model's input features are part of the cost of every prediction, so this is
written for throughput (numpy; float64 by default, so integer minors stay exact:
a near-singular minor is the feature that matters most. ``exact=False`` forms
them in float32, ~2x faster: 4 x 4 minors of entries up to 100 then carry
rounding errors of a few units, which left a model's held-out error unchanged
in the prediction-speed benchmark):

- the batch is the *last* axis, so each Laplace step copies whole rows of B
  values (indexing a leading batch axis gathers one scalar at a time);
- codes go through in chunks that stay in cache;
- a code's features are computed once for all of its m labels (the caller
  indexes them per label).

The maximal minors of G = [I | P] are exactly P's square minors (a basis with
s columns of P gives an s x s minor), so one Laplace pass over G's rows gives
every size. ``max_size`` <= 2 skips it: 1 x 1 and 2 x 2 minors come straight
from P's entries, the cheapest features that still see singular pairs.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

STATS = 5  # min, 10th percentile, median, max, mean of log2 |minor|, per size
QUANTILES = (0.0, 0.1, 0.5, 1.0)
CHUNK = 256  # codes per pass: the largest step (n=10, k=5) then holds ~1 MB


@lru_cache(maxsize=None)
def _laplace(n: int, k: int):
    """Laplace steps with the batch axis last, and the indices of each minor size among the bases."""
    from engine.mheight.solver import tables

    t = tables(n, k)
    steps = [(cols.T.copy(), sub.T.copy(), sign[:, None, None]) for cols, sub, sign in t.laplace]
    size = (t.bases >= k).sum(1)  # P columns in the basis = the minor's size
    return steps, [np.flatnonzero(size == s) for s in range(1, min(k, n - k) + 1)]


@lru_cache(maxsize=None)
def _pairs(k: int, r: int):
    rows = np.array(list(itertools.combinations(range(k), 2))).T
    cols = np.array(list(itertools.combinations(range(r), 2))).T
    return rows, cols


def _all_minors(P: np.ndarray) -> list[np.ndarray]:
    """[(B, C(k, s) C(r, s)) for s = 1..min(k, r)]: every square minor of P, by size, in P's dtype."""
    B, k, r = P.shape
    steps, by_size = _laplace(k + r, k)
    Gt = np.empty((k, k + r, B), dtype=P.dtype)
    Gt[:, :k] = np.eye(k)[:, :, None]
    Gt[:, k:] = P.transpose(1, 2, 0)
    M = Gt[0]  # (n, B): 1 x 1 minors of row 0
    for s, (cols, sub, sign) in enumerate(steps, start=2):
        # minors of rows 0..s-1 on column set C: sum_t sign_t G[s-1, C_t] * minor(C without C_t)
        prod = Gt[s - 1][cols]  # (s, Ns, B)
        prod *= M[sub]
        prod *= sign.astype(P.dtype, copy=False)
        M = prod.sum(0)
    return [M[idx].T for idx in by_size]


def _small_minors(P: np.ndarray) -> list[np.ndarray]:
    """1 x 1 and 2 x 2 minors of P straight from its entries."""
    B, k, r = P.shape
    out = [P.reshape(B, -1)]
    if min(k, r) >= 2:
        (i, j), (a, b) = _pairs(k, r)
        top, bot = P[:, i], P[:, j]  # (B, pairs of rows, r)
        out.append((top[:, :, a] * bot[:, :, b] - top[:, :, b] * bot[:, :, a]).reshape(B, -1))
    return out


def minor_stats(P: np.ndarray, max_size: int | None = None, exact: bool = True) -> np.ndarray:
    """(B, STATS * min(k, n-k)): per size s, STATS of log2 |det| over P's s x s submatrices.

    P: (B, k, n-k), one (n, k). Singular minors count as |det| = 0.5 (log2 = -1; integer
    minors are 0 or >= 1). Columns of sizes above ``max_size`` are zero. float64, or float32
    throughout when not ``exact``.
    """
    P = np.asarray(P, dtype=np.float64 if exact else np.float32)
    B, k, r = P.shape
    sizes = min(k, r)
    out = np.zeros((B, STATS * sizes), dtype=P.dtype)
    small = max_size is not None and max_size <= 2
    for c in range(0, B, CHUNK):
        chunk = P[c:c + CHUNK]
        minors = _small_minors(chunk) if small else _all_minors(chunk)
        for s, M in enumerate(minors[:sizes if max_size is None else max_size]):
            v = np.sort(np.log2(np.maximum(np.abs(M), 0.5)), axis=1)
            last = v.shape[1] - 1
            cols = out[c:c + CHUNK, s * STATS:(s + 1) * STATS]
            for i, q in enumerate(QUANTILES):  # linear interpolation, as numpy's default quantile
                lo = int(q * last)
                frac = q * last - lo
                cols[:, i] = v[:, lo] + frac * (v[:, min(lo + 1, last)] - v[:, lo])
            cols[:, len(QUANTILES)] = v.mean(1)
    return out
