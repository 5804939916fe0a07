"""m-height regressors on a held-out course-grid set, side by side, trained the same way.

Everything runs through the real ``engine mheight`` jobs in a scratch
workspace: generate (train set, and a held-out set with another seed),
train fc and resnet2d, finetune a sparse top-2 MoE from two fc checkpoints,
and the fast recipe (four small fc experts on minor features alone, a
sparse top-2 MoE with a linear gate fine-tuned from them: the issue's
model, predicted through forward.c), evaluate each on the held-out set.
Sized to finish in minutes on a 2-core CPU, which is far from the budget the
issue's 0.40 target needs; the table says what this budget reaches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.timing import best_of

FAST_MOE = "fast sparse MoE: top-2 of 4 fast experts, linear gate (finetuned)"
TRAIN_CODES = 6000  # per (n, k): every m of the course grid, ~126k labels
HELD_OUT_CODES = 1000
EPOCHS = 10
FT_EPOCHS = 5
FC = ["--hidden", "256"]
RESNET = ["--channels", "16", "--blocks", "2"]
# the fast recipe (docs/mheight.md): no P, no LayerNorm, ReLU: forward.c predicts it
FAST = ["--model", "fc", "--minor-features", "--no-p-input", "--act", "relu", "--no-norm", "--hidden", "16", "--depth", "2"]
FAST_EXPERTS = 4


def _engine(ws: Path, *args: str) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = set((ws / "runs").iterdir()) if (ws / "runs").exists() else set()
    out = subprocess.run([str(Path(sys.executable).parent / "engine"), *args, "--workspace", str(ws)],
                         capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"engine {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1:]}")
    (rd,) = set((ws / "runs").iterdir()) - before
    return rd


def _summary(rd: Path) -> dict:
    for line in (rd / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev["type"] == "summary":
            return ev["metrics"]
    return {}


def _group_mean_baseline(train: Path, held: Path) -> float:
    """Test Log2-MSE of predicting each (n, k, m) group's mean training label."""
    import numpy as np

    from engine.mheight.shards import load_labels

    tr, te = load_labels(train, 6)[0], load_labels(held, 6)[0]
    tr, te = tr.take(np.flatnonzero(tr.finite)), te.take(np.flatnonzero(te.finite))
    mses = []
    for n, k, m in te.groups():
        a = (tr.n == n) & (tr.k == k) & (tr.m == m)
        b = (te.n == n) & (te.k == k) & (te.m == m)
        mses.append(float(((te.log2h[b] - tr.log2h[a].mean()) ** 2).mean()))
    return float(np.mean(mses))


def _generator_rate(held: Path) -> tuple[float, int]:
    """The exact generator's labels/s on the held-out codes, in this process: one torch thread,
    the generate job's CPU batch, best of 3 (the evaluate jobs' predictions/s are one thread too)."""
    import torch

    from engine.mheight.config import MHeightGenerateConfig
    from engine.mheight.labeler import label_codes
    from engine.mheight.shards import data_dir, read_manifest, read_shard

    torch.set_num_threads(1)
    batch = MHeightGenerateConfig.model_fields["batch_size"].default
    directory = data_dir(held)
    shards = [read_shard(directory / entry["file"]) for entry in read_manifest(directory)["shards"]]
    best, _ = best_of(lambda: [label_codes(sh.P, [int(m) for m in sh.m], batch) for sh in shards])
    labels = sum(sh.labels for sh in shards)
    return labels / best, labels


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        t0 = time.perf_counter()
        train = _engine(ws, "mheight", "generate", "--codes-per-group", str(TRAIN_CODES), "--shard-size", "1500")
        held = _engine(ws, "mheight", "generate", "--codes-per-group", str(HELD_OUT_CODES), "--seed", "12345",
                       "--shard-size", "300", "--workers", "1")
        job_rate = _summary(held)["labels_per_s"]
        gen_s = time.perf_counter() - t0
        gen_rate, held_labels = _generator_rate(held)
        fit = ["--data", str(train), "--epochs", str(EPOCHS), "--threads", "1"]
        rows, timings = [], {}
        runs = {}
        for name, args in {"fc": ["--model", "fc", *FC],
                           "fc, raw P (no canonicalisation)": ["--model", "fc", *FC, "--no-canonicalize"],
                           "fc, raw P + signed-permutation augmentation": ["--model", "fc", *FC, "--no-canonicalize", "--augment"],
                           "resnet2d": ["--model", "resnet2d", *RESNET],
                           "fc + minor features": ["--model", "fc", *FC, "--minor-features"],
                           "fc + minor features, seed 1": ["--model", "fc", *FC, "--minor-features", "--seed", "1"]}.items():
            t = time.perf_counter()
            runs[name] = _engine(ws, "mheight", "train", *fit, *args)
            timings[name] = time.perf_counter() - t
        t = time.perf_counter()
        runs["sparse_moe (finetuned)"] = _engine(
            ws, "mheight", "finetune", "--experts", f"{runs['fc + minor features']},{runs['fc + minor features, seed 1']}",
            "--data", str(train), "--epochs", str(FT_EPOCHS), "--threads", "1", "--top-k", "2")
        timings["sparse_moe (finetuned)"] = time.perf_counter() - t
        t = time.perf_counter()
        fast = [_engine(ws, "mheight", "train", *fit, *FAST, "--seed", str(s)) for s in range(FAST_EXPERTS)]
        runs["fast fc expert (seed 0 of 4)"] = fast[0]
        timings["fast fc expert (seed 0 of 4)"] = (time.perf_counter() - t) / FAST_EXPERTS
        t = time.perf_counter()
        runs[FAST_MOE] = _engine(ws, "mheight", "finetune", "--experts", ",".join(map(str, fast)), "--data", str(train),
                                 "--epochs", str(FT_EPOCHS), "--threads", "1", "--top-k", "2", "--gate-hidden", "0")
        timings[FAST_MOE] = time.perf_counter() - t
        baseline = _group_mean_baseline(train, held)
        rows.append(f"| per-group mean of the training labels | {baseline:.3f} | - | - | - | - |")
        results = {}
        for name, rd in runs.items():
            evaluated = _engine(ws, "mheight", "evaluate", str(rd), "--data", str(held), "--threads", "1")
            ev = results[name] = _summary(evaluated)
            rate = ev["predict_per_s"]
            # the path the job chose and said, not the one expected (no compiler: torch, said so)
            path = "C" if "forward: C" in (evaluated / "stdout.log").read_text() else "torch"
            rows.append(f"| {name} | {ev['test/log2_mse']:.3f} | {timings[name]:.0f} | {path} | {rate:,.0f} | "
                        f"{rate / gen_rate:,.0f}x |")
        torch_ev = _summary(_engine(ws, "mheight", "evaluate", str(runs[FAST_MOE]), "--data", str(held), "--threads", "1",
                                    "--cpu-kernels", "off"))
        rows.append(f"| {FAST_MOE}, `--cpu-kernels off` (numpy features, torch forward) | {torch_ev['test/log2_mse']:.3f} | - | torch | "
                    f"{torch_ev['predict_per_s']:,.0f} | {torch_ev['predict_per_s'] / gen_rate:,.0f}x |")
        moe = results[FAST_MOE]
        met = moe["test/log2_mse"] <= 0.40 and moe["predict_per_s"] >= 1000 * gen_rate
    return f"""## m-height models (held-out course grid)

Train: {TRAIN_CODES:,} codes per (n, k) of the course grid (all m = 2..n-k), integer P in [-100, 100],
10% held out for validation; test: {HELD_OUT_CODES:,} codes per (n, k) from another seed. Single models
train {EPOCHS} epochs (64 codes per step, each with its labels for every m); the sparse MoEs fine-tune
{FT_EPOCHS} epochs from their experts' checkpoints. fc: {' '.join(FC)}; resnet2d: {' '.join(RESNET)};
"minor features": `--minor-features`. sparse_moe (finetuned): top-2 of the two "fc + minor features"
checkpoints, gate MLP. The fast recipe: {FAST_EXPERTS} experts `{' '.join(FAST)}` (seeds 0-{FAST_EXPERTS - 1}),
then `mheight finetune --top-k 2 --gate-hidden 0`. One torch thread per job. Log2-MSE = mean over the 21
(n, k, m) groups.

| model | test Log2-MSE | train s | forward | predictions/s | vs the generator ({gen_rate:,.0f} labels/s) |
|---|---:|---:|---|---:|---:|
{chr(10).join(rows)}

- Issue target, fine-tuned sparse MoE at Log2-MSE <= 0.40 and >= 1,000x the generator: **{'met' if met else 'not met'}**,
  {moe['test/log2_mse']:.3f} at {moe['predict_per_s'] / gen_rate:,.0f}x (per-group mean ~1.1). Its prediction:
  {moe['input_seconds'] * 1e3:.2f} ms of input features (minor statistics, minors.c) and
  {moe['forward_seconds'] * 1e3:.2f} ms of forward pass (forward.c) for the {held_labels:,} held-out labels' codes.
- predictions/s is the `evaluate` job's: finite held-out labels per second from raw P to predictions, features
  included, the best timed pass after a warm-up ({moe['timed_passes']:.0f} passes for the fast MoE); "forward" says which path ran
  (`--cpu-kernels auto`, the default, picks C where it applies). The generator's is the exact labelling of the same codes in
  this process, one thread, best of 3 (the held-out `generate` job itself, job start and shard writes
  included, made {job_rate:,.0f} labels/s).
- Data generation took {gen_s:.0f} s.
"""
