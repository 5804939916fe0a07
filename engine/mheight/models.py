"""m-height regressors on padded P plus (n, k, m) features; each predicts log2 h >= 0.

    fc          MLP on the flattened P and the features
    resnet2d    P (plus a mask channel and the features as constant planes) as a 6x6 image
    vit         one token per row of P (no position embedding: rows are exchangeable),
                a class token carrying the features
    hard_moe    one expert per (n, k), routed by the code's own (n, k)
    sparse_moe  E experts, a learned top-k gate with a learnable temperature and a
                load-balance loss; experts run densely, outputs are mixed sparsely

``build(spec)`` rebuilds any of them from the plain dict stored in checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.mheight.config import PAD
from engine.mheight.data import MINOR_FEATURES, feature_dim
from engine.run import JobError


def _mask(P: torch.Tensor, k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(P.shape[-1], device=P.device)
    return ((idx[None, :, None] < k[:, None, None]) & (idx[None, None, :] < r[:, None, None])).float()


class FC(nn.Module):
    def __init__(self, hidden: int = 256, depth: int = 3, fdim: int = feature_dim(), pad: int = PAD):
        super().__init__()
        layers, width = [], pad * pad + fdim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, P, feats, k, r):
        return self.head(self.body(torch.cat([P.flatten(1), feats], 1))).squeeze(1)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class ResNet2D(nn.Module):
    def __init__(self, channels: int = 64, blocks: int = 4, fdim: int = feature_dim(), pad: int = PAD):
        super().__init__()
        fd = fdim
        self.stem = nn.Sequential(nn.Conv2d(2 + fd, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.head = nn.Sequential(nn.Linear(2 * channels + fd, 128), nn.GELU(), nn.Linear(128, 1))

    def forward(self, P, feats, k, r):
        B, pad, _ = P.shape
        planes = feats[:, :, None, None].expand(B, feats.shape[1], pad, pad)
        x = torch.cat([P[:, None], _mask(P, k, r)[:, None], planes], 1)
        x = self.blocks(self.stem(x))
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3)), feats], 1)
        return self.head(pooled).squeeze(1)


class RowViT(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 3, heads: int = 4, fdim: int = feature_dim(), pad: int = PAD):
        super().__init__()
        if dim % heads:
            raise JobError(f"--vit-dim {dim} must be a multiple of --vit-heads {heads}")
        self.embed = nn.Linear(2 * pad, dim)
        self.cls = nn.Linear(fdim, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, P, feats, k, r):
        mask = _mask(P, k, r)
        tokens = self.embed(torch.cat([P, mask], 2))  # (B, pad rows, dim)
        x = torch.cat([self.cls(feats)[:, None], tokens], 1)
        idx = torch.arange(P.shape[1], device=P.device)
        pad_rows = torch.cat([torch.zeros_like(k[:, None], dtype=torch.bool), idx[None] >= k[:, None]], 1)
        x = self.encoder(x, src_key_padding_mask=pad_rows)
        return self.head(x[:, 0]).squeeze(1)


def single(spec: dict[str, Any]) -> nn.Module:
    arch, fdim = spec["arch"], spec.get("fdim", feature_dim())
    if arch == "fc":
        return FC(spec["hidden"], spec["depth"], fdim)
    if arch == "resnet2d":
        return ResNet2D(spec["channels"], spec["blocks"], fdim)
    if arch == "vit":
        return RowViT(spec["vit_dim"], spec["vit_depth"], spec["vit_heads"], fdim)
    raise JobError(f"unknown m-height architecture '{arch}'")


class HardMoE(nn.Module):
    """One expert per (n, k) pair seen in training, chosen by the code's own (n, k)."""

    def __init__(self, expert: dict[str, Any], pairs: list[list[int]]):
        super().__init__()
        self.pairs = [tuple(p) for p in pairs]
        self.experts = nn.ModuleList(single(expert) for _ in self.pairs)
        self.register_buffer("pair_code", torch.tensor([n * 100 + k for n, k in self.pairs]))

    def route(self, n, k):
        code = n * 100 + k
        hit = code[:, None] == self.pair_code[None]
        if not bool(hit.any(1).all()):
            bad = sorted({(int(a), int(b)) for a, b, h in zip(n, k, hit.any(1)) if not h})
            raise JobError(f"hard_moe has experts for (n, k) in {self.pairs} only; the data holds {bad}")
        return hit.float().argmax(1)

    def forward(self, P, feats, k, r):
        route = self.route(k + r, k)
        out = torch.zeros(len(P), device=P.device)
        for e, expert in enumerate(self.experts):
            sel = route == e
            if sel.sum() > 1 or (sel.any() and not self.training):  # BatchNorm cannot train on one sample
                out[sel] = expert(P[sel], feats[sel], k[sel], r[sel])
        self.last_load = torch.bincount(route, minlength=len(self.experts)).float() / max(len(P), 1)
        return out


class SparseMoE(nn.Module):
    """Top-k gate over E experts (Shazeer et al. 2017), learnable temperature, Switch load-balance loss."""

    def __init__(self, expert: dict[str, Any], num_experts: int, top_k: int, pad: int = PAD):
        super().__init__()
        self.top_k = top_k
        self.experts = nn.ModuleList(single(expert) for _ in range(num_experts))
        fdim = expert.get("fdim", feature_dim())
        self.gate = nn.Sequential(nn.Linear(pad * pad + fdim, 128), nn.GELU(), nn.Linear(128, num_experts))
        self.log_temp = nn.Parameter(torch.zeros(()))  # temperature exp(log_temp), starts at 1
        self.aux_loss = torch.zeros(())
        self.last_load = torch.zeros(num_experts)

    def forward(self, P, feats, k, r):
        logits = self.gate(torch.cat([P.flatten(1), feats], 1)) / self.log_temp.exp()
        probs = logits.softmax(1)
        top_val, top_idx = logits.topk(self.top_k, dim=1)
        weights = torch.zeros_like(logits).scatter(1, top_idx, top_val.softmax(1))
        # Experts are tiny: running each on the batch costs less than gathering per expert on a CPU;
        # the output still only depends on the top-k chosen experts.
        outs = torch.stack([e(P, feats, k, r) for e in self.experts], 1)
        E = len(self.experts)
        dispatched = torch.zeros_like(logits).scatter(1, top_idx, 1.0)
        frac = dispatched.mean(0) / self.top_k  # share of routed slots per expert
        self.aux_loss = E * (frac * probs.mean(0)).sum()  # 1 when balanced
        self.last_load = frac.detach()
        return (weights * outs).sum(1)

    @property
    def temperature(self) -> float:
        return float(self.log_temp.exp())


class Regressor(nn.Module):
    """Wraps any net: log2 h = softplus(net + b[n, k, m]) >= 0.

    b starts at softplus^-1 of each (n, k, m) group's training mean, so an
    untrained net already predicts the per-group-mean baseline and learning
    spends itself on what distinguishes codes within a group.
    """

    def __init__(self, net: nn.Module, pad: int = PAD):
        super().__init__()
        self.net = net
        self.register_buffer("group_base", torch.zeros(2 * pad + 1, pad + 1, 2 * pad))

    def set_group_means(self, means: dict[tuple[int, int, int], float], fallback: float) -> None:
        table = torch.full_like(self.group_base, fallback)
        for (n, k, m), v in means.items():
            table[n, k, m] = v
        y = table.clamp(min=1e-3)
        self.group_base.copy_(y + torch.log(-torch.expm1(-y)))  # inverse softplus

    def forward(self, P, feats, k, r, m):
        return F.softplus(self.net(P, feats, k, r) + self.group_base[k + r, k, m])


def build(spec: dict[str, Any]) -> Regressor:
    """spec: {"model": ..., "expert": {arch + sizes}, "pairs": [...], "num_experts", "top_k"}."""
    model = spec["model"]
    if model in ("fc", "resnet2d", "vit"):
        return Regressor(single({**spec["expert"], "arch": model}))
    if model == "hard_moe":
        return Regressor(HardMoE(spec["expert"], spec["pairs"]))
    if model == "sparse_moe":
        return Regressor(SparseMoE(spec["expert"], spec["num_experts"], spec["top_k"]))
    raise JobError(f"unknown m-height model '{model}'")


def model_spec(cfg, model: str, pairs: list[list[int]]) -> dict[str, Any]:
    arch = model if model in ("fc", "resnet2d", "vit") else cfg.expert_arch
    fdim = feature_dim() + (MINOR_FEATURES if cfg.minor_features else 0)
    expert = {"arch": arch, "fdim": fdim, "hidden": cfg.hidden, "depth": cfg.depth, "channels": cfg.channels, "blocks": cfg.blocks,
              "vit_dim": cfg.vit_dim, "vit_depth": cfg.vit_depth, "vit_heads": cfg.vit_heads}
    return {"model": model, "expert": expert, "pairs": pairs, "num_experts": cfg.num_experts, "top_k": cfg.top_k}
