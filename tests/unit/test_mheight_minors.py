"""Minor statistics (the models' fast features) against determinants computed one by one, and
the C kernel (engine/fast/minors.c) against the numpy definition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.fast.minors import minor_stats, minor_stats_c
from engine.mheight import minors
from engine.mheight.minors import STATS, minor_stats_numpy, plan, square_minors

IMPLS = {"numpy": minor_stats_numpy, "c": minor_stats_c}

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


@pytest.mark.parametrize("impl", ["numpy", "c"])
@pytest.mark.parametrize("n,k", [(9, 4), (10, 5), (10, 6), (6, 5)])
def test_minor_stats_are_the_statistics_of_the_determinants(n, k, impl):
    # entries in [-10, 10]: every minor of these sizes is an exact integer in float32 too, so the only
    # difference from the exact statistics is the approximated log2
    P = _codes(n, k, 300, 10, n * 10 + k + 1)
    got = IMPLS[impl](P)
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
    together = minor_stats_numpy(P)
    square_minors(P[:7].astype(np.float32))  # overwrite the shared buffers in between
    alone = np.concatenate([minor_stats_numpy(P[i:i + 1]) for i in range(len(P))])
    # float32 sums over a batch of one and of 64 round differently (~1e-4 on a std); a mixed-up code is off by units
    np.testing.assert_allclose(together, alone, atol=1e-3)
    np.testing.assert_array_equal(minor_stats_numpy(P[:64]), together[:64])


@pytest.mark.parametrize("impl", ["numpy", "c"])
def test_threads_computing_features_at_once_get_the_same_results(impl):
    """The reused buffers are per thread: two threads on the same shapes do not overwrite each other."""
    from concurrent.futures import ThreadPoolExecutor

    codes = [_codes(10, 5, 300, 100, seed) for seed in range(8)]
    alone = [IMPLS[impl](P).copy() for P in codes]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            together = list(pool.map(lambda P: IMPLS[impl](P), codes))
            for a, b in zip(alone, together):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n,k", [(9, 4), (9, 5), (9, 6), (10, 4), (10, 5), (10, 6), (4, 1), (4, 3), (2, 1)])
def test_the_c_kernel_is_the_numpy_definition(n, k):
    """minors.c does numpy's arithmetic: the same minimum to the bit, for every chunk tail (16 codes
    per chunk), singular minors, non-integer and large entries; the mean within float32 rounding
    (numpy orders its sums by the batch's shape: pairwise when the batch is one code), and the std
    as close as numpy's own over batches of other sizes (E[x^2] - mean^2 cancels digits)."""
    rng = np.random.default_rng(n * 10 + k)
    for count in (1, 15, 16, 17, 300):
        for P in (_codes(n, k, count, 100, count), rng.normal(0, 50, (count, k, n - k)),
                  rng.integers(-10**6, 10**6, (count, k, n - k)).astype(np.float64)):
            got, want = minor_stats_c(P), minor_stats_numpy(P)
            stat = np.arange(got.shape[1]) % STATS
            np.testing.assert_array_equal(got[:, stat == 0], want[:, stat == 0])
            np.testing.assert_allclose(got[:, stat == 1], want[:, stat == 1], rtol=1e-6)
            np.testing.assert_allclose(got[:, stat == 2], want[:, stat == 2], atol=1e-3)


def test_the_switch_picks_c_or_numpy_and_a_missing_compiler_is_said_once(monkeypatch, tmp_path, capsys):
    from engine.fast import builder, switch
    from engine.fast import minors as fast

    P = _codes(10, 5, 20, 100, 5)
    calls = []
    real = fast.minor_stats_c
    monkeypatch.setattr(fast, "minor_stats_c", lambda *a: calls.append(1) or real(*a))
    np.testing.assert_array_equal(minor_stats(P, "off"), minor_stats_numpy(P))
    assert calls == []  # off: the kernel is not even tried
    np.testing.assert_array_equal(minor_stats(P, "auto"), real(P))
    assert calls == [1]

    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("MOE_TUI_CACHE", str(tmp_path))
    monkeypatch.setattr(switch, "_said", set())
    fast._kernel.cache_clear()
    builder.build.cache_clear()
    try:
        with pytest.raises(builder.KernelUnavailable, match="/nonexistent/cc"):
            real(P)
        np.testing.assert_array_equal(minor_stats(P), minor_stats_numpy(P))
        minor_stats(P)
    finally:
        fast._kernel.cache_clear()
        builder.build.cache_clear()
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and said[0].startswith("note: minor features in numpy") and "/nonexistent/cc" in said[0]
    with pytest.raises(ValueError, match="choose auto or off"):
        minor_stats(P, "c")


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
