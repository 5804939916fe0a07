"""Exact m-heights by vertex enumeration, batched over many codes of one (n, k).

Roth's LP for an m-subset S attains its optimum where k independent
constraints |c_t| <= 1 (t outside S) are tight: c = sigma G_I^-1 G for a basis
I (k columns of G with det G_I != 0) and signs sigma. So

    h_m(C) = max over bases I and signs sigma whose codeword has at most m
             entries above 1 in magnitude, of its largest entry,

and h_m is infinite exactly when some m-subset S meets every basis (then
the columns outside S have rank < k, a nonzero codeword vanishes there and
m >= d(C)).

The structure that makes this cheap: every entry of G_I^-1 G is a ratio of two
k x k minors of G (Cramer's rule: replace column r of G_I by column j), so one
pass computing the C(n, k) maximal minors (Laplace expansion, exact for
integer P) gives the whole tableau of every basis at once. Only the n-k
columns outside I vary with sigma, and one pass serves every m: for each
vertex count its entries above 1 and keep its largest; a running maximum over
that count is h_m for all m together.

Written in torch so the same code runs batched on a CPU or a GPU.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

# A vertex whose entry is 1 in exact arithmetic may come out 1 + a few ulp.
FEASIBLE_TOL = 1e-9
# Minors of integer P are integers: |det| < 0.5 is exactly zero. Otherwise a
# minor below this fraction of its Hadamard bound is treated as singular
# (rounding noise of a truly singular minor is ~1e-16 of the bound).
SINGULAR_REL_TOL = 1e-10
EXACT_INT_LIMIT = 2.0**50  # Hadamard bound below which float64 minors of integers are exact


def _parity(seq: tuple[int, ...]) -> int:
    inv = sum(1 for a, b in itertools.combinations(seq, 2) if a > b)
    return -1 if inv % 2 else 1


@dataclass(frozen=True)
class Tables:
    """Index tables for one (n, k): Laplace steps, bases, Cramer indices and signs."""

    n: int
    k: int
    laplace: tuple  # per size s>=2: (cols (Ns, s), sub (Ns, s), sign (s,))
    bases: np.ndarray  # (NI, k) column indices, lexicographic
    outside: np.ndarray  # (NI, n-k) the other columns
    cramer_idx: np.ndarray  # (NI, k, n-k) index of the minor with column r replaced by outside j
    cramer_sign: np.ndarray  # (NI, k, n-k) +-1

    def avoid(self, m: int) -> np.ndarray:
        """(C(n, m), NI) bool: basis I is disjoint from m-subset S."""
        return _avoid(self.n, self.k, m)


@lru_cache(maxsize=None)
def _avoid(n: int, k: int, m: int) -> np.ndarray:
    bases = list(itertools.combinations(range(n), k))
    subsets = list(itertools.combinations(range(n), m))
    return np.array([[not (set(S) & set(I)) for I in bases] for S in subsets], dtype=bool).reshape(len(subsets), len(bases))


@lru_cache(maxsize=None)
def tables(n: int, k: int) -> Tables:
    index = {s: {c: i for i, c in enumerate(itertools.combinations(range(n), s))} for s in range(1, k + 1)}
    laplace = []
    for s in range(2, k + 1):
        cols, sub = [], []
        for C in index[s]:
            cols.append(C)
            sub.append([index[s - 1][C[:t] + C[t + 1:]] for t in range(s)])
        # expansion along row s-1 of the s x s minor: sign (-1)^(s-1+t)
        sign = np.array([(-1) ** (s - 1 + t) for t in range(s)], dtype=np.float64)
        laplace.append((np.array(cols), np.array(sub), sign))
    bases = list(index[k])
    outside = [tuple(j for j in range(n) if j not in I) for I in bases]
    cidx = np.zeros((len(bases), k, n - k), dtype=np.int64)
    csgn = np.zeros((len(bases), k, n - k), dtype=np.float64)
    for b, I in enumerate(bases):
        for r in range(k):
            for jj, j in enumerate(outside[b]):
                replaced = I[:r] + (j,) + I[r + 1:]
                cidx[b, r, jj] = index[k][tuple(sorted(replaced))]
                csgn[b, r, jj] = _parity(replaced)
    return Tables(n, k, tuple(laplace), np.array(bases), np.array(outside), cidx, csgn)


def maximal_minors(G: torch.Tensor, t: Tables) -> torch.Tensor:
    """(B, C(n, k)) determinants of every k-column submatrix of G (B, k, n)."""
    M = G[:, 0, :]  # 1 x 1 minors of row 0
    for s, (cols, sub, sign) in enumerate(t.laplace, start=2):
        cols_t = torch.as_tensor(cols, device=G.device)
        sub_t = torch.as_tensor(sub, device=G.device)
        row = G[:, s - 1, :][:, cols_t]  # (B, Ns, s)
        M = (row * M[:, sub_t] * torch.as_tensor(sign, device=G.device)).sum(-1)
    return M


def heights_batch(P: torch.Tensor, ms: list[int]) -> torch.Tensor:
    """Exact h_m for a batch of codes of one (n, k): P (B, k, n-k) -> (B, len(ms)), inf where infinite."""
    B, k, r = P.shape
    n = k + r
    t = tables(n, k)
    dev = P.device
    P = P.to(torch.float64)
    G = torch.cat([torch.eye(k, dtype=P.dtype, device=dev).expand(B, k, k), P], dim=2)
    M = maximal_minors(G, t)  # (B, NI)
    bases = torch.as_tensor(t.bases, device=dev)
    # Hadamard bound of each basis: product of its column norms.
    hadamard = G.norm(dim=1)[:, bases].prod(-1)
    integral = (P == P.round()).flatten(1).all(1, keepdim=True) & (hadamard < EXACT_INT_LIMIT)
    tol = torch.where(integral, torch.full_like(hadamard, 0.5), SINGULAR_REL_TOL * hadamard)
    is_basis = M.abs() > tol  # (B, NI)

    denom = torch.where(is_basis, M, torch.ones_like(M))
    cidx = torch.as_tensor(t.cramer_idx, device=dev)
    A = M[:, cidx] * torch.as_tensor(t.cramer_sign, device=dev) / denom[:, :, None, None]  # (B, NI, k, n-k)
    # Outside entries of every vertex codeword sigma G_I^-1 G, for the 2^(k-1) sign vectors
    # with sigma_0 = +1 (the rest are negations), built by doubling: only additions.
    V = torch.empty(B, A.shape[1], 2 ** (k - 1), r, dtype=A.dtype, device=dev)
    V[:, :, 0] = A[:, :, 0]
    for row in range(1, k):
        h, a = 2 ** (row - 1), A[:, :, row:row + 1, :]
        torch.sub(V[:, :, :h], a, out=V[:, :, h:2 * h])
        V[:, :, :h] += a
    V = V.abs_()  # (B, NI, 2^(k-1), n-k)
    top = torch.where(is_basis[:, :, None], V.amax(-1), 1.0)  # the vertex's largest entry (I's entries are 1)
    above = (V > 1 + FEASIBLE_TOL).sum(-1)  # entries above 1: the vertex is feasible for every m >= this
    # best[:, c] = largest top among vertices with exactly c entries above 1; a running max over c
    # then answers every m at once.
    best = torch.ones(B, r + 1, dtype=torch.float64, device=dev)
    best.scatter_reduce_(1, above.flatten(1), top.flatten(1), reduce="amax")
    best = best.cummax(dim=1).values
    out = torch.empty(B, len(ms), dtype=torch.float64, device=dev)
    for col, m in enumerate(ms):
        h = best[:, min(m, r)] if m > 0 else torch.ones(B, dtype=torch.float64, device=dev)
        avoid = torch.as_tensor(t.avoid(m), device=dev, dtype=torch.float64)  # (C(n,m), NI)
        finite = ((is_basis.to(torch.float64) @ avoid.T) > 0).all(1)
        out[:, col] = torch.where(finite, h, torch.full_like(h, math.inf))
    return out


def heights_enumerate(n: int, k: int, ms: list[int], P) -> list[float]:
    """h_m of one code for every m in ``ms`` (any order, repeats allowed), from one enumeration of its
    vertices (P already validated, k x (n-k)): the pass is the cost, each further m is a lookup."""
    Pt = torch.as_tensor(np.asarray(P, dtype=np.float64)).reshape(1, k, n - k)
    return heights_batch(Pt, list(ms))[0].tolist()


def height_enumerate(n: int, k: int, m: int, P) -> float:
    """h_m of one code by vertex enumeration (P already validated, k x (n-k))."""
    return heights_enumerate(n, k, [m], P)[0]
