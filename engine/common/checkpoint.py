"""Checkpoints: written atomically, read without unpickling code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.core.errors import JobError
from engine.core.rundir import atomic_write


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """Atomically: a crash never leaves half a checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.pth")) if path.parent.is_dir() else []
        have = f"; found: {', '.join(near)}" if near else ""
        raise JobError(f"checkpoint {path} not found{have}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JobError(f"checkpoint {path} cannot be read ({first}); it is truncated, corrupted or not a moe-tui checkpoint") from None
