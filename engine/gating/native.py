"""The C kernels of the gating step (kernels.c): built once per machine with the system compiler, loaded with ctypes.

Why at run time and not at install: the kernels are compiled for the CPU they
run on (-march=native), and a cluster's login node and compute nodes differ;
the build is keyed by the source, the flags and the CPU, so nodes sharing a
home directory each get their own. A missing or failing compiler is not an
error under ``--cpu-step auto``: the job says so and uses the torch step.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sysconfig
import tempfile
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.c")
# -O3 for vectorised loops; -fno-math-errno lets sqrtf vectorise (nothing reads errno); no
# -ffast-math: top-k routing relies on -inf, and sums keep their order (the norm has its own lanes)
FLAGS = ("-O3", "-fno-math-errno", "-std=c11", "-shared", "-fPIC")
# tried in order: the CPU's own instructions, then portable code for compilers without the flag
# (512-bit vectors, -mprefer-vector-width=512, measured no faster: AdamW's pass is memory-bound)
ARCH_FLAGS = (("-march=native",), ())
COMPILE_TIMEOUT_S = 120


class NativeUnavailable(RuntimeError):
    """The kernels could not be built or loaded; the message says why in one line."""


def cache_dir() -> Path:
    """$MOE_TUI_CACHE, else $XDG_CACHE_HOME/moe-tui, else ~/.cache/moe-tui."""
    if os.environ.get("MOE_TUI_CACHE"):
        return Path(os.environ["MOE_TUI_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moe-tui"


def compiler() -> list[str]:
    """$CC, else the compiler Python was built with, else cc."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return platform.machine() + "\n".join(sorted(set(lines)))


def _build(target: Path, cc: list[str]) -> None:
    """Compile into a temporary file beside ``target`` and rename it: concurrent jobs never load a half-written library."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.stem, suffix=".so.tmp", dir=target.parent)
    except OSError as exc:
        raise NativeUnavailable(f"cannot write to {target.parent} ({exc.strerror}); set MOE_TUI_CACHE to a "
                                "writable folder") from exc
    os.close(fd)
    errors = []
    try:
        for arch in ARCH_FLAGS:
            cmd = [*cc, *FLAGS, *arch, "-o", tmp, str(SOURCE), "-lm"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise NativeUnavailable(f"C compiler {cc[0]!r} failed to run ({exc}); install gcc or set CC") from exc
            if proc.returncode == 0:
                os.replace(tmp, target)
                return
            errors.append((proc.stderr.strip().splitlines() or ["no message"])[-1])
        raise NativeUnavailable(f"C compiler {cc[0]!r} could not build {SOURCE.name}: {errors[-1]}")
    finally:
        Path(tmp).unlink(missing_ok=True)


@cache
def load() -> ctypes.CDLL:
    """The kernels, built first if this machine has no build of this source yet."""
    cc = compiler()
    key = hashlib.sha256(SOURCE.read_bytes() + repr((cc, FLAGS, ARCH_FLAGS)).encode() + _cpu_id().encode()).hexdigest()[:16]
    target = cache_dir() / f"gating-kernels-{key}.so"
    if not target.exists():
        _build(target, cc)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise NativeUnavailable(f"could not load {target} ({exc}); delete it to rebuild") from exc
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
