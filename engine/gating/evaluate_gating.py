"""evaluate-gating: the final numbers of a trained gate on one split (by default test).

Reads the train-gating run's config and checkpoint (``weights_only``, through
``engine.gating.trained``), builds the split's features with the training run's
normalisation, and writes the results table (each expert, uniform average,
gate, oracle) into its own run directory.
"""

from __future__ import annotations

from engine.common.groups import ClassGroups
from engine.core.config import JobSpec
from engine.core.recorder import RunRecorder
from engine.core.rundir import RUNS_DIRNAME, resolve_workspace
from engine.gating.config import EvaluateGatingConfig
from engine.gating.data import check_logits_dir, load_split
from engine.gating.evaluation import (
    load_by_group,
    results_table,
    routing_stats,
    save_results,
    uniform_verdict,
)
from engine.gating.features import prepare_split
from engine.gating.trained import find_training_run, load_gate


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: EvaluateGatingConfig = spec.config  # type: ignore[assignment]
    # A queued evaluation runs with --run-dir inside the workspace's runs/ folder: look there first.
    source = find_training_run(cfg.run, [rec.run_dir.path.parent, resolve_workspace(spec.workspace) / RUNS_DIRNAME])
    gate = load_gate(source, cfg.checkpoint)
    train_cfg, ckpt, experts, C = gate.config, gate.checkpoint, gate.experts, gate.num_classes

    root = check_logits_dir(cfg.logits_dir or train_cfg.logits_dir, experts)
    prep = prepare_split(load_split(root, experts, cfg.split, labels_dir=cfg.labels_dir or train_cfg.labels_dir,
                                    num_classes=C, dataset=train_cfg.dataset), train_cfg.feature_chunk_mb)
    groups = ClassGroups(tuple(ckpt["class_counts"]))
    print(f"gate of run {source.run_id} ({cfg.checkpoint}, epoch {ckpt['epoch']}) on {cfg.split}: "
          f"{prep.num_samples} samples, {C} classes, experts {', '.join(experts)}", flush=True)

    w = gate.weights(prep)
    table = results_table(prep, w, groups)
    stats = routing_stats(w, prep)
    by_group = load_by_group(w, prep.targets, groups)
    verdict = uniform_verdict(stats, table, cfg.split) + f"; mean weights by group {by_group}"
    save_results(rec, {cfg.split: table}, {cfg.split: verdict},
                 {"source_run": source.run_id, "checkpoint": f"{cfg.checkpoint}_gating.pth", "epoch": ckpt["epoch"],
                  "experts": experts, "load_by_group": {cfg.split: by_group}},
                 stem=f"results_{cfg.split}")
    summary = {f"{row}/{k}": v for row, metrics in table.items() for k, v in metrics.items()}
    summary.update({"gate/eff_experts": stats["eff_experts"], "gate/tv_from_uniform": stats["tv_from_uniform"]})
    # The gate's load on this split: the one expert_load shape, with no epoch (an evaluation, not training).
    rec.log_expert_load(None, experts, stats["mean_weight"], stats["top1_share"])
    rec.log_summary(summary)
