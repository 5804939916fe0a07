"""Finding and loading trained experts, with the messages for the mistakes users make most.

A checkpoint of ``train-expert`` carries what rebuilds it: arch, loss, number
of classes, input channels, the split fingerprint and the full config.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from engine.common.checkpoint import load_checkpoint
from engine.core.errors import JobError
from engine.core.rundir import read_json


def find_checkpoint(source: str, prefix: str) -> Path:
    """A checkpoint file, or ``<prefix><loss>.pth`` in a train-expert run directory."""
    p = Path(source).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        run = read_json(p / "run.json") or {}
        loss = (run.get("config") or {}).get("loss")
        if loss and (folder / f"{prefix}{loss}.pth").is_file():
            return folder / f"{prefix}{loss}.pth"
        found = sorted(folder.glob(f"{prefix}*.pth"))
        if len(found) == 1:
            return found[0]
        have = ", ".join(sorted(x.name for x in folder.glob("*.pth"))) or "no .pth files"
        if not found:
            state = (read_json(p / "status.json") or {}).get("state")
            hint = f" (the run is {state})" if state and state != "succeeded" else ""
            raise JobError(f"no {prefix}*.pth in {folder}{hint}; it holds: {have}; "
                           f"pick another --checkpoint-prefix or pass a .pth file")
        raise JobError(f"several {prefix}*.pth in {folder} ({have}); pass the .pth file you mean")
    near = sorted(x.name for x in p.parent.glob("*.pth")) if p.parent.is_dir() else []
    have = f"; {p.parent} holds: {', '.join(near)}" if near else ""
    raise JobError(f"expert {source} not found (neither a run directory nor a checkpoint file){have}")


def read_expert(path: Path, device: torch.device | str = "cpu") -> dict:
    ckpt = load_checkpoint(path, map_location=device)
    if "model" not in ckpt and "state_dict" in ckpt:
        ckpt["model"] = ckpt["state_dict"]  # layout of the original training scripts
    if not isinstance(ckpt.get("model"), dict):
        raise JobError(f"checkpoint {path} holds no model weights (keys: {', '.join(sorted(ckpt))[:200]})")
    # DataParallel checkpoints prefix every key with "module."
    ckpt["model"] = {re.sub(r"^module\.", "", k): v for k, v in ckpt["model"].items()}
    if "config" not in ckpt or "arch" not in ckpt:
        raise JobError(f"checkpoint {path} has no moe-tui metadata (arch, config); recompute needs a train-expert "
                       "checkpoint (best_*.pth or final_calibrated_*.pth)")
    return ckpt


def guess_arch(state: dict[str, torch.Tensor]) -> str:
    """Name the architecture a state dict looks like, from its keys and widths."""
    prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""
    head = " with an MoE head" if any(k.startswith("fc.gate.") for k in state) else ""
    if any(k.startswith(f"{prefix}body.layer4.") for k in state):
        return f"resnet50{head}"
    blocks = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}layers\.(\d+)\.", k))}
    conv1 = state.get(f"{prefix}conv1.weight")
    width = int(conv1.shape[0]) if conv1 is not None else None
    if width == 64 and len(blocks) == 8:
        return f"resnet18{head}"
    if width == 16 and blocks:
        n = len(blocks) // 3
        return f"resnet{6 * n + 2}{head}"
    return "an unknown architecture"


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str, num_classes: int,
                 data_name: str) -> None:
    """``load_state_dict`` with a one-line cause for each way a checkpoint can fail to fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "") if keys else "none"

        raise JobError(f"checkpoint {path} does not fit {arch}: missing keys {few(missing)}; unexpected keys "
                       f"{few(unexpected)}; it looks like {guess_arch(state)}")
    for key in ("fc.weight", "fc.experts.0.2.weight"):
        if key in own and own[key].shape != state[key].shape:
            c_ck, w_ck = state[key].shape
            c_me, w_me = own[key].shape
            if w_ck != w_me:
                raise JobError(f"classifier size mismatch in {path}: {key} is {c_ck}x{w_ck}, a {w_ck}-wide backbone, "
                               f"but {arch} gives {w_me}-wide features; it looks like {guess_arch(state)}")
            raise JobError(f"classifier size mismatch in {path}: {key} has {c_ck} classes but {data_name} has "
                           f"{num_classes}; use the data set the expert was trained on")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise JobError(f"checkpoint {path} does not fit {arch}: {k} is {tuple(state[k].shape)}, expected "
                       f"{tuple(own[k].shape)}; it looks like {guess_arch(state)}")
    model.load_state_dict(state)
