"""recompute-logits: every expert over every requested split, logits to disk for the gating stage.

Checkpoints are resolved and read before any work starts, so a typo fails in
a second; the manifest is written last, so a folder with a manifest is complete.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.common.device import pick_device, uses_channels_last
from engine.common.logit_files import MANIFEST, MANIFEST_VERSION, sha256_file, write_split_logits
from engine.common.metrics import classification_metrics
from engine.core.config import JobSpec
from engine.core.errors import JobError
from engine.core.recorder import RunRecorder
from engine.core.rundir import atomic_write_json
from engine.longtail.config import RecomputeLogitsConfig, TrainExpertConfig
from engine.longtail.data.feed import make_feed
from engine.longtail.data.load import load_image_data
from engine.longtail.data.splits import SPLIT_NAMES
from engine.longtail.expert import build_expert, predict
from engine.longtail.expert_checkpoint import find_checkpoint, load_weights, read_expert


def predict_with_backoff(model, feed, batch_size: int, amp: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Predict a whole split; on CUDA out-of-memory halve the batch and go on, saying so."""
    while True:
        try:
            logits, targets = predict(model, feed, amp, batch_size)
            return logits, targets, batch_size
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise JobError("CUDA out of memory even at batch size 1; free the GPU (nvidia-smi) or use --device cpu") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(f"CUDA out of memory at batch size {batch_size}; going on with {batch_size // 2}", flush=True)
            batch_size //= 2


def train_split_record(index, checkpoint: Path, splits_dir: str | None) -> dict:
    """The train-LT split the expert was trained on (engine.common.logit_files.TrainSplit): the
    gating stage's head/tail groups come from its counts, not from the smaller gating split, where
    a class with no gating image would move the boundary. ``file``: its class_counts.json, from
    --splits-dir or the expert's own run directory, where one is on disk."""
    candidates = [Path(splits_dir) / "class_counts.json"] if splits_dir else []
    candidates.append(checkpoint.parent.parent / "artifacts" / "splits" / "class_counts.json")
    found = next((f for f in candidates if f.is_file()), None)
    return {"fingerprint": index.fingerprint, "class_counts": [int(c) for c in index.lt_counts],
            "file": str(found.resolve()) if found else None}


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: RecomputeLogitsConfig = spec.config  # type: ignore[assignment]
    unknown = [s for s in cfg.splits if s not in SPLIT_NAMES]
    if unknown:
        raise JobError(f"--splits {','.join(unknown)}: unknown split; choose from {', '.join(SPLIT_NAMES)}")
    device = pick_device(cfg.device)
    paths = [find_checkpoint(src, cfg.checkpoint_prefix) for src in cfg.experts]
    ckpts = [read_expert(p) for p in paths]
    classes = {c["num_classes"] for c in ckpts}
    if len(classes) > 1:
        raise JobError(f"the experts have different numbers of classes ({sorted(classes)}); export them separately")

    out = rec.run_dir.artifacts / "logits"
    manifest = {"version": MANIFEST_VERSION, "checkpoint_prefix": cfg.checkpoint_prefix, "num_classes": classes.pop(),
                "splits": cfg.splits, "experts": {}}
    data_cache: dict = {}
    batch = cfg.batch_size or (512 if device.type == "cuda" else 64)
    cl = uses_channels_last(device, cfg.amp)
    for path, ckpt in zip(paths, ckpts):
        overrides = {k: v for k, v in (("data_root", cfg.data_root), ("splits_dir", cfg.splits_dir)) if v}
        tcfg = TrainExpertConfig.model_validate({**ckpt["config"], **overrides, "resume": None})
        key = (tcfg.dataset, tcfg.data_root, tcfg.train_list, tcfg.test_list, tcfg.imb_factor, tcfg.image_size,
               tcfg.split_seed, tcfg.splits_dir)
        if key not in data_cache:
            data_cache[key] = load_image_data(tcfg)
        data = data_cache[key]
        if data.index.fingerprint != ckpt["splits"]:
            raise JobError(f"{path} was trained on other splits (fingerprint {ckpt['splits']}) than these data "
                           f"settings give ({data.index.fingerprint}); pass --splits-dir of its training run")
        model = build_expert(tcfg, data.num_classes, data.channels).to(device)
        load_weights(model, ckpt["model"], path, tcfg.arch, data.num_classes, data.name)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        temperature = float(ckpt.get("temperature", 1.0)) if cfg.checkpoint_prefix == "final_calibrated_" else 1.0
        name = ckpt.get("expert") or path.stem.removeprefix(cfg.checkpoint_prefix)
        base, n = name, 2
        while name in manifest["experts"]:
            name, n = f"{base}_{n}", n + 1
        entry = {"source": str(path.resolve()), "source_sha256": sha256_file(path), "arch": tcfg.arch,
                 "loss": tcfg.loss, "temperature": temperature, "dataset": data.name,
                 "splits_fingerprint": data.index.fingerprint,
                 "train_split": train_split_record(data.index, path, tcfg.splits_dir), "splits": {}}
        scores = {}
        for split in cfg.splits:
            feed = make_feed(data, split, device, cl, tcfg.image_size, tcfg.workers)
            logits, targets, batch = predict_with_backoff(model, feed, batch, cfg.amp)
            logits = logits / temperature
            entry["splits"][split] = write_split_logits(out / name, split, logits, targets)
            m = classification_metrics(logits, targets, data.groups, f"{name}/{split}")
            scores.update({k: v for k, v in m.items() if k.endswith(("/acc", "/balanced_acc"))})
            print(f"{name} {split}: {tuple(logits.shape)}, acc {m[f'{name}/{split}/acc']:.4f}", flush=True)
            rec.check_cancelled()
        manifest["experts"][name] = entry
        rec.log_summary(scores)
    atomic_write_json(out / MANIFEST, manifest)
    print(f"wrote {out}; check it with `engine verify-logits --logits {rec.run_dir.path}`", flush=True)
