"""A trained gate read back from its train-gating run: the run, its checkpoint, its routing weights.

Two jobs read a finished gate (evaluate-gating scores it, fit-reject takes its
mixture as a posterior), and no job imports another: both come here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.common.checkpoint import load_checkpoint
from engine.core.errors import JobError
from engine.core.rundir import RunDir
from engine.gating.config import TrainGatingConfig
from engine.gating.features import FeatureNorm, PreparedSplit
from engine.gating.model import GatingMLP, gate_weights


def find_training_run(ref: str | None, runs_roots: list[Path],
                      usage: str = "engine evaluate-gating RUN --split test") -> RunDir:
    """A run directory, or a run id looked up in ``runs_roots`` (this run's own runs/ folder first)."""
    if not ref:
        raise JobError(f"name the train-gating run to read: `{usage}` (a run id or a run directory)")
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


@dataclass
class TrainedGate:
    """The gate of one checkpoint of a train-gating run, ready to route a prepared split."""

    run: RunDir
    config: TrainGatingConfig  # the training run's settings (router, logits and labels folders)
    checkpoint: dict  # the checkpoint as saved (experts, num_classes, class_counts, epoch, ...)
    name: str  # the checkpoint's file name
    model: GatingMLP
    norm: FeatureNorm

    @property
    def experts(self) -> list[str]:
        return list(self.checkpoint["experts"])

    @property
    def num_classes(self) -> int:
        return int(self.checkpoint["num_classes"])

    def weights(self, prep: PreparedSplit) -> torch.Tensor:
        """Routing weights (n, E) of the split, in eval mode, on the CPU."""
        return gate_weights(self.model, self.norm(prep.features), self.config, self.checkpoint["temperature"])


def load_gate(run: RunDir, checkpoint: str = "best") -> TrainedGate:
    """``checkpoint``: best (by val balanced accuracy) or final; read with ``weights_only``."""
    config = TrainGatingConfig.model_validate(run.read_run()["config"])
    name = f"{checkpoint}_gating.pth"
    ckpt = load_checkpoint(run.checkpoints / name)
    model = GatingMLP(ckpt["num_features"], len(ckpt["experts"]), ckpt["hidden"], ckpt["dropout"])
    model.load_state_dict(ckpt["model"])
    return TrainedGate(run, config, ckpt, name, model, FeatureNorm(ckpt["feature_mean"], ckpt["feature_std"]))
