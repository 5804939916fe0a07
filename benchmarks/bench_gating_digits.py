"""Gating on the embedded digits set: the full results table after the long-tail experts.

The demo pipeline's lt half, run at the gate's published recipe: three
`train-expert --preset quick` experts (ce, logit_adjust, balanced_softmax),
`engine recompute-logits` on their calibrated checkpoints, `engine
train-gating` (100 epochs, dense and top-k routers) with the experts' class
weights and counts, and `engine evaluate-gating --split test`. The table is
each expert, their uniform average, the gate and the per-sample oracle.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOSSES = ("ce", "logit_adjust", "balanced_softmax")


def engine(ws: Path, *args: str) -> Path:
    """Run an engine job; returns its run directory (the job prints it first)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOE_TUI_WORKSPACE": str(ws)}
    out = subprocess.run([str(Path(sys.executable).parent / "engine"), *args], capture_output=True, text=True,
                         env=env, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"engine {' '.join(args)} failed: {out.stderr[-2000:]}")
    return Path(re.search(r"^run \S+: (.+)$", out.stderr, re.M).group(1))


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        t0 = time.perf_counter()
        experts = {loss: engine(ws, "train-expert", "--loss", loss, "--preset", "quick") for loss in LOSSES}
        logits = engine(ws, "recompute-logits", "--experts", ",".join(map(str, experts.values())))
        t_experts = time.perf_counter() - t0
        splits = experts["ce"] / "artifacts" / "splits"
        sections = []
        for router in ("dense", "top_k"):
            t0 = time.perf_counter()
            gate = engine(ws, "train-gating", "--router", router, "--logits-dir", str(logits / "artifacts" / "logits"),
                          "--experts", ",".join(LOSSES), "--class-weights", str(splits / "class_weights.json"),
                          "--class-counts", str(splits / "class_counts.json"))
            t_gate = time.perf_counter() - t0
            evaluation = engine(ws, "evaluate-gating", str(gate), "--split", "test")
            results = json.loads((gate / "artifacts" / "results.json").read_text())
            test_eval = json.loads((evaluation / "artifacts" / "results_test.json").read_text())
            same = all(abs(test_eval["tables"]["test"]["gate"][k] - results["tables"]["test"]["gate"][k]) < 1e-6
                       for k in results["tables"]["test"]["gate"])
            inputs = json.loads((gate / "artifacts" / "inputs.json").read_text())
            md = (gate / "artifacts" / "results.md").read_text().replace("### ", "#### ")
            sections.append(f"""### Router `{router}`

`train-gating --router {router}` with the recipe defaults (100 epochs) on the
{inputs['splits']['gating']}-sample gating split, selected on the {inputs['splits']['val']}-sample val split
({t_gate:.0f} s). Best epoch {results['best_epoch']}. `evaluate-gating --split test` reproduces the
test rows: {'yes' if same else 'NO'}.

{md}""")
    body = "\n".join(sections)
    return f"""## Gating on the embedded digits (full results table)

Experts: `train-expert --preset quick --loss` {', '.join(LOSSES)} and `recompute-logits` on their
temperature-calibrated checkpoints ({t_experts:.0f} s in all).

{body}"""
