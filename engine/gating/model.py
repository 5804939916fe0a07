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


@dataclass
class KeepMasks:
    """Which hidden units dropout keeps, per hidden layer (uint8 0/1 (n, width)), and the 1 / (1 - p) a kept unit is scaled by."""

    keep: list[torch.Tensor]
    scale: float

    def split(self, sizes: list[int]) -> list["KeepMasks"]:
        """Consecutive row blocks of these sizes (one batch each), as views."""
        return [KeepMasks(list(block), self.scale) for block in zip(*(k.split(sizes) for k in self.keep))]

    def as_float(self) -> list[torch.Tensor]:
        """The inverted-dropout multipliers (0 or 1 / (1 - p)) that GatingMLP.forward takes."""
        return [k.float() * self.scale for k in self.keep]


def keep_masks(rng: np.random.Generator, n: int, widths: list[int], p: float, device: torch.device | str = "cpu") -> KeepMasks:
    """Dropout's masks for n samples and each hidden width, drawn at once.

    Why not F.dropout per batch: torch's CPU Bernoulli sampler was the largest
    single cost of a gating step (about 0.3 ms for a 128 x 256 batch), while
    raw 64-bit PCG64 output cut into 16-bit uniforms costs a few microseconds.
    The masks are uint8 (the bool comparison's bytes, no copy): multiplying by them
    costs what multiplying by floats does, while bool masks (masked_fill_, or
    multiplying by bool) were 6-10x slower; the training step folds the scale into
    its matrix products.
    """
    drop_level = round(p * _MASK_LEVELS)
    keep = []
    for w in widths:
        words = rng.bit_generator.random_raw((n * w + 3) // 4).view(np.uint16)[: n * w]
        keep.append(torch.from_numpy((words >= drop_level).view(np.uint8).reshape(n, w)).to(device))
    return KeepMasks(keep, 1.0 / (1.0 - drop_level / _MASK_LEVELS))


def dropout_masks(rng: np.random.Generator, n: int, widths: list[int], p: float, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Inverted-dropout multipliers (0 or 1/(1-p)) for n samples and each hidden width (see keep_masks)."""
    return keep_masks(rng, n, widths, p, device).as_float()


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


@torch.inference_mode()
def gate_weights(model: GatingMLP, x: torch.Tensor, cfg, temperature: float, batch: int = 65536) -> torch.Tensor:
    """Routing weights (n, E) on the CPU, in eval mode (no dropout, no router noise)."""
    model.eval()
    out = [route(model(x[s : s + batch]), cfg.router, temperature, cfg.top_k, 0.0, train=False).weights.float().cpu()
           for s in range(0, len(x), batch)]
    return torch.cat(out)
