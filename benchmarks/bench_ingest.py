"""Ingest: batched, offset-tracked passes against a row-at-a-time reference.

Workload: 100 finished runs x 200 epochs x 10 metrics (200,000 metric rows),
written as real run directories through the job-side API.

Reference: what a simple logger does, one INSERT and one COMMIT per metric
value through the ORM (the pattern of per-step SQLite loggers), on the same
database settings.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

RUNS, EPOCHS, KEYS = 100, 200, 10


def make_runs(root: Path) -> None:
    from engine.core.recorder import RunRecorder
    from engine.core.rundir import RunDir

    for i in range(RUNS):
        rd = RunDir.create(root / "runs", run_id=f"240101-{i:06d}-0000")
        rec = RunRecorder(rd, kind="train-expert", config={"seed": i}, argv=["train-expert"], total_epochs=EPOCHS)
        rec._tee_output = lambda: None  # keep the benchmark's own output clean
        with rec:
            for e in range(1, EPOCHS + 1):
                rec.event("epoch", epoch=e, metrics={f"m{k}": e * 0.01 + k for k in range(KEYS)})


def reference(root: Path, db: Path) -> float:
    from app.store import Metric, Run, Store

    store = Store(db)
    t0 = time.perf_counter()
    for rd in sorted((root / "runs").iterdir()):
        with store.write() as s:
            run = Run(run_id=rd.name, rev=0)
            s.add(run)
        for line in (rd / "events.jsonl").read_text().splitlines():
            ev = json.loads(line)
            for k, v in (ev.get("metrics") or {}).items():
                with store.write() as s:
                    s.add(Metric(run=run.id, epoch=ev.get("epoch"), key=k, value=v, time=ev["t"]))
    return time.perf_counter() - t0


def run() -> str:
    from app.ingest import Ingester
    from app.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_runs(root)
        ws = Workspace.open(root)
        ing = Ingester(ws)
        t0 = time.perf_counter()
        report = ing.run_pass()
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        idle_passes = 20
        for _ in range(idle_passes):
            ing.run_pass()
        idle = (time.perf_counter() - t0) / idle_passes
        ref = reference(root, root / "reference.db")
    rows = RUNS * EPOCHS * KEYS
    assert report.metrics_added == rows
    return f"""## Ingest (foundation issue)

{RUNS} runs x {EPOCHS} epochs x {KEYS} metrics = {rows:,} metric rows from real run directories.

| | time | rows/s | ratio |
|---|---:|---:|---:|
| reference: one INSERT + COMMIT per value (ORM) | {ref:.2f} s | {rows / ref:,.0f} | 1.0x |
| `Ingester.run_pass()` (batched, one transaction per run chunk) | {ours:.2f} s | {rows / ours:,.0f} | **{ref / ours:.1f}x** |
| a pass with nothing new ({RUNS} finished runs) | {idle * 1000:.1f} ms | | |
"""
