"""The gating step's C kernels (kernels.c), built by :mod:`engine.fast.builder`, and the structs they take."""

from __future__ import annotations

import ctypes
import platform
from functools import cache
from pathlib import Path

from engine.fast.builder import KernelUnavailable as NativeUnavailable
from engine.fast.builder import build

SOURCE = Path(__file__).with_name("kernels.c")

__all__ = ["NativeUnavailable", "load", "sgemm", "LossArgs", "StepArgs", "MAX_LAYERS"]


@cache
def load() -> ctypes.CDLL:
    """The kernels, built first if this machine has no build of this source yet."""
    lib = build(SOURCE)
    lib.gate_steps.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.gate_steps.restype = None
    return lib


@cache
def sgemm() -> int:
    """The address of the sgemm_ that torch's CPU library exports (MKL's in the x86 wheels),
    so the step's matrix products are the kernels torch.addmm runs on this machine."""
    import torch

    path = Path(torch.__file__).parent / "lib" / ("libtorch_cpu" + (".dylib" if platform.system() == "Darwin" else ".so"))
    try:
        return ctypes.cast(ctypes.CDLL(str(path)).sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError) as exc:
        raise NativeUnavailable(f"this torch build exports no BLAS sgemm_ from {path.name} ({exc})") from exc


class LossArgs(ctypes.Structure):
    """kernels.c's LossArgs, field for field."""

    _fields_ = [(name, ctypes.c_int64) for name in ("E", "G", "k", "top_k", "lb", "entropy", "prior", "resp_tempered")] \
        + [(name, ctypes.c_float) for name in ("inv_t", "lb_coef", "inv_resp_t")] \
        + [(name, ctypes.c_void_p) for name in (
            "z", "grad", "bias_grad", "noise", "logp", "neg_r_coef", "prior_coef", "inv_count", "log_prior",
            "ent_coef", "resp_coef", "group", "weights", "resp", "mean_w", "slots", "dense_mean")]


MAX_LAYERS = 16  # kernels.c: the MLP's layers, hidden and output


class StepArgs(ctypes.Structure):
    """kernels.c's StepArgs, field for field."""

    _fields_ = [("sgemm", ctypes.c_void_p), ("layers", ctypes.c_int64), ("width", ctypes.c_int64 * (MAX_LAYERS + 1))] \
        + [(name, ctypes.c_void_p * MAX_LAYERS) for name in ("weight", "bias", "weight_grad", "bias_grad", "act", "gin")] \
        + [("x", ctypes.c_void_p), ("keep", ctypes.c_void_p * MAX_LAYERS), ("scale", ctypes.c_float)] \
        + [(name, ctypes.c_void_p) for name in ("p", "g", "m", "v")] \
        + [("n_params", ctypes.c_int64), ("step", ctypes.c_int64)] \
        + [(name, ctypes.c_double) for name in ("lr", "weight_decay", "beta1", "beta2", "eps", "max_norm")] \
        + [("loss", LossArgs)]
