"""Minor statistics (the models' fast features) against determinants computed one by one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.mheight.minors import STATS, minor_stats


def _brute(P: np.ndarray) -> np.ndarray:
    k, r = P.shape
    out = []
    for s in range(1, min(k, r) + 1):
        dets = [np.linalg.det(P[np.ix_(R, C)]) for R in itertools.combinations(range(k), s)
                for C in itertools.combinations(range(r), s)]
        logs = np.log2(np.maximum(np.abs(np.round(dets)), 0.5))  # integer P: integer minors
        out += [*np.quantile(logs, [0, 0.1, 0.5, 1]), logs.mean()]
    return np.array(out)


@pytest.mark.parametrize("n,k", [(9, 4), (10, 5), (10, 6), (5, 1), (6, 5)])
def test_minor_stats_match_determinants_one_by_one(n, k):
    rng = np.random.default_rng(n * 10 + k)
    P = rng.integers(-100, 101, size=(300, k, n - k)).astype(np.float64)
    P[:3, 0] = 0  # singular minors of every size in a few codes
    P[3:6, -1] = P[3:6, 0] if k > 1 else 0
    got = minor_stats(P)
    assert got.shape == (300, STATS * min(k, n - k))
    for b in (0, 1, 4, 5, 299):  # the brute force is slow: a few codes, the singular ones included
        np.testing.assert_allclose(got[b], _brute(P[b]), atol=1e-9)
    assert (got[:3, 0] == -1).all()  # a zero entry: the smallest 1 x 1 minor counts as |det| = 0.5


@pytest.mark.parametrize("n,k", [(9, 4), (10, 6), (4, 1)])
def test_small_minors_path_agrees_with_the_laplace_pass(n, k):
    rng = np.random.default_rng(1)
    P = rng.integers(-100, 101, size=(700, k, n - k)).astype(np.float64)  # more than one chunk
    full, small = minor_stats(P), minor_stats(P, max_size=2)
    w = STATS * min(2, k, n - k)
    np.testing.assert_allclose(small[:, :w], full[:, :w], atol=1e-9)
    assert (small[:, w:] == 0).all()  # larger sizes are left out, not approximated
    if min(k, n - k) > 2:
        assert (full[:, w:] != 0).any()


def test_float32_minor_stats_stay_close_to_exact_ones():
    rng = np.random.default_rng(2)
    P = rng.integers(-100, 101, size=(500, 5, 5)).astype(np.float64)
    exact, fast = minor_stats(P), minor_stats(P, exact=False)
    assert fast.dtype == np.float32 and exact.dtype == np.float64
    # the 5 x 5 minors (up to ~1e12) lose digits in float32, but their log2 stays within a few 1e-3
    # except where a tiny minor is rounding noise: the means (over many minors) agree closely
    means = np.arange(STATS - 1, exact.shape[1], STATS)
    np.testing.assert_allclose(fast[:, means], exact[:, means], atol=0.05)
    np.testing.assert_allclose(np.median(np.abs(fast - exact), 0), 0, atol=1e-3)
