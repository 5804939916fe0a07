"""Minor statistics (the models' fast features) against determinants computed one by one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.mheight import minors
from engine.mheight.minors import STATS, minor_stats, plan, square_minors

MITCHELL = 0.0861  # max error of log2 from a float's bits: max over f in [0, 1) of log2(1 + f) - f


def _dets(P: np.ndarray) -> list[np.ndarray]:
    """Every s x s determinant of P (k, r), one by one, per size, in ``plan``'s order."""
    k, r = P.shape
    return [np.round([np.linalg.det(P[np.ix_(R, C)]) for R in itertools.combinations(range(k), s)
                      for C in itertools.combinations(range(r), s)]) for s in range(1, min(k, r) + 1)]


def _codes(n: int, k: int, count: int, high: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    P = rng.integers(-high, high + 1, size=(count, k, n - k)).astype(np.float64)
    P[:3, 0] = 0  # singular minors of every size in a few codes
    P[3:6, -1] = P[3:6, 0] if k > 1 else 0
    return P


@pytest.mark.parametrize("n,k", [(9, 4), (10, 5), (10, 6), (5, 1), (6, 5), (4, 2)])
def test_square_minors_match_determinants_one_by_one(n, k):
    P = _codes(n, k, 40, 100, n * 10 + k)
    got = square_minors(P)  # float64: integer minors exact
    p = plan(k, n - k)
    for b in range(len(P)):
        want = _dets(P[b])
        for (lo, cnt), d in zip(zip(p.starts, p.counts), want):
            np.testing.assert_array_equal(got[lo:lo + cnt, b], d)


@pytest.mark.parametrize("n,k", [(9, 4), (10, 5), (10, 6), (6, 5)])
def test_minor_stats_are_the_statistics_of_the_determinants(n, k):
    # entries in [-10, 10]: every minor of these sizes is an exact integer in float32 too, so the only
    # difference from the exact statistics is the approximated log2
    P = _codes(n, k, 300, 10, n * 10 + k + 1)
    got = minor_stats(P)
    assert got.shape == (300, STATS * min(k, n - k)) and got.dtype == np.float32
    worst = 0.0
    for b in (0, 1, 4, 5, 100, 299):  # the brute force is slow: a few codes, the singular ones included
        want = []
        for d in _dets(P[b]):
            logs = np.log2(np.maximum(np.abs(d), 0.5))
            want += [logs.min(), logs.mean(), logs.std()]
        np.testing.assert_allclose(got[b], want, atol=MITCHELL + 1e-5)
        worst = max(worst, float(np.abs(got[b] - want).max()))
    assert worst > 0.01  # it is the approximation that is checked, not exact logs by accident
    assert (got[:3, 0] == -1).all()  # a zero entry: the smallest 1 x 1 minor counts as |det| = 0.5


def test_chunks_and_reused_buffers_do_not_mix_codes(monkeypatch):
    monkeypatch.setattr(minors, "CHUNK", 64)
    P = _codes(10, 5, 150, 100, 3)  # 64 + 64 + 22: the last chunk has another shape
    together = minor_stats(P)
    square_minors(P[:7].astype(np.float32))  # overwrite the shared buffers in between
    alone = np.concatenate([minor_stats(P[i:i + 1]) for i in range(len(P))])
    # float32 sums over a batch of one and of 64 round differently (~1e-4 on a std); a mixed-up code is off by units
    np.testing.assert_allclose(together, alone, atol=1e-3)
    np.testing.assert_array_equal(minor_stats(P[:64]), together[:64])


def test_threads_computing_features_at_once_get_the_same_results():
    """The reused buffers are per thread: two threads on the same shapes do not overwrite each other."""
    from concurrent.futures import ThreadPoolExecutor

    codes = [_codes(10, 5, 300, 100, seed) for seed in range(8)]
    alone = [minor_stats(P).copy() for P in codes]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            together = list(pool.map(minor_stats, codes))
            for a, b in zip(alone, together):
                np.testing.assert_array_equal(a, b)


def test_version_1_reference_matches_determinants_one_by_one():
    # the benchmark's comparison point: min, 10%, median, max, mean of exact log2 |det| per size
    from benchmarks.mheight_features_v1 import STATS as STATS_V1
    from benchmarks.mheight_features_v1 import minor_stats as minor_stats_v1

    P = _codes(10, 5, 50, 100, 4)
    got, small, fast = minor_stats_v1(P), minor_stats_v1(P, max_size=2), minor_stats_v1(P, exact=False)
    for b in (0, 4, 49):
        want = []
        for d in _dets(P[b]):
            logs = np.log2(np.maximum(np.abs(d), 0.5))
            want += [*np.quantile(logs, [0, 0.1, 0.5, 1]), logs.mean()]
        np.testing.assert_allclose(got[b], want, atol=1e-9)
        np.testing.assert_allclose(small[b, :2 * STATS_V1], want[:2 * STATS_V1], atol=1e-9)
    means = np.arange(STATS_V1 - 1, got.shape[1], STATS_V1)
    # float32 (the rows without planted singular minors: there its rounding noise is a few thousand, not 0)
    np.testing.assert_allclose(fast[6:, means], got[6:, means], atol=0.05)
