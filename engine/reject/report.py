"""What fit-reject writes: the curves and AURC tables, fit.json, the summary metrics and the verdict.

One :class:`Curve` per (source, method, split) holds a rejector's numbers at every
target rate; everything a person or the manager reads is made from those.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import torch

from engine.core.rundir import atomic_write
from engine.reject.rule import Fitted, GroupRates, aurc

RULE = ("classify h(x) = argmax_y w_[y] eta_y(x); reject iff max_y w_[y] eta_y(x) < "
        "sum_y' (w_[y'] - mu_[y']) eta_y'(x) - c, with w_k = K beta_k / alpha_k")


@dataclass
class Curve:
    source: str
    method: str
    split: str
    rates: torch.Tensor  # (R,) target rates
    result: GroupRates  # rows R
    c: torch.Tensor  # (R,) this split's c for each rate

    def x(self, axis: str) -> torch.Tensor:
        return self.rates if axis == "target_rate" else self.result.rejected

    def aurc(self, axis: str, normalised: bool) -> tuple[float, float]:
        """(balanced, worst) areas under error against rejection rate."""
        x = self.x(axis)
        return (float(aurc(x, self.result.balanced(), normalised)), float(aurc(x, self.result.worst(), normalised)))


def convention(cfg) -> dict:
    """What the AURC numbers mean: papers differ, so every output says it."""
    return {"axis": cfg.aurc_axis, "r_min": cfg.rates[0], "r_max": cfg.rates[-1], "normalised": cfg.aurc_normalised,
            "integration": "trapezoid", "error": "per group: errors among its accepted samples / its accepted samples; "
            "balanced = mean over groups, worst = max over groups",
            "empty_group_error": cfg.empty_group_error,
            "test_weights": "C * pi_train(y)" if cfg.reweight_test else "uniform"}


def _csv(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _num(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def curves_csv(curves: list[Curve], group_names: tuple[str, ...]) -> bytes:
    header = ["source", "method", "split", "target_rate", "rejection_rate", "balanced_error", "worst_error",
              *(f"coverage_{g}" for g in group_names), *(f"error_{g}" for g in group_names)]
    rows = []
    for cv in curves:
        r = cv.result
        bal, worst = r.balanced().tolist(), r.worst().tolist()
        for i, rate in enumerate(cv.rates.tolist()):
            rows.append([cv.source, cv.method, cv.split, f"{rate:g}", _num(float(r.rejected[i])), _num(bal[i]),
                         _num(worst[i]), *map(_num, r.coverage[i].tolist()), *map(_num, r.error[i].tolist())])
    return _csv(header, rows)


def aurc_csv(curves: list[Curve], conv: dict) -> bytes:
    header = ["source", "method", "split", "aurc_balanced", "aurc_worst", "r_min", "r_max", "axis", "normalised",
              "test_weights"]
    rows = []
    for cv in curves:
        bal, worst = cv.aurc(conv["axis"], conv["normalised"])
        weights = conv["test_weights"] if cv.split == "test" else "uniform"
        rows.append([cv.source, cv.method, cv.split, _num(bal), _num(worst), f"{conv['r_min']:g}", f"{conv['r_max']:g}",
                     conv["axis"], str(conv["normalised"]).lower(), weights])
    return _csv(header, rows)


def fit_record(fits: dict[tuple[str, str], Fitted], curves: list[Curve]) -> dict:
    """Per source and method, per target rate: alpha, mu, beta, c on each split (Chow: its threshold too)."""
    out: dict = {}
    for (source, method), fit in fits.items():
        entry = {"alpha": _rows(fit.alpha), "mu": _rows(fit.mu), "beta": _rows(fit.beta),
                 "c": {cv.split: _vals(cv.c) for cv in curves if (cv.source, cv.method) == (source, method)}}
        if method == "chow":
            entry["threshold"] = {split: [-v for v in c] for split, c in entry["c"].items()}
            entry["note"] = "Chow's rule: reject iff max_y eta_y(x) < threshold; alpha = 1, beta = 1/K, mu = 1 (w = 1)"
        else:
            entry["select_objective"] = _vals(fit.objective)
            entry["alpha_updates"] = fit.steps.tolist()
        out.setdefault(source, {})[method] = entry
    return out


def _rows(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 8) for v in row] for row in t]


def _vals(t: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else round(v, 8) for v in t.tolist()]


def aurc_table(curves: list[Curve], split: str, conv: dict) -> dict[tuple[str, str], tuple[float, float]]:
    return {(cv.source, cv.method): cv.aurc(conv["axis"], conv["normalised"]) for cv in curves if cv.split == split}


def summary_metrics(table: dict[tuple[str, str], tuple[float, float]], split: str) -> dict[str, float]:
    """``<split>/aurc_balanced`` and ``<split>/aurc_worst`` of the best source x method (each its own best), and
    each pair's under ``<split>/aurc_balanced/<source>/<method>``."""
    out = {f"{split}/aurc_balanced": min(b for b, _ in table.values()),
           f"{split}/aurc_worst": min(w for _, w in table.values())}
    for (source, method), (b, w) in table.items():
        out[f"{split}/aurc_balanced/{source}/{method}"] = b
        out[f"{split}/aurc_worst/{source}/{method}"] = w
    return out


def best_pairs(table: dict[tuple[str, str], tuple[float, float]]) -> dict[str, dict]:
    bal = min(table, key=lambda k: table[k][0])
    worst = min(table, key=lambda k: table[k][1])
    return {"balanced": {"source": bal[0], "method": bal[1], "aurc": table[bal][0]},
            "worst": {"source": worst[0], "method": worst[1], "aurc": table[worst][1]}}


def verdict(table: dict[tuple[str, str], tuple[float, float]], split: str) -> str:
    """One line: does the gate's posterior beat the uniform average under the rejectors (lower AURC)?"""
    best = best_pairs(table)
    tail = (f"best balanced AURC {best['balanced']['aurc']:.4f} ({best['balanced']['source']}/"
            f"{best['balanced']['method']}), best worst-group AURC {best['worst']['aurc']:.4f} "
            f"({best['worst']['source']}/{best['worst']['method']})")
    methods = list(dict.fromkeys(m for _, m in table))
    if not any(s == "gate" for s, _ in table) or not any(s == "uniform" for s, _ in table):
        return f"on {split}: {tail} (no gate beside the uniform average to compare)"
    per = []
    for m in methods:
        (gb, gw), (ub, uw) = table[("gate", m)], table[("uniform", m)]
        who = "gate" if gb < ub and gw < uw else "uniform" if gb > ub and gw > uw else "mixed"
        per.append(f"{m} {gb:.4f}/{gw:.4f} vs {ub:.4f}/{uw:.4f} ({who})")
    gate_best = min(table[("gate", m)][0] for m in methods)
    uni_best = min(table[("uniform", m)][0] for m in methods)
    beats = "beats" if gate_best < uni_best else "does not beat"
    return (f"on {split} the gate's posterior {beats} the uniform average: best balanced AURC gate {gate_best:.4f} "
            f"vs uniform {uni_best:.4f}; AURC balanced/worst gate vs uniform: {'; '.join(per)}; {tail}")


def table_text(table: dict[tuple[str, str], tuple[float, float]], split: str) -> str:
    lines = [f"AURC on {split} (balanced / worst-group):"]
    width = max(len(f"{s}/{m}") for s, m in table)
    for (s, m), (b, w) in table.items():
        lines.append(f"  {f'{s}/{m}':<{width}}  {b:.4f} / {w:.4f}")
    return "\n".join(lines)


def per_rate_metrics(curves: list[Curve], split: str, i: int) -> dict[str, float]:
    """Rate i of every curve on ``split`` as metrics of one row (the store's rows for the run screen's plot)."""
    out: dict[str, float] = {}
    for cv in curves:
        if cv.split != split:
            continue
        out[f"{split}/target_rate"] = float(cv.rates[i])
        key = f"{cv.source}/{cv.method}"
        out[f"{split}/rejection_rate/{key}"] = float(cv.result.rejected[i])
        out[f"{split}/balanced_error/{key}"] = float(cv.result.balanced()[i])
        out[f"{split}/worst_error/{key}"] = float(cv.result.worst()[i])
    return out


def write_tables(folder, curves: list[Curve], group_names: tuple[str, ...], conv: dict) -> None:
    atomic_write(folder / "curves.csv", curves_csv(curves, group_names))
    atomic_write(folder / "aurc.csv", aurc_csv(curves, conv))
