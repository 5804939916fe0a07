"""Statistics of log2 |det| of P's square submatrices: the m-height models' features.

A model's input features are part of the cost of every prediction (the issue measures a
model in labels/s against the generator), so this is written for throughput; each choice
below was measured, one thread (docs/mheight.md; `python -m benchmarks mheight_fast`):

- P's square minors directly, size by size: an s x s minor is the expansion of its last
  row against s minors of size s-1 (2 x 2 from entries, 3 x 3 from 2 x 2, ...). For
  n = 10, k = 5 that is ~600 multiply-adds per code; a Laplace pass over the maximal minors
  of G = [I | P] (the same numbers, the solver's first step) takes ~2,500.
- the batch is the *last* axis, so every gather copies whole rows of codes (indexing a
  leading batch axis gathers one scalar at a time); codes go in chunks of 1,024 (fastest
  measured: 256 is ~25% slower, 2,048 ~5%), through buffers reused across calls.
- float32: minors up to 3 x 3 of entries <= 100 are exact integers; larger ones carry
  rounding errors of a few units (a truly singular 5 x 5 minor may come out as a few
  thousand): the same in training as at prediction, and it left the error unchanged.
- log2 from the float's bits (exponent + mantissa - 1, Mitchell's approximation, error
  <= 0.086): ~10% cheaper than np.log2 (which numpy vectorises for float32), exact at
  powers of two, and the model's held-out error did not move.
- sort-free statistics per size (min, mean, std): version 1's 10% and median quantiles
  needed a sort per size.

FEATURE_VERSION names what ``minor_stats_numpy`` (and its C twin) returns; checkpoints record it, and a model
trained on other features is refused (``engine.mheight.data.check_minor_features``).

The same arithmetic in C (engine/fast/minors.c, built on first use; ``engine.fast.minors.minor_stats``
chooses, by ``--cpu-kernels``) runs instead where a C compiler works: LANES codes at a time in L1
instead of whole-array passes, several times faster; the numpy version here stays the definition
and the fallback, and tests hold the two together.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FEATURE_VERSION = 2  # 1: min, 10%, median, max, mean of exact log2 |minor| (Laplace pass over G)
STATS = 3  # min, mean, std of log2 |minor|, per size
CHUNK = 1024  # codes per pass (see above); n=10, k=5 then works in ~4 MB
_HALF = np.float32(0.5).view(np.int32)  # bits of 0.5: singular minors count as |det| = 0.5
_ONE = np.float32(1.0).view(np.int32)  # bits of 1.0: subtracted, bits / 2^23 ~ log2


@dataclass(frozen=True)
class Plan:
    """Index tables for one (k, r): minors of every size stacked in one array, size after size."""

    starts: np.ndarray  # (sizes,) first row of each size's block
    counts: np.ndarray  # (sizes,) C(k, s) C(r, s)
    steps: tuple  # per size s >= 2: (entry (s, Ns) into [P; -P] entries, sub (s, Ns) into the stack)


@lru_cache(maxsize=None)
def plan(k: int, r: int) -> Plan:
    sizes = min(k, r)
    rows = [list(itertools.combinations(range(k), s)) for s in range(sizes + 1)]
    cols = [list(itertools.combinations(range(r), s)) for s in range(sizes + 1)]
    counts = np.array([len(rows[s]) * len(cols[s]) for s in range(1, sizes + 1)])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    row_at = [{R: i for i, R in enumerate(rows[s])} for s in range(sizes + 1)]
    col_at = [{C: i for i, C in enumerate(cols[s])} for s in range(sizes + 1)]
    steps = []
    for s in range(2, sizes + 1):
        entry, sub, base, width = [], [], starts[s - 2], len(cols[s - 1])
        for R in rows[s]:
            last, above = R[-1], row_at[s - 1][R[:-1]]
            for C in cols[s]:
                # det = sum_t (-1)^(s-1+t) P[last, C_t] * minor(R without last, C without C_t);
                # a negative sign reads the entry from the negated copy of P (offset k r)
                entry.append([last * r + C[t] + (k * r if (s - 1 + t) % 2 else 0) for t in range(s)])
                sub.append([base + above * width + col_at[s - 1][C[:t] + C[t + 1:]] for t in range(s)])
        steps.append((np.array(entry).T.copy(), np.array(sub).T.copy()))
    return Plan(starts, counts, tuple(steps))


_per_thread = threading.local()
_KEEP = 16  # buffers per thread: the course grid is 6 (k, r) x a full and a last chunk; a few MB each


def _reused(key: tuple, make):
    """A buffer reused across calls on this thread: temporaries above glibc's mmap threshold
    (128 KB) would be fresh pages on every call, and their page faults cost more than the
    arithmetic (measured 3x). Each thread has its own, so concurrent calls never share one."""
    cache = getattr(_per_thread, "buffers", None)
    if cache is None:
        cache = _per_thread.buffers = {}
    if key not in cache:
        if len(cache) >= _KEEP:
            cache.pop(next(iter(cache)))  # the oldest
        cache[key] = make()
    return cache[key]


def _workspace(k: int, r: int, B: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def make():
        p = plan(k, r)
        widest = max([entry.shape[1] for entry, _ in p.steps], default=0)
        return (np.empty((2 * k * r, B), dtype=dtype), np.empty((int(p.counts.sum()), B), dtype=dtype),
                np.empty((widest, B), dtype=dtype), np.empty((widest, B), dtype=dtype))

    return _reused(("workspace", k, r, B, dtype), make)


def square_minors(P: np.ndarray) -> np.ndarray:
    """(sum_s C(k, s) C(r, s), B): every square minor of P (B, k, r), in P's dtype, by size (``plan``).

    The result is a buffer reused by this thread, overwritten by its next call with the same shape:
    copy it to keep it.
    """
    B, k, r = P.shape
    p = plan(k, r)
    E, A, ent, below = _workspace(k, r, B, P.dtype.str)
    E[:k * r] = P.reshape(B, k * r).T
    np.negative(E[:k * r], out=E[k * r:])
    A[:k * r] = E[:k * r]
    for s, (entry, sub) in enumerate(p.steps, start=2):
        Ns = entry.shape[1]
        out, e, b = A[p.starts[s - 1]:p.starts[s - 1] + Ns], ent[:Ns], below[:Ns]
        # term by term into the output, through two buffers that stay in cache: 30% faster than
        # gathering all s terms at once and summing them (that writes and reads s times more memory)
        for t in range(s):
            np.take(E, entry[t], axis=0, out=e, mode="clip")  # "clip": with the default mode, out= is buffered
            np.take(A, sub[t], axis=0, out=b, mode="clip")
            if t == 0:
                np.multiply(e, b, out=out)
            else:
                e *= b
                out += e
    return A


@lru_cache(maxsize=16)
def _half(shape: tuple[int, int]) -> np.ndarray:
    # a full array, not a scalar: numpy's maximum against a scalar int is ~3x slower (no SIMD path)
    h = np.full(shape, _HALF, dtype=np.int32)
    h.flags.writeable = False
    return h


def _floats(shape: tuple[int, int]) -> np.ndarray:
    return _reused(("floats", shape), lambda: np.empty(shape, dtype=np.float32))


def log2_bits(A: np.ndarray) -> np.ndarray:
    """log2 max(|A|, 0.5) * 2^23 as int32, in place over float32 A (2-d): the float's own exponent and mantissa.

    For x = 2^e (1 + f), (bits(x) - bits(1.0)) / 2^23 = e + f, within 0.086 of log2 x.
    """
    bits = A.view(np.int32)
    bits &= np.int32(0x7FFFFFFF)  # |x|: the sign bit off
    np.maximum(bits, _half(bits.shape), out=bits)  # integer minors are 0 or >= 1: singular ones count as 0.5
    bits -= _ONE
    return bits


def minor_stats_numpy(P: np.ndarray) -> np.ndarray:
    """(B, STATS * min(k, n-k)) float32: per size s, min, mean, std of log2 |det| over P's s x s submatrices.

    P: (B, k, n-k), one (n, k). Singular minors count as |det| = 0.5 (log2 = -1); log2 is
    Mitchell's approximation (``log2_bits``). The definition, and what runs without a C compiler;
    models read it through ``engine.fast.minors.minor_stats`` (C where it runs, else this).
    """
    P = np.asarray(P, dtype=np.float32)
    B, k, r = P.shape
    p = plan(k, r)
    out = np.empty((len(p.counts), STATS, B), dtype=np.float32)
    unit = np.float32(2.0**-23)
    for c in range(0, B, CHUNK):
        bits = log2_bits(square_minors(P[c:c + CHUNK]))
        L = _floats(bits.shape)
        L[...] = bits  # log2 in units of 2^-23
        for i, (lo, cnt) in enumerate(zip(p.starts.tolist(), p.counts.tolist())):
            blk, o = L[lo:lo + cnt], out[i, :, c:c + CHUNK]
            np.multiply(blk.min(0), unit, out=o[0])
            np.multiply(blk.sum(0), unit / cnt, out=o[1])
            sq = np.einsum("ij,ij->j", blk, blk) * (unit * unit / cnt)  # one pass for the sum of squares
            np.sqrt(np.maximum(sq - o[1] * o[1], 0), out=o[2])
    # a transposed view, not a copy: gathering it code-major costs a cache miss per value
    return out.reshape(-1, B).T
