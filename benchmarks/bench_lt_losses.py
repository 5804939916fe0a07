"""Long-tail losses on the embedded digits set: ce vs logit_adjust vs balanced_softmax over 3 seeds.

Real `engine train-expert` runs (subprocesses, real run directories) with the
`quick` preset: ResNet-32, 16 px digits, imbalance factor 10 (90 images of
class 0 down to 9 of class 9), 20 epochs. The score is balanced accuracy on
the balanced test split (640 images) of the best-on-val checkpoint.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LOSSES = ("ce", "logit_adjust", "balanced_softmax")
SEEDS = (0, 1, 2)
ARGS = ["train-expert", "--preset", "quick"]


def train(ws: Path, loss: str, seed: int) -> dict:
    engine = Path(sys.executable).parent / "engine"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    before = set((ws / "runs").iterdir()) if (ws / "runs").exists() else set()
    out = subprocess.run([str(engine), *ARGS, "--loss", loss, "--seed", str(seed), "--workspace", str(ws)],
                         capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"{loss} seed {seed} failed: {out.stderr.strip().splitlines()[-1]}")
    (rd,) = set((ws / "runs").iterdir()) - before
    events = [json.loads(line) for line in (rd / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == "summary"][-1]["metrics"]


def run() -> str:
    scores: dict[str, list[dict]] = {loss: [] for loss in LOSSES}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            for loss in LOSSES:
                m = train(Path(tmp), loss, seed)
                scores[loss].append(m)
                print(f"  {loss} seed {seed}: test/balanced_acc {m['test/balanced_acc']:.4f}", flush=True)

    def col(loss: str, key: str) -> list[float]:
        return [m.get(key, float("nan")) for m in scores[loss]]

    lines = [
        "## Long-tail losses on the embedded digits set (3 seeds)",
        "",
        f"`engine {' '.join(ARGS)} --loss LOSS --seed S`, S in {list(SEEDS)}: ResNet-32, 16 px, IF 10, 20 epochs; "
        "test split (balanced, 640 images), best-on-val checkpoint.",
        "",
        "| loss | balanced acc per seed | mean | head acc (>20 imgs, mean) | few acc (<20, mean) | tail acc (<=20, mean) |",
        "|---|---|---|---|---|---|",
    ]
    means = {}
    for loss in LOSSES:
        bal = col(loss, "test/balanced_acc")
        means[loss] = statistics.mean(bal)
        head = statistics.mean(col(loss, "test/head_acc"))
        few = statistics.mean(col(loss, "test/few_acc"))
        tail = statistics.mean(col(loss, "test/tail_acc"))
        lines.append(f"| {loss} | {', '.join(f'{b:.3f}' for b in bal)} | **{means[loss]:.3f}** | {head:.3f} | "
                     f"{few:.3f} | {tail:.3f} |")
    wins = {loss: sum(a > b for a, b in zip(col(loss, "test/balanced_acc"), col("ce", "test/balanced_acc")))
            for loss in LOSSES[1:]}
    lines += ["", "Against ce: " + "; ".join(
        f"{loss} {means[loss] - means['ce']:+.3f} balanced accuracy on average, better on {wins[loss]}/3 seeds"
        for loss in LOSSES[1:]) + "."]
    return "\n".join(lines)
