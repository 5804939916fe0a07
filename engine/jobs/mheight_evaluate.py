"""mheight-evaluate: a checkpoint on a data set: Log2-MSE overall (mean over groups) and per group, speed.

Writes artifacts/predictions.npz (n, k, m, target, prediction for every finite label).
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch

from engine.config import JobSpec
from engine.mheight.config import PAD, MHeightEvaluateConfig
from engine.mheight.data import Batchable, mse_metrics
from engine.mheight.fit import load_model, predict
from engine.mheight.shards import load_labels
from engine.run import RunRecorder, atomic_write_bytes
from engine.training import pick_device


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: MHeightEvaluateConfig = spec.config  # type: ignore[assignment]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model, state = load_model(cfg.checkpoint, device)
    labels, _ = load_labels(cfg.data, state.get("pad", PAD))
    data = Batchable.from_labels(labels, labels.finite_groups(), state["scale"], state["canonicalize"], device,
                                 state.get("minor_features", False))
    predict(model, data, cfg.batch_size)  # warm-up
    t0 = time.perf_counter()
    pred = predict(model, data, cfg.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    secs = time.perf_counter() - t0
    metrics = mse_metrics(pred, data, "test")
    # a prediction's cost includes its input features (the minors, when the model reads them)
    metrics["predict_per_s"] = len(data) / max(secs + data.feature_seconds, 1e-9)
    metrics["feature_seconds"] = data.feature_seconds
    metrics["infinite_labels_skipped"] = float((~labels.finite).sum())
    rec.log_summary(metrics)
    buf = io.BytesIO()
    np.savez(buf, n=data.n.cpu().numpy(), k=data.k.cpu().numpy(), m=data.m.cpu().numpy(),
             target=data.y.cpu().numpy(), prediction=pred.cpu().numpy())
    atomic_write_bytes(rec.run_dir.artifacts / "predictions.npz", buf.getvalue())
