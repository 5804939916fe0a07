"""A mixture-of-experts classifier head on a backbone's features.

features -> linear gate -> softmax -> keep the top-k experts per image
(renormalised) -> E expert MLPs -> sum of the kept experts' logits weighted
by their gate values (Shazeer et al. 2017). The load-balance term is the
Switch Transformer's (Fedus et al. 2021): E * sum_e f_e * P_e, with f_e the
share of routing slots sent to expert e and P_e its mean gate probability;
it is 1 when the load is uniform and grows as routing collapses.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MoEHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, experts: int, top_k: int, hidden: int):
        super().__init__()
        if top_k > experts:
            raise ValueError(f"top_k {top_k} exceeds the number of experts {experts}")
        self.top_k = top_k
        self.gate = nn.Linear(in_dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
            for _ in range(experts)
        )
        # Default (random) gate init: a zero gate would tie every score and top-k would route all to experts 0..k-1.
        self.aux_loss = torch.zeros(())
        self.last_load = torch.zeros(experts)  # mean routing weight per expert in the last batch
        self.last_top1 = torch.zeros(experts)  # share of the last batch's images whose largest weight is that expert's

    @property
    def expert_names(self) -> list[str]:
        """The names the expert_load event and the TUI's plot give the experts."""
        return [f"e{i}" for i in range(len(self.experts))]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.gate(feats).float(), dim=1)  # (N, E)
        top_w, top_i = probs.topk(self.top_k, dim=1)
        weights = torch.zeros_like(probs).scatter_(1, top_i, top_w / top_w.sum(1, keepdim=True))
        # Every expert on every image keeps the code simple and batched; E is small, the MLPs are tiny next to the backbone.
        outs = torch.stack([e(feats) for e in self.experts], dim=1)  # (N, E, C)
        logits = (weights.to(outs.dtype).unsqueeze(2) * outs).sum(1)
        dispatch = torch.zeros_like(probs).scatter_(1, top_i, 1.0)
        frac = dispatch.mean(0) / self.top_k  # f_e: share of routing slots, sums to 1
        self.aux_loss = len(self.experts) * (frac * probs.mean(0)).sum()
        self.last_load = weights.detach().mean(0)
        self.last_top1 = F.one_hot(top_i[:, 0], len(self.experts)).float().mean(0)
        return logits


class BackboneWithMoEHead(nn.Module):
    """A backbone whose ``fc`` is replaced by an MoE head (so checkpoints stay backbone-shaped)."""

    def __init__(self, backbone: nn.Module, num_classes: int, experts: int, top_k: int, hidden: int):
        super().__init__()
        self.backbone = backbone
        backbone.fc = nn.Identity()
        self.feature_dim = backbone.feature_dim
        self.fc = MoEHead(backbone.feature_dim, num_classes, experts, top_k, hidden)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
