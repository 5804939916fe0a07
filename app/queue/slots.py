"""Slots: which GPUs this machine has, and which run may start where.

A run asks for ``g`` GPUs. ``g = 0`` takes one of ``cpu_slots`` CPU slots and
sees no GPU; ``g > 0`` takes one share on each of ``g`` distinct GPUs, each
GPU holding ``runs_per_gpu`` shares. GPUs are numbered as ``nvidia-smi``
numbers them (PCI bus order), which is why every run also gets
``CUDA_DEVICE_ORDER=PCI_BUS_ID``: without it CUDA orders by speed and
``CUDA_VISIBLE_DEVICES=1`` could mean another card.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache

GPUS_ENV = "MOE_TUI_GPUS"  # "0,1": use these GPU indices; "none": act as if there were none


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str = ""
    memory_mib: int | None = None


def _from_nvml() -> list[Gpu] | None:
    try:
        import pynvml  # optional; nvidia-smi gives the same answer a little slower
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVMLError subclasses
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // (1 << 20)
            out.append(Gpu(i, name.decode() if isinstance(name, bytes) else name, int(mem)))
        return out
    finally:
        pynvml.nvmlShutdown()


def _from_nvidia_smi() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []  # driver not loaded: treat as a machine without GPUs
    gpus = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            gpus.append(Gpu(int(parts[0]), parts[1], int(parts[2]) if parts[2].isdigit() else None))
    return gpus


@lru_cache(maxsize=1)
def discover_gpus() -> tuple[Gpu, ...]:
    """This machine's GPUs: ``$MOE_TUI_GPUS`` if set, else NVML, else nvidia-smi."""
    forced = os.environ.get(GPUS_ENV)
    if forced is not None:
        if forced.strip().lower() in ("", "none"):
            return ()
        return tuple(Gpu(int(i)) for i in forced.split(",") if i.strip())
    found = _from_nvml()
    if found is None:
        found = _from_nvidia_smi()
    return tuple(found)


@dataclass
class Occupancy:
    """Shares in use: per GPU index, and CPU slot numbers."""

    gpu: dict[int, int] = field(default_factory=dict)
    cpu: set[int] = field(default_factory=set)
    running: int = 0

    def take(self, slots: str | None) -> None:
        self.running += 1
        kind, _, ids = (slots or "").partition(":")
        if kind == "gpu":
            for i in ids.split(","):
                self.gpu[int(i)] = self.gpu.get(int(i), 0) + 1
        elif kind == "cpu" and ids:
            self.cpu.add(int(ids))


def allocate(gpus: int, devices: tuple[Gpu, ...], occ: Occupancy, cpu_slots: int, runs_per_gpu: int) -> str | None:
    """A slot string for a run asking for ``gpus`` GPUs, or None if none is free now.

    Picks the least-loaded GPUs (lowest index on ties) so runs spread out
    before they share; records the choice in ``occ``.
    """
    if gpus == 0:
        free = [i for i in range(cpu_slots) if i not in occ.cpu]
        if not free:
            return None
        slots = f"cpu:{free[0]}"
    else:
        open_ = sorted((occ.gpu.get(d.index, 0), d.index) for d in devices if occ.gpu.get(d.index, 0) < runs_per_gpu)
        if len(open_) < gpus:
            return None
        slots = "gpu:" + ",".join(str(i) for _, i in sorted(open_[:gpus], key=lambda t: t[1]))
    occ.take(slots)
    return slots


def slot_env(slots: str | None, cpu_slots: int = 1, cores: int | None = None,
             environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that pins a run to its slot."""
    kind, _, ids = (slots or "").partition(":")
    # A CPU run sees no GPU, so it cannot take memory on a card another run owns.
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ids if kind == "gpu" else ""}
    if kind == "cpu" and "OMP_NUM_THREADS" not in (os.environ if environ is None else environ):
        # Its share of the cores: torch's default (every core) in each of several CPU runs makes
        # OpenMP threads spin against each other, and a small conv runs ~100x slower on 2 cores.
        env["OMP_NUM_THREADS"] = str(max(1, (cores or os.cpu_count() or 1) // max(1, cpu_slots)))
    return env
