"""mheight-evaluate: a checkpoint on a data set: Log2-MSE overall (mean over groups) and per group, speed.

Writes artifacts/predictions.npz (n, k, m, target, prediction for every finite label).
predict_per_s is finite labels per second from raw P to predictions (input features included),
the best timed pass after a warm-up one (see below); on a CPU the forward pass runs in C where it applies
(``--cpu-kernels``, engine/fast/forward.py), and so do the minor features.
"""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
import torch

from engine.common.device import pick_device
from engine.core.config import JobSpec
from engine.core.recorder import RunRecorder
from engine.core.rundir import atomic_write
from engine.fast.forward import forward_for
from engine.mheight.config import PAD, MHeightEvaluateConfig
from engine.mheight.data import MAX_M, CodeSet, codes_of, model_inputs, mse_metrics
from engine.mheight.fit import load_model, predict
from engine.mheight.shards import load_labels

TIMED_PASSES = 3
TIMED_SECONDS = 0.5


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: MHeightEvaluateConfig = spec.config  # type: ignore[assignment]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model, state = load_model(cfg.checkpoint, device)
    labels, _ = load_labels(cfg.data, state.get("pad", PAD))
    codes = codes_of(labels)
    how = dict(scale=state["scale"], canonical=state["canonicalize"], minors=state.get("minor_features", False),
               p_input=state["p_input"], device=device, kernels=cfg.cpu_kernels)
    data = CodeSet.from_codes(codes, labels.finite_groups(), **how)
    forward = forward_for(model, cfg.cpu_kernels, device.type)
    predict(model, data, cfg.batch_size, forward)  # warm-up: the first call of each path builds and caches
    # Timed: everything from the codes' raw P to the predictions, as the generator is timed from P to
    # labels. The best pass, as the benchmarks time the generator: at least TIMED_PASSES, and more
    # until TIMED_SECONDS (a pass of a few ms takes ~10 passes to settle: allocator, caches, clocks).
    best, start, passes = (np.inf, 0.0, 0.0), time.perf_counter(), 0
    while passes < TIMED_PASSES or (time.perf_counter() - start < TIMED_SECONDS and passes < 1000):
        passes += 1
        t0 = time.perf_counter()
        P, feats = model_inputs(codes.P, codes.n, codes.k, **how)
        t1 = time.perf_counter()
        pred = predict(model, dataclasses.replace(data, P=P, feats=feats), cfg.batch_size, forward)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        best = min(best, (t2 - t0, t1 - t0, t2 - t1))
    metrics = mse_metrics(pred, data, "test")
    metrics["predict_per_s"] = data.labels / max(best[0], 1e-9)
    metrics["input_seconds"], metrics["forward_seconds"] = best[1], best[2]
    metrics["timed_passes"] = passes
    metrics["infinite_labels_skipped"] = float((~labels.finite).sum())
    rec.log_summary(metrics)
    mask = data.group >= 0
    per_label = lambda t: t.expand(mask.shape)[mask].cpu().numpy()  # noqa: E731
    buf = io.BytesIO()
    np.savez(buf, n=per_label(data.n[:, None]), k=per_label(data.k[:, None]), m=per_label(torch.arange(MAX_M, device=device)),
             target=per_label(data.y), prediction=per_label(pred))
    atomic_write(rec.run_dir.artifacts / "predictions.npz", buf.getvalue())
