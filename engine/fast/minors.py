"""The m-height minor features in C (minors.c), and the one call that picks C or the numpy definition.

``engine.mheight.minors.minor_stats_numpy`` is the definition; minors.c does its arithmetic in
its order, LANES codes at a time in L1 (several times faster; tests/test_mheight_minors.py
holds the two together).
"""

from __future__ import annotations

import ctypes
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from engine.fast.builder import KernelUnavailable, build
from engine.fast.switch import CpuKernels, say_once, use_c
from engine.mheight.minors import STATS, minor_stats_numpy, plan

SOURCE = Path(__file__).with_name("minors.c")


@cache
def _kernel() -> ctypes.CDLL:
    lib = build(SOURCE)
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.minor_stats.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, i64, ptr, i64, ctypes.c_float]
    lib.minor_stats.restype = None
    return lib


@lru_cache(maxsize=None)
def _c_plan(k: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``plan(k, r)`` as minors.c reads it: each size's entry and sub tables in one int32 array, starts, counts."""
    p = plan(k, r)
    tables = np.concatenate([np.concatenate([e.ravel(), s.ravel()]) for e, s in p.steps] or [np.empty(0)])
    return tables.astype(np.int32), p.starts.astype(np.int64), p.counts.astype(np.int64)


def minor_stats_c(P: np.ndarray, out: np.ndarray | None = None, scale: float = 1.0) -> np.ndarray:
    """``minor_stats_numpy(P) * scale`` through minors.c; KernelUnavailable when it cannot be built.

    ``out`` (a float32 (B, STATS * sizes) view, rows may be strided) receives the result: the kernel
    reads a view of padded codes and writes into a wider feature array in place, no copy on either side.
    """
    lib = _kernel()
    B, k, r = P.shape
    if P.dtype != np.float32 or P.strides[2] != 4:
        P = np.ascontiguousarray(P, dtype=np.float32)
    tables, starts, counts = _c_plan(k, r)
    if out is None:
        out = np.empty((B, STATS * len(counts)), dtype=np.float32)
    _check_out(out, B, STATS * len(counts))
    lib.minor_stats(P.ctypes.data, B, k, r, P.strides[0] // 4, P.strides[1] // 4, tables.ctypes.data,
                    starts.ctypes.data, counts.ctypes.data, len(counts), out.ctypes.data, out.strides[0] // 4, scale)
    return out


def minor_stats(P: np.ndarray, kernels: CpuKernels = "auto", out: np.ndarray | None = None,
                scale: float = 1.0) -> np.ndarray:
    """(B, STATS * min(k, n-k)) float32 statistics of P's (B, k, n-k) square minors, times ``scale``:
    minors.c when ``kernels`` is "auto" and it builds (the fallback said once), else the numpy definition.
    ``out`` as in :func:`minor_stats_c`."""
    if use_c(kernels):
        try:
            return minor_stats_c(P, out, scale)
        except KernelUnavailable as exc:
            say_once(f"note: minor features in numpy, several times slower ({exc})")
    stats = minor_stats_numpy(P)
    if out is None and scale == 1.0:
        return stats
    if out is None:
        out = np.empty(stats.shape, dtype=np.float32)
    _check_out(out, *stats.shape)
    np.multiply(stats, np.float32(scale), out=out)
    return out


def _check_out(out: np.ndarray, rows: int, cols: int) -> None:
    if out.dtype != np.float32 or out.shape != (rows, cols) or out.strides[1] != 4:
        raise ValueError(f"out must be float32 ({rows}, {cols}) with contiguous rows, not {out.dtype} {out.shape}")
