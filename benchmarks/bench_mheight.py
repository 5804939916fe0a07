"""m-height labels: the generator against Roth's LP (scipy HiGHS) and the users' PuLP formulation.

Same codes, same machine, same run: the LP reference labels a few codes per
(n, k) of the course grid, the generator labels the whole grid with equal
codes per group (one worker, then one per core). Exactness is checked on the
LP's codes. The GPU figure is measured only where torch sees a GPU.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.mheight.generate import Source, default_workers, plan_shards, run_tasks
from engine.mheight.shards import grid_groups

LP_CODES_PER_PAIR = 2  # codes per (n, k) for the LP: ~1,500 LPs per code
GEN_CODES_PER_GROUP = 4000
GPU_CODES_PER_GROUP = 40000


def _lp_reference(groups, rng) -> tuple[list, float, int]:
    from engine.mheight.lp import height_lp

    cases, secs, labels = [], 0.0, 0
    for n, k, ms in groups:
        for P in Source().draw(rng, LP_CODES_PER_PAIR, k, n - k):
            t0 = time.perf_counter()
            hs = [height_lp(n, k, m, P) for m in ms]
            secs += time.perf_counter() - t0
            labels += len(ms)
            cases.append((n, k, ms, P, hs))
    return cases, secs, labels


def _pulp_reference(rng) -> tuple[float, float, float] | None:
    """(PuLP seconds, HiGHS seconds, relative difference) on the same (9, 4, m=2) label (72 LPs)."""
    try:
        import pulp  # noqa: F401
    except ImportError:
        return None
    from engine.mheight.lp import height_lp, height_pulp

    P = Source().draw(rng, 1, 4, 5)[0]
    t0 = time.perf_counter()
    h = height_pulp(9, 4, 2, P)
    pulp_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = height_lp(9, 4, 2, P)
    highs_s = time.perf_counter() - t0
    return pulp_s, highs_s, abs(h - ref) / ref


def _generate(groups, codes, workers, device="cpu", batch=32) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        tasks = plan_shards(groups, codes, max(1, codes // (2 * max(workers, 1))) if device == "cpu" else codes,
                            Path(tmp), 0, Source(), batch, device)
        labels = 0

        def done(info):
            nonlocal labels
            labels += info["labels"]

        t0 = time.perf_counter()
        run_tasks(tasks, workers, done)
        return time.perf_counter() - t0, labels


def run() -> str:
    import torch

    from engine.mheight.solver import heights_batch

    rng = np.random.default_rng(0)
    groups = grid_groups([9, 10], [4, 5, 6], 2, None)
    load0 = os.getloadavg()[0]

    cases, lp_s, lp_labels = _lp_reference(groups, rng)
    worst = 0.0
    for n, k, ms, P, hs in cases:
        got = heights_batch(torch.as_tensor(P[None]), ms)[0].tolist()
        for a, b in zip(got, hs):
            if math.isinf(a) or math.isinf(b):
                worst = worst if math.isinf(a) and math.isinf(b) else math.inf
            else:
                worst = max(worst, abs(a - b) / b)
    lp_rate = lp_labels / lp_s

    pulp = _pulp_reference(rng)
    one_s, one_labels = _generate(groups, GEN_CODES_PER_GROUP, 1)
    workers = default_workers()
    all_s, all_labels = _generate(groups, GEN_CODES_PER_GROUP, workers)
    load1 = os.getloadavg()[0]
    rate1, rate_all = one_labels / one_s, all_labels / all_s

    rows = [
        "| method | labels | seconds | labels/s | vs LP |",
        "|---|---:|---:|---:|---:|",
        f"| Roth LP, scipy HiGHS (reference) | {lp_labels} | {lp_s:.1f} | {lp_rate:.2f} | 1x |",
    ]
    if pulp:
        rows.append(f"| Roth LP, PuLP + CBC (the users' formulation), one (9, 4, m=2) label | 1 | {pulp[0]:.2f} | "
                     f"{1 / pulp[0]:.2f} | {pulp[1] / pulp[0]:.2f}x of HiGHS on the same label ({pulp[1]:.2f} s) |")
    rows += [
        f"| generator, 1 process | {one_labels} | {one_s:.1f} | {rate1:,.0f} | {rate1 / lp_rate:,.0f}x |",
        f"| generator, {workers} processes | {all_labels} | {all_s:.1f} | {rate_all:,.0f} | {rate_all / lp_rate:,.0f}x |",
    ]
    if torch.cuda.is_available():
        _generate(groups, 512, 1, "cuda", 8192)  # warm-up: CUDA context and kernels
        gpu_s, gpu_labels = _generate(groups, GPU_CODES_PER_GROUP, 1, "cuda", 8192)
        rows.append(f"| generator, GPU ({torch.cuda.get_device_name()}) | {gpu_labels} | {gpu_s:.1f} | "
                    f"{gpu_labels / gpu_s:,.0f} | {gpu_labels / gpu_s / lp_rate:,.0f}x |")
        gpu_line = f"GPU: the 21-group grid at {GPU_CODES_PER_GROUP:,} codes per group in {gpu_s:.1f} s (target < 10 s)."
    else:
        gpu_line = ("GPU: not measured, torch sees no GPU here (target: 840,000 labels in < 10 s; run "
                    "`python -m benchmarks mheight` on a GPU machine).")
    text = f"""## m-height label generation

Course grid (n in {{9, 10}}, k in {{4, 5, 6}}, m = 2..n-k: 21 groups), P integer uniform in [-100, 100].
The generator labels {GEN_CODES_PER_GROUP:,} codes per group; the LP {LP_CODES_PER_PAIR} codes per (n, k), every m.

{chr(10).join(rows)}

- Targets: generator >= 1,000x the HiGHS LP: **{rate_all / lp_rate:,.0f}x**; >= 5,000 labels/s on the CPU: **{rate_all:,.0f}**.
- Exactness on the LP's {len(cases)} codes ({lp_labels} labels): largest relative difference {worst:.1e} (target 1e-9);
  infinite labels agree.
- PuLP agrees with HiGHS to {pulp[2] if pulp else float("nan"):.1e} relative (CBC prints 7 digits).
- {gpu_line}
- Load average (1 min) {load0:.1f} before, {load1:.1f} after: other jobs shared these cores, so absolute rates are
  a lower bound; the ratios come from the same run.
"""
    return text
