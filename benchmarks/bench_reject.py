"""fit-reject (issue 15): the vectorised rejectors against a direct per-rate loop.

Two sizes, synthetic posteriors of a model trained on a long tail (eta ~ pi_train x likelihood):

- CIFAR-100-LT IF100: C = 100 (69 head / 31 tail classes), tunev 1,000 + val 1,000 + test 8,000,
  4 sources, 3 methods, the default grids (17 rates, 13 lambdas, M = 20; worst-group T = 25).
  The reference runs every method of one source in full (its curves are compared with ours);
  its time is that x 4. The whole `engine fit-reject` job also runs on such logits from disk.
- iNaturalist-2018: C = 8,142, tunev 12,500 + val 12,500 + test 100,000, random posteriors built
  block by block (never held whole). ``BENCH_REJECT_INAT_SCALE`` (default 1) shrinks the sample
  counts; the reference's fixed points are timed on a few (rate, lambda) pairs and extrapolated.

Ours: posteriors -> per-group statistics (``rule.group_stats``, the job's reduction), then
``fit_reject.fit_all`` (the job's loop, one torch thread).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import best_of
from engine.common.groups import ClassGroups
from engine.reject import rule
from engine.reject.config import FitRejectConfig
from engine.reject.fit_reject import fit_all

SOURCES = ("uniform", "e0", "e1", "e2")


def lt_counts(C: int, n_max: int, imb: float) -> list[int]:
    return [int(n_max * imb ** (-i / (C - 1))) for i in range(C)]


def posterior_block(y: torch.Tensor, prior: torch.Tensor, seed: int, strength: float = 3.0) -> torch.Tensor:
    """(n, C) float64 posteriors of a long-tail-trained model for labels y."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(y), len(prior), generator=g, dtype=torch.float64)
    z[torch.arange(len(y)), y] += strength
    eta = z.softmax(-1) * prior
    return eta / eta.sum(-1, keepdim=True)


def balanced_labels(C: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.arange(C).repeat_interleave(math.ceil(n / C))[torch.randperm(C * math.ceil(n / C), generator=g)][:n]


# --------------------------------------------------------------------------- #
# The reference: the rule written out class by class, one target rate (and lambda, and step) at a time


def direct_scores(eta, cg, alpha, beta, mu):
    K = len(alpha)
    w = K * beta / alpha.clamp_min(rule.ALPHA_FLOOR)
    wy, muy = w[cg], mu[cg]
    weighted = eta * wy
    best, pred = weighted.max(1)
    return best - (eta * (wy - muy)).sum(1), pred


def direct_accept(score, r):
    n = len(score)
    k = min(int(torch.round(torch.tensor(r * n, dtype=torch.float64))), n - 1)
    return score >= score.sort().values[k]


def direct_errors(accept, pred, y, grp, K, empty):
    out = []
    for k in range(K):
        m = accept & (grp == k)
        out.append(float((pred[m] != y[m]).double().mean()) if m.any() else empty)
    return torch.tensor(out, dtype=torch.float64)


def direct_alpha(eta, y, grp, cg, beta, mu, r, iters, d, tol, K):
    alpha = torch.tensor([K * float((grp == k).double().mean()) for k in range(K)], dtype=torch.float64)
    for _ in range(iters):
        score, _ = direct_scores(eta, cg, alpha, beta, mu)
        acc = direct_accept(score, r)
        new = torch.tensor([K * float((acc & (grp == k)).double().mean()) for k in range(K)], dtype=torch.float64)
        move = d * (new - alpha)
        alpha = alpha + move
        if float(move.abs().max()) < tol:
            break
    return alpha


def direct_cs_plugin(split1, split2, cg, beta, r, lambdas, iters, cfg, K):
    best = None
    for lam in lambdas:
        mu = torch.tensor([0.0, lam], dtype=torch.float64)
        alpha = direct_alpha(*split1, cg, beta, mu, r, iters, cfg.alpha_damping, cfg.alpha_tol, K)
        score, pred = direct_scores(split2[0], cg, alpha, beta, mu)
        err = direct_errors(direct_accept(score, r), pred, split2[1], split2[2], K, cfg.empty_group_error)
        obj = float((beta * err).sum())
        if best is None or obj < best[0]:
            best = (obj, alpha, mu)
    return best[1], best[2]


def direct_method(method, splits, cg, r, cfg, K=2):
    """alpha, mu, beta of one method at one rate."""
    half = torch.full((K,), 1.0 / K, dtype=torch.float64)
    if method == "chow":
        return torch.ones(K, dtype=torch.float64), torch.ones(K, dtype=torch.float64), half
    if method == "plugin_balanced":
        a, m = direct_cs_plugin(splits["tunev"], splits["val"], cg, half, r, cfg.lambda_grid, cfg.alpha_iters, cfg, K)
        return a, m, half
    beta = half.clone()
    for t in range(cfg.worst_rounds):
        a, m = direct_cs_plugin(splits["tunev"], splits["val"], cg, beta, r, cfg.worst_lambda_grid,
                                cfg.worst_alpha_iters, cfg, K)
        if t + 1 < cfg.worst_rounds:
            score, pred = direct_scores(splits["val"][0], cg, a, beta, m)
            err = direct_errors(direct_accept(score, r), pred, splits["val"][1], splits["val"][2], K,
                                cfg.empty_group_error)
            beta = beta * torch.exp(cfg.eg_step * err)
            beta = beta / beta.sum()
    return a, m, beta


def direct_curve(method, splits, cg, cfg, split="test"):
    """Balanced error per rate on ``split``, every rate fitted on its own."""
    out = []
    for r in cfg.rates:
        a, m, b = direct_method(method, splits, cg, r, cfg)
        eta, y, grp = splits[split]
        score, pred = direct_scores(eta, cg, a, b, m)
        err = direct_errors(direct_accept(score, r), pred, y, grp, 2, cfg.empty_group_error)
        out.append(float(err.mean()))
    return out


# --------------------------------------------------------------------------- #


def ours(cfg: FitRejectConfig, stats: dict) -> tuple[dict, list]:
    return fit_all(cfg, list(SOURCES), ["tunev", "val", "test"], stats)


def cifar(cfg: FitRejectConfig) -> dict:
    C = 100
    counts = lt_counts(C, 500, 100.0)
    groups = ClassGroups(tuple(counts))
    cg = torch.from_numpy(groups.mask("tail").astype(np.int64))
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    sizes = {"tunev": 1000, "val": 1000, "test": 8000}
    eta = {}
    for si, split in enumerate(sizes):
        y = balanced_labels(C, sizes[split], si)
        experts = [posterior_block(y, prior ** (0.5 + 0.5 * e), 10 * si + e, 2.5 + 0.5 * e) for e in range(3)]
        eta[split] = (y, {"uniform": sum(experts) / 3, **{f"e{e}": p for e, p in enumerate(experts)}})
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    stats = {split: {s: rule.group_stats(p, y, cg, 2) for s, p in by.items()} for split, (y, by) in eta.items()}
    t_reduce = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits, curves = ours(cfg, stats)
    t_fit = time.perf_counter() - t0
    # the reference: one source in full, x 4
    src = "e1"
    splits = {split: (by[src], y, cg[y]) for split, (y, by) in eta.items()}
    t0 = time.perf_counter()
    ref = {m: direct_curve(m, splits, cg, cfg) for m in cfg.methods}
    t_ref = (time.perf_counter() - t0) * len(SOURCES)
    mine = {cv.method: cv.result.balanced().tolist() for cv in curves if cv.source == src and cv.split == "test"}
    diff = max(abs(a - b) for m in ref for a, b in zip(ref[m], mine[m]))
    job = job_on_disk(eta, counts)
    return {"reduce": t_reduce, "fit": t_fit, "ref": t_ref, "diff": diff, "job": job,
            "tail": int(groups.mask("tail").sum())}


def job_on_disk(eta: dict, counts: list[int]) -> float:
    """Wall seconds of `engine fit-reject` (a fresh process: torch import, logits from disk, outputs) on
    the CIFAR-size posteriors written as the experts' logits (log eta: the softmax gives eta back)."""
    from tests.gating_synth import write_npz

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "logits"
        for split, (y, by) in eta.items():
            for e in range(3):
                write_npz(root / f"e{e}" / f"{split}_logits.npz", by[f"e{e}"].log().numpy(), y.numpy())
        (root / "class_counts.json").write_text(json.dumps({"train_lt": counts}))
        cmd = [str(Path(sys.executable).parent / "engine"), "fit-reject", "--logits-dir", str(root), "--experts",
               "e0,e1,e2", "--splits-dir", str(root), "--workspace", tmp]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"fit-reject failed: {out.stderr.strip().splitlines()[-1]}")
    return wall


def inat(cfg: FitRejectConfig, scale: float) -> dict:
    C = 8142
    counts = lt_counts(C, 1000, 500.0)  # iNaturalist-2018's profile: 1,000 down to 2 images
    groups = ClassGroups(tuple(counts))
    cg = torch.from_numpy(groups.mask("tail").astype(np.int64))
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    sizes = {"tunev": int(12500 * scale), "val": int(12500 * scale), "test": int(100000 * scale)}
    rows = max(1, (64 << 20) // (8 * C * 5))  # the job's block: chunk_mb 64 over E + 2 posteriors
    t_make = t_reduce = 0.0
    stats: dict = {}
    threads = torch.get_num_threads()
    for si, (split, n) in enumerate(sizes.items()):
        y = balanced_labels(C, n, si)
        parts = {s: [] for s in SOURCES}
        for start in range(0, n, rows):
            t0 = time.perf_counter()
            yb = y[start : start + rows]
            experts = [posterior_block(yb, prior ** (0.5 + 0.5 * e), 1000 * si + 10 * start + e) for e in range(3)]
            block = {"uniform": sum(experts) / 3, **{f"e{e}": p for e, p in enumerate(experts)}}
            t_make += time.perf_counter() - t0
            t0 = time.perf_counter()
            for s in SOURCES:
                parts[s].append(rule.group_stats(block[s], yb, cg, 2))
            t_reduce += time.perf_counter() - t0
        stats[split] = {s: rule.concat_stats(p) for s, p in parts.items()}
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ours(cfg, stats)
    t_fit = time.perf_counter() - t0
    # The reference's unit of work: one fixed point of alpha (M steps over the (N1, C) posterior), timed
    # (best of 3) on 1,024 samples of S1 and scaled to S1's size; the balanced plug-in needs R x L of them
    # per source, the worst-group one T x R x L_w (of M_w steps).
    y = balanced_labels(C, 1024, 99)
    eta = posterior_block(y, prior ** 1.0, 99)
    grp = cg[y]
    half = torch.full((2,), 0.5, dtype=torch.float64)
    mu = torch.tensor([0.0, cfg.lambda_grid[4]], dtype=torch.float64)
    # tol 0: all M steps, as a row that does not converge (the vectorised loop's bound too)
    t_one, _ = best_of(lambda: direct_alpha(eta, y, grp, cg, half, mu, 0.3, cfg.alpha_iters, cfg.alpha_damping,
                                            0.0, 2))
    per_fp = t_one * sizes["tunev"] / len(y)
    R = len(cfg.rates)
    n_fp = R * len(cfg.lambda_grid) + cfg.worst_rounds * R * len(cfg.worst_lambda_grid) * cfg.worst_alpha_iters / cfg.alpha_iters
    t_ref = per_fp * n_fp * len(SOURCES)
    return {"make": t_make, "reduce": t_reduce, "fit": t_fit, "ref": t_ref, "sizes": sizes,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "tail": int(groups.mask("tail").sum())}


def run() -> str:
    cfg = FitRejectConfig()
    scale = float(os.environ.get("BENCH_REJECT_INAT_SCALE", "1"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    c = cifar(cfg)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    i = inat(cfg, scale)
    return report(c, i, scale)


def report(c: dict, i: dict, scale: float) -> str:
    ours_c, ours_i = c["reduce"] + c["fit"], i["reduce"] + i["fit"]
    sz = i["sizes"]
    same = ("the same balanced error at every rate and method" if c["diff"] == 0 else
            f"largest difference in balanced error at any rate and method {c['diff']:.2g} (ties at a threshold)")
    return "\n".join([
        "## Learning to reject (fit-reject, issue 15)",
        "",
        "Chow, plug-in balanced and plug-in worst-group over 4 sources (uniform average + 3 experts), 17 target "
        "rates, the default grids (13 lambdas x M = 20; worst-group T = 25 rounds x 3 lambdas x M = 10). Ours: "
        "posteriors reduced to per-group statistics, then every (rate, lambda) at once (`engine/reject/rule.py`, "
        "one torch thread). Reference: the rule written out over all C classes, one rate, lambda and "
        "fixed-point step at a time.",
        "",
        "| size | reference | ours (reduce + fit) | ratio |",
        "|---|---:|---:|---:|",
        f"| CIFAR-100-LT: C = 100 ({c['tail']} tail), 1,000 + 1,000 + 8,000 | {c['ref']:.1f} s (one source "
        f"in full, x 4) | {ours_c:.2f} s ({c['reduce']:.2f} + {c['fit']:.2f}) | **{c['ref'] / ours_c:.0f}x** |",
        f"| iNaturalist-2018: C = 8,142 ({i['tail']} tail), {sz['tunev']:,} + {sz['val']:,} + {sz['test']:,} "
        f"| {i['ref']:.0f} s (extrapolated from one fixed point on 1,024 samples) | {ours_i:.1f} s "
        f"({i['reduce']:.1f} + {i['fit']:.1f}) | **{i['ref'] / ours_i:.0f}x** |",
        "",
        f"CIFAR size, the whole `engine fit-reject` job (a fresh process: torch import, logits from disk, all "
        f"outputs): **{c['job']:.1f} s** wall (target < 10 s). Ours against the reference on the same source: "
        f"{same}.",
        f"iNaturalist size{'' if scale == 1 else f' (samples scaled by {scale:g})'}: peak memory of the benchmark "
        f"process {i['peak_gib']:.2f} GiB (the posteriors are made and reduced in blocks; target < 8 GiB); making "
        f"the random posteriors took another {i['make']:.1f} s, not counted.",
    ])
