"""C kernels of the engine, built once per machine with the system compiler and loaded with ctypes.

Why at run time and not at install: the kernels are compiled for the CPU they
run on (-march=native), and a cluster's login node and compute nodes differ;
a build is keyed by its source, the compiler and its flags, the CPU and the
Python ABI, so nodes (and interpreters) sharing a home directory each get their
own. A missing or failing compiler is not an error for a caller that has a
torch or numpy twin of the kernel: it says so and runs that. Every C kernel
has such a twin, which stays the definition, and a test holding the two together.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from functools import cache
from pathlib import Path

from engine.core.rundir import atomic_write

# -O3 for vectorised loops; -fno-math-errno lets sqrtf vectorise (nothing reads errno); -std=c11
# (ISO mode) keeps a * b + c two roundings, as numpy and torch do them, where GNU C would fuse
# them; no -ffast-math: kernels rely on -inf and on sums keeping their order
FLAGS = ("-O3", "-fno-math-errno", "-std=c11", "-shared", "-fPIC")
# tried in order: the CPU's own instructions, then portable code for compilers without the flag
ARCH_FLAGS = (("-march=native",), ())
COMPILE_TIMEOUT_S = 120


class KernelUnavailable(RuntimeError):
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


def _python_abi() -> str:
    # the kernels call no Python API today; keyed anyway so that a kernel that someday does is
    # never loaded into an interpreter it was not built for
    return f"{sys.implementation.cache_tag} {sysconfig.get_config_var('SOABI')}"


def cache_key(source: Path, cc: list[str]) -> str:
    key = hashlib.sha256(source.read_bytes())
    key.update(repr((cc, FLAGS, ARCH_FLAGS, _python_abi())).encode() + _cpu_id().encode())
    return key.hexdigest()[:16]


def _build(source: Path, target: Path, cc: list[str]) -> None:
    """Compile in a temporary folder, then publish with the one atomic write: a job that loads
    ``target`` while another builds it sees the whole library or none, and a build killed midway
    leaves nothing in the cache."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KernelUnavailable(f"cannot write to {target.parent} ({exc.strerror}); set MOE_TUI_CACHE to a "
                                "writable folder") from exc
    errors = []
    with tempfile.TemporaryDirectory(prefix="moe-tui-build-") as tmp:
        built = Path(tmp) / target.name
        for arch in ARCH_FLAGS:
            cmd = [*cc, *FLAGS, *arch, "-o", str(built), str(source), "-lm"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise KernelUnavailable(f"C compiler {cc[0]!r} failed to run ({exc}); install gcc or set CC") from exc
            if proc.returncode == 0:
                try:
                    atomic_write(target, built.read_bytes())
                except OSError as exc:
                    raise KernelUnavailable(f"cannot write {target} ({exc.strerror}); set MOE_TUI_CACHE to a "
                                            "writable folder") from exc
                return
            errors.append((proc.stderr.strip().splitlines() or ["no message"])[-1])
    raise KernelUnavailable(f"C compiler {cc[0]!r} could not build {source.name}: {errors[-1]}")


def build(source: Path) -> ctypes.CDLL:
    """``source`` as a loaded library, built first if this machine has no build of it yet.
    Cached per process, a failure too (callers on a hot path, such as the m-height features
    per batch, would otherwise run the compiler again on every call); ``build.cache_clear()``
    makes the next call look again."""
    outcome = _attempt(source)
    if isinstance(outcome, KernelUnavailable):
        raise outcome
    return outcome


@cache
def _attempt(source: Path) -> ctypes.CDLL | KernelUnavailable:
    try:
        return _load(source)
    except KernelUnavailable as exc:
        return exc


build.cache_clear = _attempt.cache_clear  # type: ignore[attr-defined]


def _load(source: Path) -> ctypes.CDLL:
    cc = compiler()
    target = cache_dir() / f"{source.stem}-{cache_key(source, cc)}.so"
    if not target.exists():
        _build(source, target, cc)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelUnavailable(f"could not load {target} ({exc}); delete it to rebuild") from exc
