"""Scores of mixtures of frozen experts, and the results table every gating run reports.

A mixture is given by per-sample weights (n, E): one-hot for a single expert,
1/E for the uniform average, the gate's output, or one-hot on the expert that
gives the true class the highest probability (the per-sample oracle). The oracle
bounds the mixture NLL from below (no weights give y more probability than the
best expert's p_e(y)) but not accuracy: a mixture can put the top class right
where every single expert, the oracle's choice included, has it wrong, so a gate
can beat the oracle on accuracy.
"""

from __future__ import annotations

import math

import torch

from engine.common.groups import ClassGroups
from engine.common.metrics import ece_from_confidence, per_class_recall
from engine.core.recorder import RunRecorder
from engine.core.rundir import atomic_write, atomic_write_json
from engine.gating.features import PreparedSplit

MIX_CHUNK_ELEMS = 1 << 22  # floats of one (rows, C) mixture block
# Mean total-variation distance of the gate's weights from 1/E under which the
# gate is reported as "close to uniform": it moves less than 5% of the mass.
UNIFORM_TV = 0.05
# Balanced-accuracy gain over the uniform average below which the gate "does not beat" it
# (half a point: less than one sample per class on the usual val splits).
GAIN_MARGIN = 0.005
METRICS = ("acc", "head_acc", "tail_acc", "balanced_acc", "nll", "ece")


def mixture_predict(prep: PreparedSplit, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top confidence and predicted class of sum_e w_e p_e, built in row chunks (C may be 8142)."""
    weights = weights.detach().float().cpu()
    n, C = prep.num_samples, prep.num_classes
    rows = max(1, MIX_CHUNK_ELEMS // C)
    conf = torch.empty(n)
    pred = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        mix = torch.zeros(stop - start, C)
        for e, probs in enumerate(prep.probs):
            mix.addcmul_(weights[start:stop, e, None], torch.from_numpy(probs[start:stop]))
        conf[start:stop], pred[start:stop] = mix.max(dim=1)
    return conf, pred


def mixture_nll(prep: PreparedSplit, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample -log sum_e w_e p_e(y), exact from the float64-derived log p_e(y)."""
    return -torch.logsumexp(weights.detach().float().cpu().log() + prep.logp_target, dim=-1)


def split_metrics(conf: torch.Tensor, pred: torch.Tensor, nll: torch.Tensor, targets: torch.Tensor,
                  groups: ClassGroups, prefix: str = "") -> dict[str, float]:
    """acc, nll, ece, balanced and group accuracies (group = mean per-class recall, as engine.metrics)."""
    recall = per_class_recall(pred, targets, groups.num_classes)
    p = f"{prefix}/" if prefix else ""
    out = {
        f"{p}acc": float((pred == targets).float().mean()),
        f"{p}nll": float(nll.mean()),
        f"{p}ece": ece_from_confidence(conf, pred == targets),
        f"{p}balanced_acc": float(recall.nanmean()),
    }
    for g in ("head", "tail", "many", "medium", "few"):
        m = torch.from_numpy(groups.mask(g))
        if m.any() and not recall[m].isnan().all():
            out[f"{p}{g}_acc"] = float(recall[m].nanmean())
    return out


def mixture_metrics(prep: PreparedSplit, weights: torch.Tensor, groups: ClassGroups, prefix: str = "") -> dict[str, float]:
    conf, pred = mixture_predict(prep, weights)
    return split_metrics(conf, pred, mixture_nll(prep, weights), prep.targets, groups, prefix)


def reference_weights(prep: PreparedSplit) -> dict[str, torch.Tensor]:
    """Weights of each single expert, the uniform average and the per-sample oracle (the expert with the
    highest p_e(y): the lowest NLL any weights reach, not the highest accuracy)."""
    n, E = prep.logp_target.shape
    out = {e: torch.nn.functional.one_hot(torch.full((n,), i), E).float() for i, e in enumerate(prep.experts)}
    out["uniform"] = torch.full((n, E), 1.0 / E)
    out["oracle"] = torch.nn.functional.one_hot(prep.logp_target.argmax(-1), E).float()
    return out


def routing_stats(weights: torch.Tensor, prep: PreparedSplit) -> dict[str, float | list[float]]:
    """Effective experts exp(mean H(w)), load (mean weight, top-1 share), routed accuracy per expert."""
    w = weights.detach().float().cpu()
    n, E = w.shape
    entropy = -(w * w.clamp_min(1e-12).log()).sum(-1).mean()
    top1 = w.argmax(-1)
    share = torch.bincount(top1, minlength=E).float() / n
    correct = prep.expert_correct
    routed = [float(correct[top1 == e, e].float().mean()) if (top1 == e).any() else float("nan") for e in range(E)]
    tv = 0.5 * (w - 1.0 / E).abs().sum(-1).mean()
    return {"eff_experts": float(entropy.exp()), "mean_weight": w.mean(0).tolist(), "top1_share": share.tolist(),
            "routed_acc": routed, "tv_from_uniform": float(tv)}


def load_by_group(weights: torch.Tensor, targets: torch.Tensor, groups: ClassGroups) -> dict[str, list[float]]:
    """Mean routing weight per expert over the samples of each group (head/tail): does the gate route by group?"""
    w = weights.detach().float().cpu()
    out = {}
    for g in ("head", "tail"):
        in_group = torch.from_numpy(groups.mask(g))[targets]
        if in_group.any():
            out[g] = [round(v, 4) for v in w[in_group].mean(0).tolist()]
    return out


def results_table(prep: PreparedSplit, gate_weights: torch.Tensor, groups: ClassGroups) -> dict[str, dict[str, float]]:
    """Rows: each expert, uniform, gate, oracle; columns: METRICS (plus many/medium/few when present)."""
    ref = reference_weights(prep)
    rows = {name: mixture_metrics(prep, ref[name], groups) for name in prep.experts}
    rows["uniform"] = mixture_metrics(prep, ref["uniform"], groups)
    rows["gate"] = mixture_metrics(prep, gate_weights, groups)
    rows["oracle"] = mixture_metrics(prep, ref["oracle"], groups)
    return rows


def uniform_verdict(stats: dict, table: dict[str, dict[str, float]], split: str) -> str:
    """One line saying whether the gate routes or merely averages, and whether it pays off."""
    tv, eff = stats["tv_from_uniform"], stats["eff_experts"]
    gain = table["gate"]["balanced_acc"] - table["uniform"]["balanced_acc"]
    best_single = max(row["balanced_acc"] for name, row in table.items() if name not in ("uniform", "gate", "oracle"))
    head = (f"gate is close to uniform on {split} (mean TV from 1/E {tv:.3f} < {UNIFORM_TV}, "
            f"{eff:.2f} effective experts): it adds little over averaging"
            if tv < UNIFORM_TV else
            f"gate routes on {split} (mean TV from 1/E {tv:.3f}, {eff:.2f} effective experts)")
    pays = "beats" if gain > GAIN_MARGIN else "does not beat"
    return (f"{head}; it {pays} the uniform average: balanced acc gate {table['gate']['balanced_acc']:.4f} vs uniform "
            f"{table['uniform']['balanced_acc']:.4f} ({gain:+.4f}) vs best single expert {best_single:.4f}")


def table_markdown(tables: dict[str, dict[str, dict[str, float]]], verdicts: dict[str, str]) -> str:
    lines = []
    for split, table in tables.items():
        lines += [f"### {split}", "", "| mixture | " + " | ".join(METRICS) + " |",
                  "|---|" + "---:|" * len(METRICS)]
        for name, row in table.items():
            cells = [_fmt(row.get(m)) for m in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", verdicts.get(split, ""), ""]
    return "\n".join(lines).rstrip() + "\n"


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def save_results(rec: RunRecorder, tables: dict, verdicts: dict, info: dict, stem: str = "results") -> None:
    """results.json (machine) and results.md (people), and the verdicts as events and printed lines."""
    atomic_write_json(rec.run_dir.artifacts / f"{stem}.json", {**info, "tables": tables, "verdicts": verdicts})
    md = table_markdown(tables, verdicts)
    atomic_write(rec.run_dir.artifacts / f"{stem}.md", md.encode())
    print(md, flush=True)
    for split, text in verdicts.items():
        rec.event("verdict", split=split, text=text)
