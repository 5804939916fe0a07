"""Wall-clock timing that excludes warm-up."""

from __future__ import annotations

import time

import torch


class Stopwatch:
    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.t0
