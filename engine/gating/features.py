"""Class-count independent features of the experts' posteriors (D = 7E + 3).

Per expert e, from its softmax p_e over the C classes:
  entropy H(p_e); top-k mass (k = min(5, C)); residual mass 1 - top-k mass;
  max probability; top1 - top2 gap; cosine similarity to the mean posterior
  p_bar = mean_e p_e; KL(p_e || p_bar).
Global: entropy of p_bar; mean over classes of the variance across experts;
spread (max - min) of the experts' max probabilities.

The experts are frozen, so this runs once per split, in row chunks: the
float64 work for C=8142 stays within ``chunk_mb`` and the logits are turned
into float32 probabilities in place (the mixture needs them later) instead of
keeping a second copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.gating.data import SplitLogits

TOPK_MASS = 5  # classes in the "top-k mass" feature (capped at C)
PER_EXPERT = ("entropy", "topk_mass", "residual_mass", "max_prob", "top12_gap", "cos_to_mean", "kl_to_mean")
GLOBAL = ("mean_entropy", "class_variance", "max_prob_spread")


def feature_names(experts: list[str]) -> list[str]:
    return [f"{e}/{f}" for e in experts for f in PER_EXPERT] + list(GLOBAL)


def num_features(num_experts: int) -> int:
    return len(PER_EXPERT) * num_experts + len(GLOBAL)


@dataclass
class PreparedSplit:
    """What training and evaluation need from a split, computed once."""

    name: str
    experts: list[str]
    features: torch.Tensor  # float32 (N, 7E+3), not normalised
    logp_target: torch.Tensor  # float32 (N, E): log p_e(y_i), exact from float64 log-softmax
    expert_pred: torch.Tensor  # int64 (N, E): each expert's argmax
    targets: torch.Tensor  # int64 (N,)
    probs: list[np.ndarray]  # per expert float32 (N, C) probabilities, for mixtures over all classes

    @property
    def num_samples(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return int(self.probs[0].shape[1])

    @property
    def expert_correct(self) -> torch.Tensor:
        return self.expert_pred == self.targets[:, None]


def posterior_features(logp: torch.Tensor) -> torch.Tensor:
    """Features of a block of log-posteriors ``logp`` (n, E, C) -> (n, 7E + 3), in logp's dtype."""
    n, E, C = logp.shape
    p = logp.exp()
    entropy = -(p * logp).sum(-1)  # p > 0 everywhere: log_softmax is finite
    top = p.topk(min(TOPK_MASS, C), dim=-1).values
    topk_mass = top.sum(-1)
    max_prob = top[..., 0]
    second = top[..., 1] if top.shape[-1] > 1 else torch.zeros_like(max_prob)
    p_bar = p.mean(1)  # (n, C)
    log_p_bar = p_bar.log()
    cos = (p * p_bar[:, None]).sum(-1) / (p.norm(dim=-1) * p_bar.norm(dim=-1)[:, None]).clamp_min(1e-30)
    kl = (p * (logp - log_p_bar[:, None])).sum(-1)
    per_expert = torch.stack([entropy, topk_mass, 1 - topk_mass, max_prob, max_prob - second, cos, kl], dim=-1)
    glob = torch.stack([
        -(p_bar * log_p_bar).sum(-1),
        # Written out: torch's var over the middle (expert) axis took ~200x longer on the CPU.
        (p - p_bar[:, None]).square().mean(1).mean(-1),
        max_prob.max(1).values - max_prob.min(1).values,
    ], dim=-1)
    return torch.cat([per_expert.reshape(n, E * len(PER_EXPERT)), glob], dim=1)


def chunk_rows(num_experts: int, num_classes: int, chunk_mb: int) -> int:
    return max(1, (chunk_mb << 20) // (8 * num_experts * num_classes))


def prepare_split(split: SplitLogits, chunk_mb: int = 32) -> PreparedSplit:
    """Features, log p_e(y) and argmaxes of ``split``; its logits become probabilities in place.

    ``split`` is consumed: afterwards its arrays hold float32 probabilities.
    """
    n, E, C = split.num_samples, len(split.experts), split.num_classes
    rows = chunk_rows(E, C, chunk_mb)
    feats = torch.empty(n, num_features(E), dtype=torch.float32)
    logp_target = torch.empty(n, E, dtype=torch.float32)
    expert_pred = torch.empty(n, E, dtype=torch.int64)
    targets = torch.from_numpy(split.targets)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = torch.stack([torch.from_numpy(a[start:stop]) for a in split.logits], dim=1).double()
        logp = block.log_softmax(-1)
        del block
        feats[start:stop] = posterior_features(logp).float()
        logp_target[start:stop] = logp.gather(-1, targets[start:stop, None, None].expand(-1, E, 1))[..., 0].float()
        expert_pred[start:stop] = logp.argmax(-1)
        probs = logp.exp_().float()
        for e, arr in enumerate(split.logits):
            arr[start:stop] = probs[:, e].numpy()
    return PreparedSplit(split.name, list(split.experts), feats, logp_target, expert_pred, targets, split.logits)


@dataclass
class FeatureNorm:
    """Standardisation fitted on the train split (features span very different scales: KL vs masses)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor) -> "FeatureNorm":
        mean = features.double().mean(0)
        std = features.double().std(0, unbiased=False)
        # A constant feature (e.g. top-k mass when C <= k) carries nothing: keep it at 0, not 0/0.
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        return cls(mean.float(), std.float())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std
