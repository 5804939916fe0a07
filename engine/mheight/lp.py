"""Roth's linear programs for h_m: the independent reference, one HiGHS model per code.

For every m-subset S and j in S: maximise c_j = u . G_j over free u subject
to |c_t| <= 1 for t outside S. h_m is the largest optimum (at least 1); an
unbounded LP means h_m = inf. Nothing here shares code or reasoning with the
vertex enumeration in ``solver.py``: a real simplex solver decides every LP.

Speed without changing what is solved: the LPs of one code differ only in
which rows are free (S) and in the objective (G_j), so one HiGHS model holds
k free variables and one row -1 <= u . G_t <= 1 per coordinate t; each LP
only relaxes the rows in S and swaps the objective, and HiGHS re-solves from
the previous optimal basis (a few simplex pivots instead of a cold start).
That is ~20x the throughput of one scipy ``linprog`` per LP
(``lp_baselines.py`` keeps that path for cross-checks and timing).
Torch-free.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from engine.core.errors import JobError
from engine.mheight.codes import generator_matrix

# Feasibility tolerances of HiGHS (defaults 1e-7). A vertex whose coordinate
# is 1 + 1e-8 must count as infeasible, as it does for the enumeration (1e-9):
# else the LP could accept a different vertex than the exact optimum.
TOLERANCE = 1e-9


class CodeLP:
    """One code's HiGHS model: rows t = coordinates of c = uG, bounds [-1, 1] or free."""

    def __init__(self, P: np.ndarray):
        try:
            import highspy
        except ImportError:
            raise JobError("the LP reference needs the highspy package (make install, or pip install highspy); "
                           "--method enumerate needs no LP solver") from None
        self._hs = highspy
        self.G = generator_matrix(P)
        k, n = self.G.shape
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        # Presolve gains nothing on k <= 10 variables, and it is where HiGHS has been seen to
        # call an unbounded LP infeasible; warm starts skip it anyway.
        h.setOptionValue("presolve", "off")
        h.setOptionValue("primal_feasibility_tolerance", TOLERANCE)
        h.setOptionValue("dual_feasibility_tolerance", TOLERANCE)
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = k, n
        lp.col_cost_ = np.zeros(k)
        # Free u: bounds like scipy's default u >= 0 would cut the code in half.
        lp.col_lower_ = np.full(k, -highspy.kHighsInf)
        lp.col_upper_ = np.full(k, highspy.kHighsInf)
        lp.row_lower_, lp.row_upper_ = -np.ones(n), np.ones(n)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.arange(0, n * k + 1, k, dtype=np.int32)
        lp.a_matrix_.index_ = np.tile(np.arange(k, dtype=np.int32), n)
        lp.a_matrix_.value_ = np.ascontiguousarray(self.G.T).ravel()
        lp.sense_ = highspy.ObjSense.kMaximize
        h.passModel(lp)
        self.h = h
        self.free = np.zeros(n, dtype=bool)
        self._cols = np.arange(k, dtype=np.int32)
        self.solves = 0  # LPs answered, for LPs/s
        self.cold_resolves = 0  # warm starts that gave no answer and were solved again from scratch

    def free_rows(self, S: tuple[int, ...]) -> None:
        """Relax exactly the rows in S (only the rows that change are touched)."""
        want = np.zeros_like(self.free)
        want[list(S)] = True
        changed = np.flatnonzero(want != self.free).astype(np.int32)
        if len(changed):
            inf = self._hs.kHighsInf
            self.h.changeRowsBounds(len(changed), changed, np.where(want[changed], -inf, -1.0),
                                    np.where(want[changed], inf, 1.0))
            self.free = want

    def maximise(self, j: int) -> float:
        """max u . G_j under the current rows; +inf if unbounded."""
        st = self._hs.HighsModelStatus
        self.h.changeColsCost(len(self._cols), self._cols, np.ascontiguousarray(self.G[:, j]))
        self.h.run()
        self.solves += 1
        status = self.h.getModelStatus()
        if status not in (st.kOptimal, st.kUnbounded):
            # Anything else is not an answer about this LP: u = 0 is always feasible, so
            # "infeasible" is a wrong label (seen after presolve), and a warm start from the
            # basis an unbounded LP left behind sometimes ends "unknown". Re-solve cold; then
            # "unbounded or infeasible" can only mean unbounded.
            self.h.clearSolver()
            self.h.run()
            self.cold_resolves += 1
            status = self.h.getModelStatus()
        if status in (st.kUnbounded, st.kUnboundedOrInfeasible):
            return math.inf
        if status != st.kOptimal:
            raise JobError(f"HiGHS could not solve an m-height LP ({self.h.modelStatusToString(status)}); "
                           "try --method enumerate")
        return float(self.h.getInfo().objective_function_value)


def _heights(lp: CodeLP, n: int, ms: list[int]) -> list[float]:
    out = []
    for m in ms:
        best = 1.0  # m = 0: no LP, h_0 = 1
        for S in itertools.combinations(range(n), m):
            lp.free_rows(S)
            for j in S:
                best = max(best, lp.maximise(j))
                if math.isinf(best):
                    break  # one unbounded LP settles h_m
            if math.isinf(best):
                break
        out.append(best)
    return out


def heights_lp(n: int, k: int, ms: list[int], P) -> list[float]:
    """h_m of one code for every m in ms (P validated, k x (n-k)), all from one model."""
    return _heights(CodeLP(np.asarray(P, dtype=np.float64).reshape(k, n - k)), n, list(ms))


def height_lp(n: int, k: int, m: int, P) -> float:
    """h_m of one code by Roth's LPs (P validated, k x (n-k))."""
    return heights_lp(n, k, [m], P)[0]


def heights_lp_codes(job: tuple[int, int, list[int], np.ndarray]) -> tuple[np.ndarray, int]:
    """((N, len(ms)) heights, LPs solved) for N codes (n, k, ms, P (N, k, n-k)): one unit of pool work."""
    n, k, ms, Ps = job
    out, lps = np.empty((len(Ps), len(ms))), 0
    for i, P in enumerate(Ps):
        lp = CodeLP(P)
        out[i] = _heights(lp, n, list(ms))
        lps += lp.solves
    return out, lps


def run_lp_jobs(jobs: list, workers: int) -> list[tuple[np.ndarray, int]]:
    """heights_lp_codes over jobs, in order, on ``workers`` processes (in-process for one)."""
    if workers <= 1:
        return [heights_lp_codes(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # spawn, not fork: the caller may hold torch/OpenMP state; the workers need only numpy and HiGHS.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(heights_lp_codes, jobs))
