"""Pieces every training job shares: device, seeding, schedules, batches."""

from __future__ import annotations

import random
import time
from typing import Iterator

import torch

from engine.data.augment import random_crop_flip
from engine.data.images import TensorSplit
from engine.run import JobError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise JobError(f"device '{name}' asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise JobError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global RNGs and return a generator for data order and augmentation."""
    random.seed(seed)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def prepare_job(cfg) -> tuple[torch.device, torch.Generator]:
    """What every training job does first: CPU threads, device, seeds.

    ``cfg`` has ``threads`` (None: torch's choice), ``device`` and ``seed``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return pick_device(cfg.device), seed_everything(cfg.seed)


def warmup_multistep(warmup_epochs: int, milestones: list[int], gamma: float):
    """LR factor per epoch: linear warm-up to 1, then x gamma at each milestone."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        return gamma ** sum(epoch >= m for m in milestones)

    return factor


class DeviceImages:
    """A split living on the device as uint8, served as normalised float batches.

    Keeping CIFAR-sized sets on the device and augmenting whole batches there
    removes the per-sample Python of a DataLoader from the hot path.
    """

    def __init__(self, split: TensorSplit, device: torch.device, mean, std, channels_last: bool = False):
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        self.device = device
        c = len(mean)
        self.mean = torch.tensor(mean, device=device).view(1, c, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, c, 1, 1) * 255
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.y)

    def _prepare(self, xb: torch.Tensor) -> torch.Tensor:
        xb = (xb.float() - self.mean) / self.std
        return xb.contiguous(memory_format=torch.channels_last) if self.channels_last else xb

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool, hflip: bool,
                      balanced: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches of one epoch; ``balanced`` draws every class equally often (with replacement)."""
        if balanced:
            counts = torch.bincount(self.y.cpu()).double()
            weights = (1.0 / counts)[self.y.cpu()]
            order = torch.multinomial(weights, len(self), replacement=True, generator=gen).to(self.device)
        else:
            order = torch.randperm(len(self), generator=gen).to(self.device)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single image
                break
            xb = self.x[idx]
            if augment:
                xb = random_crop_flip(xb, pad=max(1, xb.shape[-1] // 8), flip=hflip, gen=gen)
            yield self._prepare(xb), self.y[idx]

    def eval_batches(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # On a CPU, batches whose activations fit the cache run about twice as fast as batches of 512.
        batch_size = batch_size or (1024 if self.device.type == "cuda" else 64)
        for start in range(0, len(self), batch_size):
            yield self._prepare(self.x[start : start + batch_size]), self.y[start : start + batch_size]


def make_feed(data, split: str, device: torch.device, channels_last: bool = False, image_size: int | None = None,
              workers: int = 4):
    """Batches of one split: on the device for tensor data sets, through a DataLoader for file lists."""
    if data.streamed:
        from engine.data.stream import StreamedImages

        return StreamedImages(data.splits[split], device, data.mean, data.std, image_size or 224, data.hflip,
                              workers, channels_last)
    return DeviceImages(data.splits[split], device, data.mean, data.std, channels_last=channels_last)


def cpu_has_bf16_units() -> bool:
    """AMX tiles (Intel Sapphire Rapids and later): bf16 convolutions run 2-3x faster than fp32 there.

    Elsewhere bf16 on a CPU is emulated and slower than fp32, so it stays off.
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe and probe())
    except RuntimeError:
        return False


def uses_bf16(device: torch.device, amp: bool) -> bool:
    return amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_units()))


def uses_channels_last(device: torch.device, amp: bool) -> bool:
    """channels_last pays off with cuDNN and with oneDNN's bf16 kernels, not with plain fp32 CPU code."""
    return device.type == "cuda" or uses_bf16(device, amp)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on a GPU and on CPUs with bf16 units; a no-op elsewhere."""
    import contextlib

    if uses_bf16(device, enabled):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Stopwatch:
    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.t0
