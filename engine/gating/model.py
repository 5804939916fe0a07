"""The gate: an MLP from posterior features to router logits, and the two routers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


class GatingMLP(nn.Module):
    """features (n, D) -> router logits (n, E): Linear-ReLU-Dropout per hidden width, then Linear."""

    def __init__(self, num_features: int, num_experts: int, hidden: list[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_experts))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Routing:
    weights: torch.Tensor  # (n, E), rows sum to 1; zero outside the kept experts for top_k
    log_weights: torch.Tensor  # (n, E), -inf outside the kept experts
    dense_probs: torch.Tensor  # (n, E) softmax(logits / T) before any masking: the P_e of load balancing
    kept: torch.Tensor | None  # (n, E) bool for top_k, None for dense


def router_temperature(epoch: int, epochs: int, start: float, end: float) -> float:
    """Linear annealing from ``start`` at epoch 1 to ``end`` at the last epoch (1-based epochs)."""
    frac = (epoch - 1) / (epochs - 1) if epochs > 1 else 1.0
    return start + (end - start) * frac


def dense_route(logits: torch.Tensor, temperature: float) -> Routing:
    log_w = (logits / temperature).log_softmax(-1)
    w = log_w.exp()
    return Routing(w, log_w, w, None)


def top_k_route(logits: torch.Tensor, temperature: float, k: int, noise_std: float,
                generator: torch.Generator | None = None, train: bool = True) -> Routing:
    """Noisy top-k (Shazeer et al. 2017): noise only while training, softmax over the k kept, others 0."""
    noisy = logits
    if train and noise_std > 0:
        noise = torch.randn(logits.shape, generator=generator, dtype=logits.dtype, device="cpu").to(logits.device)
        noisy = logits + noise_std * noise
    idx = noisy.topk(k, dim=-1).indices
    kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
    log_w = (noisy / temperature).masked_fill(~kept, float("-inf")).log_softmax(-1)
    return Routing(log_w.exp(), log_w, (logits / temperature).softmax(-1), kept)


def route(logits: torch.Tensor, kind: str, temperature: float, k: int = 1, noise_std: float = 0.0,
          generator: torch.Generator | None = None, train: bool = True) -> Routing:
    if kind == "dense":
        return dense_route(logits, temperature)
    if kind == "top_k":
        return top_k_route(logits, temperature, k, noise_std, generator, train)
    raise ValueError(f"unknown router {kind!r}")
