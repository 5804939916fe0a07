"""Roth's LPs the slow way: one cold LP per (S, j), as first written and as the users wrote it.

The same LPs as ``lp.py`` (see there), each built and solved from scratch:
scipy's ``linprog`` (HiGHS) and the users' PuLP + CBC formulation. Kept to
cross-check the warm-started model (a second route through a solver) and to
time it against them in the benchmark. Torch-free.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from engine.core.errors import JobError
from engine.mheight.codes import generator_matrix


def _solve_one(c: np.ndarray, A_ub: np.ndarray, b_ub: np.ndarray) -> float:
    """max c.u s.t. A_ub u <= b_ub, u free; +inf if unbounded."""
    from scipy.optimize import linprog

    # scipy's default bounds are u >= 0, which would silently cut the code in half.
    bounds = [(None, None)] * len(c)
    res = linprog(-c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status == 2:
        # u = 0 is always feasible: "infeasible" is HiGHS presolve mislabelling an
        # unbounded problem (dual infeasible). Solve again without presolve to tell.
        res = linprog(-c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs", options={"presolve": False})
    if res.status == 3:
        return math.inf
    if res.status != 0:
        raise JobError(f"HiGHS could not solve an m-height LP ({res.message}); try --method enumerate")
    return float(-res.fun)


def height_lp_scipy(n: int, k: int, m: int, P) -> float:
    """h_m of one code, one scipy linprog per (S, j) (P validated, k x (n-k))."""
    if m == 0:
        return 1.0
    G = generator_matrix(P)
    best = 1.0
    for S in itertools.combinations(range(n), m):
        rest = [t for t in range(n) if t not in S]
        Gt = G[:, rest].T  # rows: constraints c_t = u . G_t
        A_ub = np.vstack([Gt, -Gt])
        b_ub = np.ones(2 * len(rest))
        for j in S:
            v = _solve_one(G[:, j], A_ub, b_ub)
            if math.isinf(v):
                return math.inf
            best = max(best, v)
    return best


def height_pulp(n: int, k: int, m: int, P) -> float:
    """The users' original formulation (PuLP + CBC, one LP per (S, j)); for timing only."""
    import pulp

    if m == 0:
        return 1.0
    G = generator_matrix(P)
    best = 1.0
    solver = pulp.PULP_CBC_CMD(msg=False)
    for S in itertools.combinations(range(n), m):
        rest = [t for t in range(n) if t not in S]
        for j in S:
            prob = pulp.LpProblem("mheight", pulp.LpMaximize)
            u = [pulp.LpVariable(f"u{i}", lowBound=None) for i in range(k)]
            prob += pulp.lpSum(G[i, j] * u[i] for i in range(k))
            for t in rest:
                expr = pulp.lpSum(G[i, t] * u[i] for i in range(k))
                prob += expr <= 1
                prob += expr >= -1
            status = prob.solve(solver)
            if pulp.LpStatus[status] == "Unbounded":
                return math.inf
            best = max(best, pulp.value(prob.objective))
    return best
