"""Training losses of the long-tail experts.

Each takes raw logits; the prior-based ones shift the logits only inside the
loss, so the trained model's raw logits are already balanced at test time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_adjusted_ce(logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """Menon et al. 2021, eq. 10: CE on logits + tau * log pi_y."""
    return F.cross_entropy(logits + tau * log_prior, targets)


def balanced_softmax_ce(logits: torch.Tensor, targets: torch.Tensor, log_counts: torch.Tensor) -> torch.Tensor:
    """Ren et al. 2020: CE on logits + log n_y (the prior shift up to a constant)."""
    return F.cross_entropy(logits + log_counts, targets)


def make_loss(loss: str, class_counts: list[int], tau: float, device: torch.device):
    """``(logits, targets) -> loss`` for a config's ``loss`` (decoupling and moe_head train with CE)."""
    counts = torch.tensor(class_counts, dtype=torch.float32, device=device).clamp(min=1)
    if loss == "logit_adjust":
        log_prior = (counts / counts.sum()).log()
        return lambda z, y: logit_adjusted_ce(z.float(), y, log_prior, tau)
    if loss == "balanced_softmax":
        log_counts = counts.log()
        return lambda z, y: balanced_softmax_ce(z.float(), y, log_counts)
    return lambda z, y: F.cross_entropy(z.float(), y)
