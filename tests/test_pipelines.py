"""The named pipelines the product ships: valid, and the demo runs end to end."""

from __future__ import annotations

import pytest
from sqlmodel import select

from app.queue.pipeline import NAMED, load_pipeline
from app.queue.submit import validate
from app.store import Run
from tests.helpers import moe


@pytest.mark.parametrize("name", NAMED)
def test_every_named_pipeline_validates(name):
    spec = load_pipeline(name)
    for step in spec.steps.values():
        validate(step.args)  # the engine's own parser accepts each step (placeholders are plain text here)


def test_print_shows_the_file_to_copy(ws_path):
    out = moe(ws_path, "pipeline", "lt", "--print")
    assert out.returncode == 0 and "recompute-logits" in out.stdout and "{run:logits}" in out.stdout
    assert not (ws_path / "runs").exists() or not any((ws_path / "runs").iterdir())


@pytest.mark.slow
def test_demo_pipeline_runs_both_workloads_to_the_end(ws_path, ws):
    out = moe(ws_path, "pipeline", "demo", MOE_TUI_CPU_SLOTS="2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("10 runs"), out.stdout
    w = moe(ws_path, "wait", "--timeout", "1500", timeout=1600, MOE_TUI_CPU_SLOTS="2")
    with ws.store.read() as s:
        runs = {r.name.split("/", 1)[1]: r for r in s.exec(select(Run))}
    assert w.returncode == 0, {k: (r.status, r.error) for k, r in runs.items()}
    assert {r.status for r in runs.values()} == {"succeeded"}
    gate = ws.run_dir(runs["gating_dense"].run_id)
    assert (gate.artifacts / "results.md").exists()
    assert (ws.run_dir(runs["mh_moe"].run_id).checkpoints / "best.pth").exists()
