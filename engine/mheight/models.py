"""m-height regressors on padded P plus (n, k) features; each predicts log2 h >= 0 for every m.

A code's labels for m = 0..MAX_M-1 share its inputs, so every net runs once per code
and has MAX_M outputs (the loss reads the ones the code has finite labels for).

    fc          MLP on the flattened P (unless p_input is off) and the features
    resnet2d    P (plus a mask channel and the features as constant planes) as a 6x6 image
    vit         one token per row of P (no position embedding: rows are exchangeable),
                a class token carrying the features
    hard_moe    one expert per (n, k), routed by the code's own (n, k)
    sparse_moe  E experts, a learned top-k gate with a learnable temperature and a
                load-balance loss; in training experts run densely and outputs are mixed
                sparsely, in inference each expert runs on the codes routed to it only

``build(spec)`` rebuilds any of them from the plain dict stored in checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.core.errors import JobError
from engine.mheight.config import PAD
from engine.mheight.data import MAX_M, MINOR_FEATURES, feature_dim

ACTIVATIONS = {"gelu": nn.GELU, "relu": lambda: nn.ReLU(inplace=True)}


class Standardize(nn.Module):
    """(x - mean) / std per input column, with the training data's statistics (``set_input_stats``).

    The minor statistics span very different ranges per size; without a LayerNorm after each
    layer (``--no-norm``, the cheap predictor) an MLP trains far worse on them unstandardised
    (held-out Log2-MSE 0.47 against 0.36, fc 32x32 with ReLU, 10 epochs on the benchmark's data).
    """

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("inv_std", torch.ones(width))

    def set(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        std = x.std(0)
        # a column constant in training (the one-hots and n, k of an expert trained on --pairs, minor sizes its
        # codes lack) is only centred: 1 / (0 + 1e-3) would reach a --no-norm net 1,000x too large for any
        # other (n, k), such as the codes a fine-tuned MoE shows every expert
        self.inv_std.copy_(torch.where(std > 1e-3, 1 / (std + 1e-3), torch.ones_like(std)))

    def into(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """layer((x - mean) / std), with the standardisation folded into the layer's weights: a pass
        over a (B, 33) input costs ~10x the (33, width) products at prediction."""
        w = layer.weight * self.inv_std
        return F.linear(x, w, layer.bias - w @ self.mean)


def first_layer(x: torch.Tensor, inputs: Standardize, layers: nn.Module) -> torch.Tensor:
    """``layers`` (a Linear, or a Sequential starting with one) on x standardised by ``inputs``."""
    if isinstance(layers, nn.Linear):
        return inputs.into(layers, x)
    return layers[1:](inputs.into(layers[0], x))


def net_input(P: torch.Tensor, feats: torch.Tensor, p_input: bool) -> torch.Tensor:
    return torch.cat([P.flatten(1), feats], 1) if p_input else feats


def _mask(P: torch.Tensor, k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(P.shape[-1], device=P.device)
    return ((idx[None, :, None] < k[:, None, None]) & (idx[None, None, :] < r[:, None, None])).float()


class FC(nn.Module):
    def __init__(self, hidden: int = 256, depth: int = 3, fdim: int = feature_dim(), pad: int = PAD, p_input: bool = True,
                 norm: bool = True, act: str = "gelu"):
        super().__init__()
        self.p_input = p_input
        layers, width = [], (pad * pad if p_input else 0) + fdim
        self.inputs = Standardize(width)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), *([nn.LayerNorm(hidden)] if norm else []), ACTIVATIONS[act]()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, MAX_M)

    def forward(self, P, feats, k, r):
        return self.head(first_layer(net_input(P, feats, self.p_input), self.inputs, self.body))


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
        self.head = nn.Sequential(nn.Linear(2 * channels + fd, 128), nn.GELU(), nn.Linear(128, MAX_M))

    def forward(self, P, feats, k, r):
        B, pad, _ = P.shape
        planes = feats[:, :, None, None].expand(B, feats.shape[1], pad, pad)
        x = torch.cat([P[:, None], _mask(P, k, r)[:, None], planes], 1)
        x = self.blocks(self.stem(x))
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3)), feats], 1)
        return self.head(pooled)


class RowViT(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 3, heads: int = 4, fdim: int = feature_dim(), pad: int = PAD):
        super().__init__()
        if dim % heads:
            raise JobError(f"--vit-dim {dim} must be a multiple of --vit-heads {heads}")
        self.embed = nn.Linear(2 * pad, dim)
        self.cls = nn.Linear(fdim, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, MAX_M))

    def forward(self, P, feats, k, r):
        mask = _mask(P, k, r)
        tokens = self.embed(torch.cat([P, mask], 2))  # (B, pad rows, dim)
        x = torch.cat([self.cls(feats)[:, None], tokens], 1)
        idx = torch.arange(P.shape[1], device=P.device)
        pad_rows = torch.cat([torch.zeros_like(k[:, None], dtype=torch.bool), idx[None] >= k[:, None]], 1)
        x = self.encoder(x, src_key_padding_mask=pad_rows)
        return self.head(x[:, 0])


def single(spec: dict[str, Any]) -> nn.Module:
    arch, fdim = spec["arch"], spec.get("fdim", feature_dim())
    if arch == "fc":
        return FC(spec["hidden"], spec["depth"], fdim, p_input=spec["p_input"], norm=spec["norm"], act=spec["act"])
    if not spec["p_input"]:
        raise JobError(f"{arch} reads P as its structure; --no-p-input is for fc models and experts only")
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

    @property
    def expert_names(self) -> list[str]:
        """Each expert by the (n, k) it serves, e.g. ``n6k3``: the expert_load event's names."""
        return [f"n{n}k{k}" for n, k in self.pairs]

    def route(self, n, k):
        code = n * 100 + k
        hit = code[:, None] == self.pair_code[None]
        if not bool(hit.any(1).all()):
            bad = sorted({(int(a), int(b)) for a, b, h in zip(n, k, hit.any(1)) if not h})
            raise JobError(f"hard_moe has experts for (n, k) in {self.pairs} only; the data holds {bad}")
        return hit.float().argmax(1)

    def forward(self, P, feats, k, r):
        route = self.route(k + r, k)
        out = torch.zeros(len(P), MAX_M, device=P.device)
        for e, expert in enumerate(self.experts):
            sel = route == e
            if sel.sum() > 1 or (sel.any() and not self.training):  # BatchNorm cannot train on one sample
                out[sel] = expert(P[sel], feats[sel], k[sel], r[sel])
        self.last_load = torch.bincount(route, minlength=len(self.experts)).float() / max(len(P), 1)
        return out


class SparseMoE(nn.Module):
    """Top-k gate over E experts (Shazeer et al. 2017), learnable temperature, Switch load-balance loss."""

    def __init__(self, expert: dict[str, Any], num_experts: int, top_k: int, gate_hidden: int = 128, pad: int = PAD):
        super().__init__()
        self.top_k = top_k
        self.experts = nn.ModuleList(single(expert) for _ in range(num_experts))
        fdim = expert.get("fdim", feature_dim())
        self.p_input = expert["p_input"]
        self.reads_shape = expert["arch"] != "fc"  # resnet2d and vit mask P by (k, n-k); fc reads only its input
        width = (pad * pad if self.p_input else 0) + fdim
        self.gate_inputs = Standardize(width)
        # a linear gate (gate_hidden 0) costs a few multiply-adds per expert: what a fast predictor wants
        self.gate = (nn.Linear(width, num_experts) if gate_hidden == 0 else
                     nn.Sequential(nn.Linear(width, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, num_experts)))
        self.log_temp = nn.Parameter(torch.zeros(()))  # temperature exp(log_temp), starts at 1
        self.aux_loss = torch.zeros(())
        self.last_load = torch.zeros(num_experts)

    @property
    def expert_names(self) -> list[str]:
        """The expert_load event's names: a learned gate's experts have only their index."""
        return [f"e{i}" for i in range(len(self.experts))]

    def forward(self, P, feats, k, r):
        logits = first_layer(net_input(P, feats, self.p_input), self.gate_inputs, self.gate) / self.log_temp.exp()
        top_val, top_idx = logits.topk(self.top_k, dim=1)
        if not self.training:
            return self._dispatch(P, feats, k, r, top_val, top_idx)
        probs = logits.softmax(1)
        weights = torch.zeros_like(logits).scatter(1, top_idx, top_val.softmax(1))
        # Training runs every expert on the whole batch: at these sizes that beats gathering per
        # expert on a CPU, and the output and gradients still depend on the chosen experts only.
        outs = torch.stack([e(P, feats, k, r) for e in self.experts], 1)
        E = len(self.experts)
        dispatched = torch.zeros_like(logits).scatter(1, top_idx, 1.0)
        frac = dispatched.mean(0) / self.top_k  # share of routed slots per expert
        self.aux_loss = E * (frac * probs.mean(0)).sum()  # 1 when balanced
        self.last_load = weights.mean(0).detach()  # mean routing weight per expert (the expert_load event's load)
        return (weights[:, :, None] * outs).sum(1)

    def _dispatch(self, P, feats, k, r, top_val, top_idx):
        """Each expert on the codes routed to it only: top_k / E of the dense work (half, for top-2 of 4)."""
        K = self.top_k
        if K == 1:
            gates = torch.ones_like(top_val)
        else:  # the softmax of two values; torch's softmax over a length-2 axis costs ~20x this
            g0 = torch.sigmoid(top_val[:, 0] - top_val[:, 1])
            gates = torch.stack([g0, 1 - g0], 1)
        slots, gates = top_idx.reshape(-1), gates.reshape(-1)
        out = feats.new_zeros(len(feats), MAX_M)
        for e, expert in enumerate(self.experts):
            flat = (slots == e).nonzero().squeeze(1)  # (code, slot) pairs routed to e, code-major
            if not len(flat):
                continue
            rows = flat // K
            take = lambda t: t.index_select(0, rows)  # noqa: E731
            y = expert(take(P) if self.p_input or self.reads_shape else P, take(feats),
                       *((take(k), take(r)) if self.reads_shape else (k, r)))
            out.index_add_(0, rows, y.mul_(gates.index_select(0, flat)[:, None]))
        weight = gates.new_zeros(len(self.experts)).index_add_(0, slots, gates)
        self.last_load = weight / max(len(feats), 1)  # mean routing weight per expert, as in training
        return out

    @property
    def temperature(self) -> float:
        return float(self.log_temp.detach().exp())


def set_input_stats(model: nn.Module, P: torch.Tensor, feats: torch.Tensor) -> None:
    """Every input standardisation of ``model`` from the training inputs (before training)."""
    for mod in model.modules():
        if isinstance(mod, (FC, SparseMoE)):
            (mod.inputs if isinstance(mod, FC) else mod.gate_inputs).set(net_input(P, feats, mod.p_input))


class Regressor(nn.Module):
    """Wraps any net: log2 h for m = 0..MAX_M-1 = softplus(net + b[n, k, :]) >= 0.

    b starts at softplus^-1 of each (n, k, m) group's training mean, so an
    untrained net already predicts the per-group-mean baseline and learning
    spends itself on what distinguishes codes within a group.
    """

    def __init__(self, net: nn.Module, pad: int = PAD):
        super().__init__()
        self.net = net
        self.register_buffer("group_base", torch.zeros(2 * pad + 1, pad + 1, MAX_M))

    def set_group_means(self, means: dict[tuple[int, int, int], float], fallback: float) -> None:
        table = torch.full_like(self.group_base, fallback)
        for (n, k, m), v in means.items():
            table[n, k, m] = v
        y = table.clamp(min=1e-3)
        self.group_base.copy_(y + torch.log(-torch.expm1(-y)))  # inverse softplus

    def forward(self, P, feats, k, r):
        # one row of the flattened (n, k) table per code: index_select is several times an advanced index
        base = self.group_base.view(-1, self.group_base.shape[-1]).index_select(0, (k + r) * self.group_base.shape[1] + k)
        return F.softplus(self.net(P, feats, k, r) + base)


def build(spec: dict[str, Any]) -> Regressor:
    """spec: {"model": ..., "expert": {arch + sizes}, "pairs": [...], "num_experts", "top_k", "gate_hidden"}."""
    model = spec["model"]
    if model in ("fc", "resnet2d", "vit"):
        return Regressor(single({**spec["expert"], "arch": model}))
    if model == "hard_moe":
        return Regressor(HardMoE(spec["expert"], spec["pairs"]))
    if model == "sparse_moe":
        return Regressor(SparseMoE(spec["expert"], spec["num_experts"], spec["top_k"], spec["gate_hidden"]))
    raise JobError(f"unknown m-height model '{model}'")


def model_spec(cfg, model: str, pairs: list[list[int]]) -> dict[str, Any]:
    arch = model if model in ("fc", "resnet2d", "vit") else cfg.expert_arch
    fdim = feature_dim() + (MINOR_FEATURES if cfg.minor_features else 0)
    expert = {"arch": arch, "fdim": fdim, "p_input": cfg.p_input, "norm": cfg.norm, "act": cfg.act, "hidden": cfg.hidden, "depth": cfg.depth, "channels": cfg.channels, "blocks": cfg.blocks,
              "vit_dim": cfg.vit_dim, "vit_depth": cfg.vit_depth, "vit_heads": cfg.vit_heads}
    return {"model": model, "expert": expert, "pairs": pairs, "num_experts": cfg.num_experts, "top_k": cfg.top_k,
            "gate_hidden": cfg.gate_hidden}
