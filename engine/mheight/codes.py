"""Validation of codes (n, k, m, P) shared by the solver, generator and importer.

A code is given by the k x (n-k) matrix P of its systematic generator
G = [I_k | P]. Torch-free: the LP reference and the CLI use it without torch.
"""

from __future__ import annotations

import math

import numpy as np

from engine.core.errors import JobError


def check_code(n: int, k: int, m: int, P, where: str = "code") -> np.ndarray:
    """P as a float64 (k, n-k) array, or a one-line JobError saying what is wrong."""
    for name, v in (("n", n), ("k", k), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise JobError(f"{where}: {name} must be an integer, got {v!r}")
    if not 1 <= k < n:
        raise JobError(f"{where}: need 1 <= k < n, got n={n}, k={k}")
    if not 0 <= m < n:
        raise JobError(f"{where}: m={m} is out of range; m counts the largest entries skipped, so 0 <= m <= n-1 = {n - 1}")
    try:
        arr = np.asarray(P, dtype=np.float64)
    except (TypeError, ValueError):
        raise JobError(f"{where}: P must be a k x (n-k) matrix of numbers") from None
    if arr.ndim == 1 and arr.size == k * (n - k):
        arr = arr.reshape(k, n - k)  # the users' files sometimes hold P flattened row by row
    if arr.shape != (k, n - k):
        raise JobError(f"{where}: P has shape {tuple(arr.shape)} but n={n}, k={k} needs k x (n-k) = {k} x {n - k}")
    if not np.isfinite(arr).all():
        raise JobError(f"{where}: P holds NaN or infinite entries; every entry must be a finite number")
    return arr


def generator_matrix(P: np.ndarray) -> np.ndarray:
    """G = [I_k | P] for one P (k, n-k) or a batch (B, k, n-k)."""
    P = np.asarray(P, dtype=np.float64)
    k = P.shape[-2]
    eye = np.broadcast_to(np.eye(k), P.shape[:-2] + (k, k))
    return np.concatenate([eye, P], axis=-1)


def format_height(h: float) -> float | str:
    """JSON has no infinity: infinite heights are spelled "inf"."""
    return "inf" if math.isinf(h) else h


def parse_height(v) -> float:
    if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "infinity"):
        return math.inf
    return float(v)
