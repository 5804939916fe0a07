"""Timing shared by the benchmarks."""

from __future__ import annotations

import time
from typing import Any, Callable


def best_of(fn: Callable[[], Any], reps: int = 3) -> tuple[float, Any]:
    """The fewest wall seconds ``fn`` took over ``reps`` calls (the cores are shared: the others
    measure other jobs), and what its last call returned."""
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
