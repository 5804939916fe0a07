"""The posteriors eta(x) the rejectors are fitted on, reduced to per-group statistics per split.

Sources: ``gate`` (the mixture sum_e w_e(x) p_e(x) of a train-gating run's gate),
``uniform`` (the experts' average) and each expert alone, all from the logits
of ``engine recompute-logits`` (by default the temperature-scaled
``final_calibrated_`` checkpoints: the plug-in rule reads eta as a probability).

Every check runs before any fitting, and each bad input is one line
(:class:`JobError`, exit 2) naming what is wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.common.groups import ClassGroups
from engine.common.logit_files import MANIFEST, logits_folder, read_manifest
from engine.core.errors import JobError
from engine.core.rundir import is_run_id
from engine.gating.data import (
    SplitLogits,
    available_splits,
    check_logits_dir,
    has_split,
    load_split,
    manifest_class_counts,
    read_class_counts,
)
from engine.gating.features import prepare_split
from engine.gating.trained import TrainedGate, find_training_run, load_gate
from engine.reject.config import GROUPINGS, FitRejectConfig
from engine.reject.rule import GroupStats, concat_stats, group_stats

GATE, UNIFORM, ALL = "gate", "uniform", "all"


@dataclass
class Inputs:
    """Where the posteriors come from, checked: the logits folder, the experts, the gate, the sources."""

    root: Path
    experts: list[str]
    gate: TrainedGate | None
    labels_dir: str | None
    sources: list[str]
    splits: list[str]  # fit, select, then test where its logits exist
    notes: list[str] = field(default_factory=list)

    @property
    def loaded_experts(self) -> list[str]:
        """The experts whose logits the sources need: all for a mixture, else only the chosen ones."""
        if GATE in self.sources or UNIFORM in self.sources:
            return self.experts
        return [e for e in self.experts if e in self.sources]


def resolve_inputs(cfg: FitRejectConfig, runs_roots: list[Path]) -> Inputs:
    gate = None
    if cfg.gating_run:
        gate = load_gate(find_training_run(cfg.gating_run, runs_roots, usage="engine fit-reject --gating-run RUN"),
                         cfg.checkpoint)
    ref = cfg.logits_dir or (gate.config.logits_dir if gate else None)
    if not ref:
        raise JobError("no posteriors to fit: pass --gating-run RUN (a train-gating run) or --logits-dir DIR "
                       "(a recompute-logits run or its logits folder) with --experts a,b,c")
    if gate is not None:
        experts = gate.experts
        if cfg.experts is not None and cfg.experts != experts:
            raise JobError(f"--experts {','.join(cfg.experts)} differ from the experts of gate {gate.run.run_id} "
                           f"({','.join(experts)}): the gate mixes its own; leave --experts out")
    else:
        experts = cfg.experts or _manifest_experts(ref, runs_roots)
    root = check_logits_dir(ref, experts, runs_roots)
    labels_dir = cfg.labels_dir or (gate.config.labels_dir if gate else None)
    sources = expand_sources(cfg.source, experts, gate is not None)
    inputs = Inputs(root, experts, gate, labels_dir, sources, [cfg.fit_split, cfg.select_split])
    for split, role in ((cfg.fit_split, "fits alpha on"), (cfg.select_split, "selects mu on")):
        for e in inputs.loaded_experts:
            if not has_split(root, [e], split):
                have = available_splits(root, e)
                raise JobError(f"no '{split}' logits for expert '{e}' in {root / e} (splits there: "
                               f"{', '.join(have) or 'none'}): fit-reject {role} {split}; export it with "
                               f"`engine recompute-logits --splits tunev,val,test`")
    if cfg.test_split:
        if has_split(root, inputs.loaded_experts, cfg.test_split):
            inputs.splits.append(cfg.test_split)
        else:
            inputs.notes.append(f"note: no '{cfg.test_split}' logits for every expert; curves on "
                                f"{cfg.fit_split} and {cfg.select_split} only")
    inputs.notes += calibration_notes(root)
    return inputs


def _manifest_experts(ref: str, runs_roots: list[Path]) -> list[str]:
    """Every expert the recompute-logits manifest of ``ref`` (a folder, run directory or run id) lists."""
    path = Path(ref).expanduser()
    if not path.is_dir() and is_run_id(str(ref)):
        path = next((r / str(ref) for r in runs_roots if (r / str(ref)).is_dir()), path)
    try:
        manifest = read_manifest(logits_folder(str(path)))
    except JobError:
        manifest = None
    if manifest is None or not manifest.experts:
        raise JobError(f"--logits-dir {ref} has no {MANIFEST} listing its experts; name them with --experts a,b,c")
    return sorted(manifest.experts)


def expand_sources(requested: list[str], experts: list[str], has_gate: bool) -> list[str]:
    """``all`` -> gate (if given), uniform, every expert; each name checked, duplicates dropped."""
    known = [GATE] * has_gate + [UNIFORM] + experts
    out: list[str] = []
    for name in requested:
        if name == ALL:
            out += known
        elif name == GATE and not has_gate:
            raise JobError("--source gate needs a gate: pass --gating-run RUN (a train-gating run)")
        elif name in known:
            out.append(name)
        else:
            raise JobError(f"unknown source '{name}'; choose from {', '.join([ALL, *known])}")
    if GATE in experts or UNIFORM in experts:
        raise JobError(f"an expert is named '{GATE}' or '{UNIFORM}', which name mixtures here; rename its folder")
    return list(dict.fromkeys(out))


def calibration_notes(root: Path) -> list[str]:
    """The rule reads eta as a probability: say so when the logits are not the temperature-scaled ones."""
    try:
        manifest = read_manifest(root)
    except JobError:
        return []
    if manifest is None:
        return [f"note: no {MANIFEST} in {root}: cannot tell whether the logits are calibrated (the plug-in reads "
                "them as probabilities)"]
    prefix = getattr(manifest, "checkpoint_prefix", None)
    if prefix is not None and prefix != "final_calibrated_":
        return [f"warning: the logits in {root} come from {prefix}* checkpoints, not temperature-scaled; "
                "recompute them with --checkpoint-prefix final_calibrated_ for calibrated posteriors"]
    return []


# --------------------------------------------------------------------------- #
# Groups


def class_counts(cfg: FitRejectConfig, inputs: Inputs, num_classes: int) -> tuple[np.ndarray, str]:
    """Train-LT counts per class: --splits-dir, else the manifest's train split, else the gate's checkpoint."""
    if cfg.splits_dir:
        path = Path(cfg.splits_dir).expanduser()
        if path.is_dir():
            path = path / "class_counts.json"
        if not path.is_file():
            raise JobError(f"--splits-dir {cfg.splits_dir}: no {path.name} there; pass make-splits' folder "
                           "(e.g. an expert run's artifacts/splits) or its class_counts.json")
        return read_class_counts(path, num_classes)
    counts, why = manifest_class_counts(inputs.root, inputs.loaded_experts, num_classes)
    if counts is not None:
        return counts, why
    if inputs.gate is not None:
        counts = np.asarray(inputs.gate.checkpoint["class_counts"], dtype=np.int64)
        if len(counts) != num_classes:
            raise JobError(f"gate {inputs.gate.run.run_id} records {len(counts)} class counts but the logits have "
                           f"{num_classes} classes; pass --splits-dir")
        return counts, f"class counts of gate {inputs.gate.run.run_id} ({inputs.gate.name})"
    raise JobError(f"no train-LT class counts to define the groups ({why}); pass --splits-dir (make-splits' "
                   "folder, e.g. an expert run's artifacts/splits)")


def class_group_index(groups: ClassGroups, grouping: str) -> torch.Tensor:
    """(C,) int64: the group of each class, in the order of GROUPINGS[grouping]; every group must hold a class."""
    names = GROUPINGS[grouping]
    index = torch.full((groups.num_classes,), -1, dtype=torch.int64)
    for k, name in enumerate(names):
        mask = torch.from_numpy(groups.mask(name))
        if not mask.any():
            raise JobError(f"group '{name}' of --groups {grouping} has no class under these train-LT counts "
                           f"({min(groups.counts)}..{max(groups.counts)} images per class); use --groups head-tail")
        index[mask] = k
    return index


def check_groups_present(stats: GroupStats, names: tuple[str, ...], split: str) -> None:
    """The fixed point needs every group on S1, the selection on S2 and the report on each split."""
    sizes = stats.group_sizes().tolist()
    for name, n in zip(names, sizes):
        if n == 0:
            raise JobError(f"group '{name}' has no sample in split '{split}' ({stats.num_samples} samples, "
                           f"{dict(zip(names, sizes))}): its error is undefined; use larger splits or other --groups")


# --------------------------------------------------------------------------- #
# Posteriors -> statistics


def load_logits(inputs: Inputs, split: str, num_classes: int | None) -> SplitLogits:
    """The split as every needed expert saw it; experts whose targets differ fail here in one line."""
    return load_split(inputs.root, inputs.loaded_experts, split, labels_dir=inputs.labels_dir, num_classes=num_classes,
                      dataset=inputs.gate.config.dataset if inputs.gate else None)


def split_stats(inputs: Inputs, logits: SplitLogits, class_group: torch.Tensor, num_groups: int,
                chunk_mb: int) -> dict[str, GroupStats]:
    """Per source, the split's :class:`GroupStats`; the posteriors are built in row blocks of ``chunk_mb`` and
    never held whole (C = 8142, 100,000 samples: 3.3 GB a posterior)."""
    experts = logits.experts
    weights = None
    if GATE in inputs.sources:
        assert inputs.gate is not None
        prep = prepare_split(logits, inputs.gate.config.feature_chunk_mb)  # logits -> probabilities, in place
        weights = inputs.gate.weights(prep).double()
        probs = prep.probs
    else:
        probs = softmax_in_place(logits, chunk_mb)
    n, C = logits.num_samples, logits.num_classes
    targets = torch.from_numpy(logits.targets)
    rows = max(1, (chunk_mb << 20) // (8 * C * (len(experts) + 2)))
    parts: dict[str, list[GroupStats]] = {s: [] for s in inputs.sources}
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = [torch.from_numpy(p[start:stop]).double() for p in probs]
        for source in inputs.sources:
            if source == GATE:
                eta = sum(weights[start:stop, e, None] * block[e] for e in range(len(experts)))
            elif source == UNIFORM:
                eta = sum(block) / len(block)
            else:
                eta = block[experts.index(source)]
            parts[source].append(group_stats(eta, targets[start:stop], class_group, num_groups))
    return {s: concat_stats(p) for s, p in parts.items()}


def softmax_in_place(logits: SplitLogits, chunk_mb: int) -> list[np.ndarray]:
    """The split's logits turned into float32 probabilities in place (float64 softmax per row block)."""
    rows = max(1, (chunk_mb << 20) // (8 * logits.num_classes))
    for arr in logits.logits:
        for start in range(0, len(arr), rows):
            block = torch.from_numpy(arr[start : start + rows])
            block.copy_(block.double().softmax(-1))
    return logits.logits


def train_prior_weights(counts, targets: torch.Tensor) -> torch.Tensor:
    """C * pi_train(y) per sample: the test errors as the training distribution would weigh them."""
    c = torch.tensor(list(counts), dtype=torch.float64)
    prior = c / c.sum()
    return len(counts) * prior[targets]
