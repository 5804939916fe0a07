"""fit-reject: Chow's rule and the plug-in rejectors over each source's posterior, on every split.

Phases: resolve and check the inputs (before any work, so bad input fails in a
second); reduce each split's posteriors to per-group statistics; fit each
(source, method) on S1 = tunev and S2 = val; evaluate it on every split, each with
thresholds from its own scores; write the curves, AURCs, fitted parameters,
figure, summary metrics and verdict.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.common.groups import ClassGroups
from engine.core.config import JobSpec
from engine.core.recorder import RunRecorder
from engine.core.rundir import RUNS_DIRNAME, atomic_write, atomic_write_json, resolve_workspace
from engine.reject import posteriors, report, rule
from engine.reject.config import GROUPINGS, FitRejectConfig
from engine.reject.plot import draw_risk_coverage


def fit_method(method: str, s1: rule.GroupStats, s2: rule.GroupStats, rates: torch.Tensor,
               cfg: FitRejectConfig) -> rule.Fitted:
    K = s1.num_groups
    if method == "chow":
        return rule.chow(rates, K)
    if method == "plugin_balanced":
        beta = torch.full((len(rates), K), 1.0 / K, dtype=torch.float64)
        return rule.cs_plugin(s1, s2, beta, rates, rule.mu_grid(cfg.lambda_grid, K), cfg.alpha_iters,
                              cfg.alpha_damping, cfg.alpha_tol, cfg.empty_group_error)
    return rule.worst_group_plugin(s1, s2, rates, rule.mu_grid(cfg.worst_lambda_grid, K), cfg.worst_rounds,
                                   cfg.eg_step, cfg.worst_alpha_iters, cfg.alpha_damping, cfg.alpha_tol,
                                   cfg.empty_group_error)


def load_stats(cfg: FitRejectConfig, inputs: posteriors.Inputs) -> tuple[dict, ClassGroups, str]:
    """Per split and source the GroupStats, the class groups and where their counts came from."""
    names = GROUPINGS[cfg.groups]
    stats: dict[str, dict[str, rule.GroupStats]] = {}
    num_classes = inputs.gate.num_classes if inputs.gate else None
    groups = class_group = note = None
    for split in inputs.splits:
        logits = posteriors.load_logits(inputs, split, num_classes)
        num_classes = logits.num_classes
        if groups is None:
            counts, note = posteriors.class_counts(cfg, inputs, num_classes)
            groups = ClassGroups(tuple(int(c) for c in counts))
            class_group = posteriors.class_group_index(groups, cfg.groups)
        targets = torch.from_numpy(logits.targets.copy())
        stats[split] = posteriors.split_stats(inputs, logits, class_group, len(names), cfg.chunk_mb)
        del logits
        posteriors.check_groups_present(next(iter(stats[split].values())), names, split)
        if cfg.reweight_test and split == cfg.test_split:
            w = posteriors.train_prior_weights(groups.counts, targets)
            for s in stats[split].values():
                s.weight = w
    return stats, groups, note


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: FitRejectConfig = spec.config  # type: ignore[assignment]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # A queued run has --run-dir inside the workspace's runs/ folder: look up run ids there first.
    roots = [rec.run_dir.path.parent, resolve_workspace(spec.workspace) / RUNS_DIRNAME]
    inputs = posteriors.resolve_inputs(cfg, roots)
    for line in inputs.notes:
        print(line, flush=True)
    stats, groups, counts_note = load_stats(cfg, inputs)
    names = GROUPINGS[cfg.groups]
    first = stats[inputs.splits[0]][inputs.sources[0]]
    sizes = {split: next(iter(s.values())).num_samples for split, s in stats.items()}
    print(f"{counts_note}; groups {', '.join(f'{n} {int(m.sum())} classes' for n, m in ((n, groups.mask(n)) for n in names))}; "
          f"sources {', '.join(inputs.sources)}; splits {sizes}; {len(cfg.rates)} rates, K={first.num_groups}",
          flush=True)

    fits, curves = fit_all(cfg, inputs.sources, inputs.splits, stats, rec.check_cancelled)

    write_outputs(cfg, rec, inputs, groups, counts_note, sizes, fits, curves)


def fit_all(cfg: FitRejectConfig, sources: list[str], splits: list[str], stats: dict,
            check_cancelled: Callable[[], None] = lambda: None):
    """Every (source, method) fitted on S1/S2 and evaluated on every split (``stats[split][source]``).

    On one torch thread: each step works on (rates x grid, N) tensors, far below the size where a
    second thread pays, and two threads' OpenMP teams on two busy cores made it 10x slower."""
    rates = torch.tensor(cfg.rates, dtype=torch.float64)
    fits: dict[tuple[str, str], rule.Fitted] = {}
    curves: list[report.Curve] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for source in sources:
            s1, s2 = stats[cfg.fit_split][source], stats[cfg.select_split][source]
            for method in cfg.methods:
                fit = fits[(source, method)] = fit_method(method, s1, s2, rates, cfg)
                for split in splits:
                    result, c = rule.evaluate(stats[split][source], fit.alpha, fit.mu, fit.beta, rates,
                                              cfg.empty_group_error)
                    curves.append(report.Curve(source, method, split, rates, result, c))
                check_cancelled()
    finally:
        torch.set_num_threads(threads)
    return fits, curves


def write_outputs(cfg: FitRejectConfig, rec: RunRecorder, inputs: posteriors.Inputs, groups: ClassGroups,
                  counts_note: str, sizes: dict[str, int], fits: dict, curves: list[report.Curve]) -> None:
    names = GROUPINGS[cfg.groups]
    out = rec.run_dir.artifacts / "reject"
    out.mkdir(parents=True, exist_ok=True)
    conv = report.convention(cfg)
    report.write_tables(out, curves, names, conv)
    shown = inputs.splits[-1]  # test where it exists, else S2
    table = report.aurc_table(curves, shown, conv)
    text = report.verdict(table, shown)
    atomic_write_json(out / "fit.json", {
        "rule": report.RULE, "convention": conv, "rates": cfg.rates,
        "groups": {"names": list(names), "classes": {n: [int(i) for i in groups.mask(n).nonzero()[0]] for n in names},
                   "class_counts": list(groups.counts), "counts_from": counts_note},
        "inputs": {"gating_run": inputs.gate.run.run_id if inputs.gate else None,
                   "checkpoint": inputs.gate.name if inputs.gate else None, "logits_dir": str(inputs.root),
                   "experts": inputs.experts, "sources": inputs.sources},
        "splits": {"fit": cfg.fit_split, "select": cfg.select_split, "report": shown, "samples": sizes},
        "fits": report.fit_record(fits, curves),
        "aurc": {split: {f"{s}/{m}": dict(zip(("balanced", "worst"), v))
                         for (s, m), v in report.aurc_table(curves, split, conv).items()} for split in inputs.splits},
        "best": report.best_pairs(table), "verdict": text})
    lines = [(f"{cv.source}/{cv.method}", cv.result.rejected.tolist(), cv.result.balanced().tolist(),
              cv.result.worst().tolist()) for cv in curves if cv.split == shown]
    img = draw_risk_coverage(lines, f"risk-coverage on {shown} ({', '.join(names)}; AURC over "
                                    f"[{cfg.rates[0]:g}, {cfg.rates[-1]:g}], not normalised)"
                             if not cfg.aurc_normalised else f"risk-coverage on {shown}")
    atomic_write(out / "risk_coverage.png", lambda f: img.save(f, format="PNG"))

    # The curves as rows of the store (one per rate, like the generator's shards): the run screen plots
    # error against rejection rate from them. Straight to the event log: log_epoch would print 4 x S x M values.
    for i in range(len(cfg.rates)):
        rec.event("epoch", epoch=i + 1, phase="reject", metrics=report.per_rate_metrics(curves, shown, i))
    print(report.table_text(table, shown), flush=True)
    print(text, flush=True)
    rec.event("verdict", split=shown, text=text)
    rec.log_summary(report.summary_metrics(table, shown))
    print(f"wrote {out}: curves.csv, aurc.csv, fit.json, risk_coverage.png", flush=True)
