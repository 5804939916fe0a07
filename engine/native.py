"""C kernels of the engine, built once per machine with the system compiler and loaded with ctypes.

Why at run time and not at install: the kernels are compiled for the CPU they
run on (-march=native), and a cluster's login node and compute nodes differ;
a build is keyed by its source, the compiler, the flags and the CPU, so nodes
sharing a home directory each get their own. A missing or failing compiler is
not an error for a caller that has a torch or numpy twin of the kernel: it
says so and runs that. Every C kernel has such a twin, which stays the
definition, and a test holding the two together.
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

# -O3 for vectorised loops; -fno-math-errno lets sqrtf vectorise (nothing reads errno); -std=c11
# (ISO mode) keeps a * b + c two roundings, as numpy and torch do them, where GNU C would fuse
# them; no -ffast-math: kernels rely on -inf and on sums keeping their order
FLAGS = ("-O3", "-fno-math-errno", "-std=c11", "-shared", "-fPIC")
# tried in order: the CPU's own instructions, then portable code for compilers without the flag
# (512-bit vectors, -mprefer-vector-width=512, measured no faster for the gating step)
ARCH_FLAGS = (("-march=native",), ())
COMPILE_TIMEOUT_S = 120


class NativeUnavailable(RuntimeError):
    """A kernel could not be built or loaded; the message says why in one line."""


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


def _build(source: Path, target: Path, cc: list[str]) -> None:
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
            cmd = [*cc, *FLAGS, *arch, "-o", tmp, str(source), "-lm"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise NativeUnavailable(f"C compiler {cc[0]!r} failed to run ({exc}); install gcc or set CC") from exc
            if proc.returncode == 0:
                os.replace(tmp, target)
                return
            errors.append((proc.stderr.strip().splitlines() or ["no message"])[-1])
        raise NativeUnavailable(f"C compiler {cc[0]!r} could not build {source.name}: {errors[-1]}")
    finally:
        Path(tmp).unlink(missing_ok=True)


def build(source: Path) -> ctypes.CDLL:
    """``source`` as a loaded library, built first if this machine has no build of it yet.
    Cached per process, a failure too (callers on a hot path, such as the m-height features
    per batch, would otherwise run the compiler again on every call); ``build.cache_clear()``
    makes the next call look again."""
    outcome = _attempt(source)
    if isinstance(outcome, NativeUnavailable):
        raise outcome
    return outcome


@cache
def _attempt(source: Path) -> ctypes.CDLL | NativeUnavailable:
    try:
        return _load(source)
    except NativeUnavailable as exc:
        return exc


build.cache_clear = _attempt.cache_clear  # type: ignore[attr-defined]


def _load(source: Path) -> ctypes.CDLL:
    cc = compiler()
    key = hashlib.sha256(source.read_bytes() + repr((cc, FLAGS, ARCH_FLAGS)).encode() + _cpu_id().encode())
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _build(source, target, cc)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise NativeUnavailable(f"could not load {target} ({exc}); delete it to rebuild") from exc
