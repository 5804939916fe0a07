"""evaluate-gating: the final numbers of a trained gate on one split (by default test).

Reads the train-gating run's config and checkpoint (``weights_only``), builds
the split's features with the training run's normalisation, and writes the
results table (each expert, uniform average, gate, oracle) into its own run
directory.
"""

from __future__ import annotations

from pathlib import Path

from engine.common.checkpoint import load_checkpoint
from engine.common.groups import ClassGroups
from engine.core.config import JobSpec
from engine.core.errors import JobError
from engine.core.recorder import RunRecorder
from engine.core.rundir import RUNS_DIRNAME, RunDir, resolve_workspace
from engine.gating.config import EvaluateGatingConfig, TrainGatingConfig
from engine.gating.data import check_logits_dir, load_split
from engine.gating.evaluation import (
    load_by_group,
    results_table,
    routing_stats,
    save_results,
    uniform_verdict,
)
from engine.gating.features import FeatureNorm, prepare_split
from engine.gating.model import GatingMLP, gate_weights


def find_training_run(ref: str | None, runs_roots: list[Path]) -> RunDir:
    """A run directory, or a run id looked up in ``runs_roots`` (this run's own runs/ folder first)."""
    if not ref:
        raise JobError("name the train-gating run to evaluate: `engine evaluate-gating RUN --split test` "
                       "(a run id or a run directory)")
    path = Path(ref).expanduser()
    if not path.is_dir():
        path = next((root / ref for root in runs_roots if (root / ref).is_dir()), runs_roots[0] / ref)
    rd = RunDir(path)
    run = rd.read_run()
    if run is None:
        raise JobError(f"no run '{ref}': neither a directory nor a run id under {path.parent}; list runs with `moe-tui ls`")
    if run.get("kind") != TrainGatingConfig.kind:
        raise JobError(f"run {rd.run_id} is a {run.get('kind')} run, not train-gating; pass a train-gating run")
    return rd


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: EvaluateGatingConfig = spec.config  # type: ignore[assignment]
    # A queued evaluation runs with --run-dir inside the workspace's runs/ folder: look there first.
    source = find_training_run(cfg.run, [rec.run_dir.path.parent, resolve_workspace(spec.workspace) / RUNS_DIRNAME])
    train_cfg = TrainGatingConfig.model_validate(source.read_run()["config"])
    ckpt = load_checkpoint(source.checkpoints / f"{cfg.checkpoint}_gating.pth")
    experts, C = ckpt["experts"], ckpt["num_classes"]

    root = check_logits_dir(cfg.logits_dir or train_cfg.logits_dir, experts)
    prep = prepare_split(load_split(root, experts, cfg.split, labels_dir=cfg.labels_dir or train_cfg.labels_dir,
                                    num_classes=C, dataset=train_cfg.dataset), train_cfg.feature_chunk_mb)
    norm = FeatureNorm(ckpt["feature_mean"], ckpt["feature_std"])
    model = GatingMLP(ckpt["num_features"], len(experts), ckpt["hidden"], ckpt["dropout"])
    model.load_state_dict(ckpt["model"])
    groups = ClassGroups(tuple(ckpt["class_counts"]))
    print(f"gate of run {source.run_id} ({cfg.checkpoint}, epoch {ckpt['epoch']}) on {cfg.split}: "
          f"{prep.num_samples} samples, {C} classes, experts {', '.join(experts)}", flush=True)

    w = gate_weights(model, norm(prep.features), train_cfg, ckpt["temperature"])
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
