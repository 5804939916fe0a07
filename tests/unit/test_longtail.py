from __future__ import annotations

import numpy as np

from engine.common.groups import ClassGroups
from engine.longtail.data.profile import lt_counts, select_lt, split_per_class


def test_lt_profile_matches_the_cifar_lt_numbers():
    c100 = lt_counts(500, 100, 100)
    assert sum(c100) == 10847 and c100[0] == 500 and c100[-1] == 5
    assert sum(lt_counts(5000, 10, 100)) == 12406
    assert all(a >= b for a, b in zip(c100, c100[1:]))


def test_select_lt_takes_the_profile_and_is_seeded():
    targets = np.repeat(np.arange(5), 50)
    counts = lt_counts(50, 5, 10)
    a = select_lt(targets, counts, seed=1)
    assert np.bincount(targets[a], minlength=5).tolist() == counts
    assert np.array_equal(a, select_lt(targets, counts, seed=1))
    assert not np.array_equal(a, select_lt(targets, counts, seed=2))


def test_split_per_class_is_disjoint_complete_and_keeps_the_profile():
    targets = np.repeat(np.arange(4), [100, 50, 20, 10])
    idx = np.arange(len(targets))
    parts = split_per_class(idx, targets, {"expert": 0.9, "gating": 0.1}, seed=0)
    e, g = parts["expert"], parts["gating"]
    assert len(np.intersect1d(e, g)) == 0
    assert sorted(np.concatenate([e, g]).tolist()) == idx.tolist()
    assert np.bincount(targets[g]).tolist() == [10, 5, 2, 1]
    assert np.bincount(targets[e]).tolist() == [90, 45, 18, 9]


def test_groups_follow_the_usual_boundaries():
    g = ClassGroups((500, 101, 100, 20, 19, 5))
    assert np.flatnonzero(g.mask("many")).tolist() == [0, 1]
    assert np.flatnonzero(g.mask("medium")).tolist() == [2, 3]
    assert np.flatnonzero(g.mask("few")).tolist() == [4, 5]
    assert np.flatnonzero(g.mask("tail")).tolist() == [3, 4, 5]
    assert np.flatnonzero(g.mask("head")).tolist() == [0, 1, 2]


def test_embedded_digits_set():
    from engine.longtail.data.embedded import load_digits_lt

    d = load_digits_lt(image_size=16)
    sizes = {k: len(v) for k, v in d.splits.items()}
    assert sizes["test"] == 640 and sizes["val"] == 80 and sizes["tunev"] == 80
    assert sizes["expert"] + sizes["gating"] == sum(d.groups.counts) == 364
    assert d.groups.counts[0] == 90 and d.groups.counts[-1] == 9
    # balanced evaluation splits
    assert set(np.bincount(d.splits["test"].y.numpy()).tolist()) == {64}
    assert d.splits["expert"].x.shape[1:] == (1, 16, 16)
    assert d.splits["expert"].x.dtype.is_floating_point is False
