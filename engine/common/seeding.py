"""Seeding: one generator a job threads through data order and augmentation."""

from __future__ import annotations

import random

import torch

from engine.common.device import pick_device


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


