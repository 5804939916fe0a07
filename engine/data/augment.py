"""Batched augmentation on the device: no per-sample Python on the hot path."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding, plus an optional random horizontal flip.

    Equivalent to torchvision's RandomCrop(size, padding=pad) and
    RandomHorizontalFlip(), applied to a whole (N, C, H, W) batch at once.
    """
    n, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device="cpu").to(dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device="cpu").to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (N,1,H,1)
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (N,1,1,W)
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mirror = torch.rand(n, generator=gen, device="cpu").to(dev) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x
