"""The gate: an MLP from posterior features to router logits, and the two routers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_MASK_LEVELS = 1 << 16  # dropout masks from 16-bit uniforms: p is exact to 1/65536


class GatingMLP(nn.Module):
    """features (n, D) -> router logits (n, E): Linear-ReLU-Dropout per hidden width, then Linear."""

    def __init__(self, num_features: int, num_experts: int, hidden: list[int], dropout: float):
        super().__init__()
        widths = [num_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], num_experts)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``masks`` (one per hidden layer, from :func:`dropout_masks`) replace F.dropout's own sampling."""
        for i, layer in enumerate(self.hidden):
            x = F.relu(layer(x))
            if self.training and self.dropout > 0:
                x = x * masks[i] if masks is not None else F.dropout(x, self.dropout, training=True)
        return self.out(x)


def dropout_masks(rng: np.random.Generator, n: int, widths: list[int], p: float,
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Inverted-dropout multipliers (0 or 1 / (1 - p)), float32 (n, width), for n samples and each hidden width.

    Why not F.dropout per batch: torch's CPU Bernoulli sampler was the largest
    single cost of a gating step (about 0.3 ms for a 128 x 256 batch), while
    raw 64-bit PCG64 output cut into 16-bit uniforms costs a few microseconds
    for a whole epoch's masks, drawn at once (one epoch ahead, on the worker thread).
    """
    drop_level = round(p * _MASK_LEVELS)
    scale = 1.0 / (1.0 - drop_level / _MASK_LEVELS)
    masks = []
    for w in widths:
        words = rng.bit_generator.random_raw((n * w + 3) // 4).view(np.uint16)[: n * w]
        keep = torch.from_numpy((words >= drop_level).view(np.uint8).reshape(n, w)).to(device)
        masks.append(keep.float().mul_(scale))
    return masks


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
                generator: torch.Generator | None = None, train: bool = True,
                noise: torch.Tensor | None = None) -> Routing:
    """Noisy top-k (Shazeer et al. 2017): noise only while training, softmax over the k kept, others 0.

    ``noise``: standard normal draws shaped as ``logits`` (training draws an epoch's at once);
    without it they are drawn here from ``generator``.
    """
    noisy = logits
    if train and noise_std > 0:
        if noise is None:
            noise = torch.randn(logits.shape, generator=generator, dtype=logits.dtype, device="cpu").to(logits.device)
        noisy = logits + noise_std * noise
    idx = noisy.topk(k, dim=-1).indices
    kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
    log_w = (noisy / temperature).masked_fill(~kept, float("-inf")).log_softmax(-1)
    return Routing(log_w.exp(), log_w, (logits / temperature).softmax(-1), kept)


def route(logits: torch.Tensor, kind: str, temperature: float, k: int = 1, noise_std: float = 0.0,
          generator: torch.Generator | None = None, train: bool = True, noise: torch.Tensor | None = None) -> Routing:
    if kind == "dense":
        return dense_route(logits, temperature)
    if kind == "top_k":
        return top_k_route(logits, temperature, k, noise_std, generator, train, noise)
    raise ValueError(f"unknown router {kind!r}")


@torch.inference_mode()
def gate_weights(model: GatingMLP, x: torch.Tensor, cfg, temperature: float, batch: int = 65536) -> torch.Tensor:
    """Routing weights (n, E) on the CPU, in eval mode (no dropout, no router noise)."""
    model.eval()
    out = [route(model(x[s : s + batch]), cfg.router, temperature, cfg.top_k, 0.0, train=False).weights.float().cpu()
           for s in range(0, len(x), batch)]
    return torch.cat(out)
