"""The one switch of the optional C kernels: ``--cpu-kernels auto|off`` on the jobs that use them.

Standard library only: the job configs (torch- and numpy-free, the manager loads
them) take their field's type and help from here.
"""

from __future__ import annotations

from typing import Literal

CpuKernels = Literal["auto", "off"]
HELP = ("C kernels on a CPU (m-height minor features; the forward pass of fc nets with --no-norm --act relu and "
        "sparse MoEs of them with --gate-hidden 0): 'auto' runs them where a C compiler works, 'off' never "
        "(numpy/torch, the definition; also what runs on a GPU)")

_said: set[str] = set()


def use_c(choice: CpuKernels, device_type: str = "cpu") -> bool:
    """Whether to try a C kernel: asked for, and the data is on the CPU (a GPU runs torch)."""
    if choice not in ("auto", "off"):
        raise ValueError(f"cpu kernels {choice!r}: choose auto or off")
    return choice == "auto" and device_type == "cpu"


def say_once(line: str) -> None:
    """Print ``line`` the first time this process says it: a kernel that falls back on every batch says so once."""
    if line not in _said:
        _said.add(line)
        print(line, flush=True)
