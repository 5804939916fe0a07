"""mheight-train: one m-height regressor on padded P plus (n, k) features, one output per m; loss = MSE of log2 h."""

from __future__ import annotations

import torch

from engine.common.seeding import prepare_job
from engine.core.config import JobSpec
from engine.core.recorder import RunRecorder
from engine.mheight.config import PAD, MHeightTrainConfig
from engine.mheight.data import MINOR_FEATURE_VERSION, CodeSet
from engine.mheight.fit import data_scale, fit, group_means, load_split
from engine.mheight.models import build, model_spec, set_input_stats


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: MHeightTrainConfig = spec.config  # type: ignore[assignment]
    device, gen = prepare_job(cfg)
    train_l, val_l = load_split(cfg)
    scale = data_scale(train_l)
    inputs = (scale, cfg.canonicalize, device, cfg.minor_features, cfg.p_input, cfg.cpu_kernels)
    train = CodeSet.from_labels(train_l, train_l.finite_groups(), *inputs)
    val = CodeSet.from_labels(val_l, val_l.finite_groups(), *inputs)
    print(f"infinite labels left out: train {int((~train_l.finite).sum())}, val {int((~val_l.finite).sum())}", flush=True)
    pairs = sorted({(g[0], g[1]) for g in train.groups})
    mspec = model_spec(cfg, cfg.model, [list(p) for p in pairs])
    model = build(mspec).to(device)
    model.set_group_means(*group_means(train))
    set_input_stats(model, train.P, train.feats)
    print(f"{cfg.model}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"spec": mspec, "scale": scale, "canonicalize": cfg.canonicalize, "minor_features": cfg.minor_features, "p_input": cfg.p_input,
            "minor_feature_version": MINOR_FEATURE_VERSION, "pad": PAD, "config": cfg.model_dump(mode="json")}
    fit(model, meta, train, val, opt, cfg, rec, gen)
