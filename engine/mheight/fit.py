"""The training loop shared by mheight-train and mheight-finetune, one phase per function."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from engine.common.checkpoint import load_checkpoint, save_checkpoint
from engine.core.errors import JobError
from engine.core.recorder import RunRecorder
from engine.core.rundir import CHECKPOINTS
from engine.mheight.config import PAD
from engine.mheight.data import (
    MODEL_FORMAT,
    CodeSet,
    augment,
    canonicalize,
    check_minor_features,
    check_model_format,
    group_mse,
    mse_metrics,
)
from engine.mheight.models import HardMoE, Regressor, SparseMoE
from engine.mheight.shards import LabelSet, load_labels

BEST = "best.pth"
LAST = "last.pth"


def parse_pairs(items: list[str] | None) -> set[tuple[int, int]] | None:
    if not items:
        return None
    out = set()
    for it in items:
        n, sep, k = it.lower().partition("x")
        if not sep or not n.strip().isdigit() or not k.strip().isdigit():
            raise JobError(f"--pairs item {it!r} is not NxK (e.g. 9x4)")
        out.add((int(n), int(k)))
    return out


def load_split(cfg, rec: RunRecorder | None = None) -> tuple[LabelSet, LabelSet]:
    """Training and validation labels: --val-data, or a split of --data by code (a code's m labels stay together)."""
    labels, _ = load_labels(cfg.data, PAD)
    pairs = parse_pairs(cfg.pairs)
    if pairs is not None:
        keep = np.array([(n, k) in pairs for n, k in zip(labels.n.tolist(), labels.k.tolist())])
        if not keep.any():
            raise JobError(f"--pairs {cfg.pairs} matches no code in {cfg.data}")
        labels = labels.take(np.flatnonzero(keep))
    if cfg.val_data:
        return labels, load_labels(cfg.val_data, PAD)[0]
    codes = np.unique(labels.code)
    rng = np.random.default_rng(cfg.split_seed)
    val_codes = rng.permutation(codes)[: max(1, int(round(cfg.val_fraction * len(codes))))]
    is_val = np.isin(labels.code, val_codes)
    if is_val.all():
        raise JobError(f"{cfg.data} has too few codes ({len(codes)}) to hold out a validation share; add --val-data")
    return labels.take(np.flatnonzero(~is_val)), labels.take(np.flatnonzero(is_val))


def data_scale(labels: LabelSet) -> float:
    """Inputs are divided by the largest |P| entry of the training data (100 for the course data)."""
    s = float(np.abs(labels.P).max()) if len(labels) else 1.0
    return s if s > 0 else 1.0


def lr_lambda(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


def moe_part(model: Regressor) -> nn.Module | None:
    return model.net if isinstance(model.net, (HardMoE, SparseMoE)) else None


def train_one_epoch(model: Regressor, data: CodeSet, opt, sched, cfg, gen: torch.Generator, rec: RunRecorder) -> dict[str, Any]:
    """One pass over the codes; the loss is the MSE over the batch's finite labels (every m of a code)."""
    model.train()
    moe = moe_part(model)
    se = torch.zeros(len(data.groups), device=data.y.device)
    cnt = torch.zeros(len(data.groups), device=data.y.device)
    load_sum, batches, aux_sum = None, 0, 0.0
    t0 = time.perf_counter()
    order = torch.randperm(len(data), generator=gen).to(data.y.device)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        if len(idx) < 2:
            break
        P, k, r = data.P[idx], data.k[idx], data.n[idx] - data.k[idx]
        if cfg.augment:
            P = augment(P, k, r, gen)
            if cfg.canonicalize:
                P = canonicalize(P)
        g = data.group[idx]
        mask = g >= 0
        err = (model(P, data.feats[idx], k, r)[mask] - data.y[idx][mask]) ** 2
        loss = err.mean()
        if isinstance(moe, SparseMoE) and cfg.balance_weight > 0:
            loss = loss + cfg.balance_weight * moe.aux_loss
            aux_sum += float(moe.aux_loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        se.index_add_(0, g[mask], err.detach())
        cnt.index_add_(0, g[mask], torch.ones_like(err))
        if moe is not None:
            load_sum = moe.last_load.clone() if load_sum is None else load_sum + moe.last_load
        batches += 1
        rec.check_cancelled()
    mse = se / cnt.clamp(min=1)
    out: dict[str, Any] = {"train/log2_mse": float(mse[cnt > 0].mean()),
                           "train/samples_per_s": float(cnt.sum()) / max(time.perf_counter() - t0, 1e-9)}
    if load_sum is not None:
        out["load"] = (load_sum / max(batches, 1)).tolist()  # mean routing weight per expert over the epoch
    if isinstance(moe, SparseMoE):
        out["train/balance_loss"] = aux_sum / max(batches, 1)
        out["gate_temperature"] = moe.temperature
    return out


@torch.inference_mode()
def predict(model: Regressor, data: CodeSet, batch_size: int = 16384, forward=None) -> torch.Tensor:
    """(codes, MAX_M): log2 h of every code for every m; ``forward`` (same inputs) instead of the model's."""
    if model.training:  # eval() walks every submodule: ~60 us, a tenth of a fast model's pass
        model.eval()
    forward = forward or model
    if 0 < len(data) <= batch_size:  # one pass, no slicing (its ~100 us are ~10% of a fast model's pass)
        return forward(data.P, data.feats, data.k, data.n - data.k)
    outs = [forward(data.P[s:s + batch_size], data.feats[s:s + batch_size], data.k[s:s + batch_size],
                    data.n[s:s + batch_size] - data.k[s:s + batch_size]) for s in range(0, len(data), batch_size)]
    return torch.cat(outs) if outs else data.y.new_zeros(data.y.shape)


def evaluate(model: Regressor, data: CodeSet, prefix: str) -> dict[str, float]:
    return mse_metrics(predict(model, data), data, prefix)


def group_means(data: CodeSet) -> tuple[dict[tuple[int, int, int], float], float]:
    """Mean log2 h of each (n, k, m) group of ``data``, and the overall mean."""
    _, y, g = data.flat(data.y)
    sums = torch.zeros(len(data.groups), device=y.device).index_add_(0, g, y)
    cnt = torch.zeros(len(data.groups), device=y.device).index_add_(0, g, torch.ones_like(y))
    means = {grp: float(s / c) for grp, s, c in zip(data.groups, sums, cnt) if c > 0}
    return means, float(y.mean()) if len(y) else 1.0


def group_mean_baseline(train: CodeSet, val: CodeSet) -> float:
    """Val Log2-MSE of predicting each (n, k, m) group's training mean: the floor any model must beat."""
    means, overall = group_means(train)
    _, y, g = val.flat(val.y)
    pred = torch.tensor([means.get(val.groups[i], overall) for i in g.tolist()], device=y.device)
    mse, c = group_mse(pred, y, g, len(val.groups))
    return float(mse[c > 0].mean())


def fit(model: Regressor, meta: dict[str, Any], train: CodeSet, val: CodeSet, opt, cfg, rec: RunRecorder,
        gen: torch.Generator) -> None:
    """Epochs of train_one_epoch + evaluate; best.pth by val Log2-MSE, last.pth every epoch."""
    steps = max(1, len(train) // cfg.batch_size) * cfg.epochs
    warm = max(1, len(train) // cfg.batch_size) * cfg.warmup_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warm, steps))
    ckpt = rec.run_dir.checkpoints
    baseline = group_mean_baseline(train, val)
    print(f"train {len(train)} codes ({train.labels} finite labels), val {len(val)} codes ({val.labels}), {len(train.groups)} groups; "
          f"per-group-mean predictor: val Log2-MSE {baseline:.4f}", flush=True)
    best, best_epoch = math.inf, 0
    for epoch in range(1, cfg.epochs + 1):
        lr = opt.param_groups[0]["lr"]
        stats = train_one_epoch(model, train, opt, sched, cfg, gen, rec)
        load = stats.pop("load", None)
        stats.update(evaluate(model, val, "val"))
        stats["lr"] = lr
        if load is not None:
            rec.log_expert_load(epoch, moe_part(model).expert_names, load)
        rec.log_epoch(epoch, stats)
        if stats["val/log2_mse"] < best:
            best, best_epoch = stats["val/log2_mse"], epoch
            save_checkpoint({**meta, "model_format": MODEL_FORMAT, "model": model.state_dict(), "epoch": epoch, "metrics": stats},
                            ckpt / BEST)
        save_checkpoint({**meta, "model_format": MODEL_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "epoch": epoch}, ckpt / LAST)
    state = load_checkpoint(ckpt / BEST, map_location=train.y.device)
    model.load_state_dict(state["model"])
    t0 = time.perf_counter()
    predict(model, val)
    secs = time.perf_counter() - t0
    rec.log_summary({"val/log2_mse": best, "best_epoch": best_epoch, "val/log2_mse_group_mean_baseline": baseline,
                     "predict_per_s": val.labels / max(secs + val.input_seconds, 1e-9)})


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a train/finetune run directory (its best.pth)."""
    p = Path(path).expanduser()
    return p / CHECKPOINTS / BEST if p.is_dir() else p


def load_model(path: str | Path, device: torch.device) -> tuple[Regressor, dict[str, Any]]:
    from engine.mheight.models import build

    state = load_checkpoint(checkpoint_path(path), map_location=device)
    if "spec" not in state:
        raise JobError(f"{checkpoint_path(path)} is not an m-height checkpoint (no model spec); give a mheight-train/finetune one")
    check_model_format(state, checkpoint_path(path))
    check_minor_features(state, checkpoint_path(path))
    model = build(state["spec"]).to(device)
    model.load_state_dict(state["model"])
    return model, state
