"""An expert network: built from its train-expert config, run over a split."""

from __future__ import annotations

import torch
import torch.nn as nn

from engine.common.device import autocast
from engine.core.errors import JobError
from engine.longtail.config import TrainExpertConfig
from engine.longtail.models import build_network


def build_expert(cfg: TrainExpertConfig, num_classes: int, in_channels: int) -> nn.Module:
    moe = None
    if cfg.loss == "moe_head":
        if cfg.moe_top_k > cfg.moe_experts:
            raise JobError(f"--moe-top-k {cfg.moe_top_k} exceeds --moe-experts {cfg.moe_experts}; lower it")
        moe = {"experts": cfg.moe_experts, "top_k": cfg.moe_top_k, "hidden": cfg.moe_hidden}
    return build_network(cfg.arch, num_classes, in_channels, moe)


@torch.inference_mode()
def predict(model: nn.Module, feed, amp: bool = False, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, targets = [], []
    batches = feed.eval_batches(batch_size) if batch_size else feed.eval_batches()
    for xb, yb in batches:
        with autocast(feed.device, amp):
            out = model(xb)
        logits.append(out.float().cpu())
        targets.append(yb.cpu())
    return torch.cat(logits), torch.cat(targets)
