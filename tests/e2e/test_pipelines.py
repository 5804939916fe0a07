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


@pytest.mark.parametrize("bad, says", [
    ({"backend": "bogus"}, "step 'b': unknown backend 'bogus'; choose one of: local, slurm"),
    ({"gpus": 64}, "step 'b': the run asks for 64 GPU(s) but this machine has"),
], ids=["backend", "gpus"])
def test_one_bad_step_queues_nothing_and_is_named(ws_path, tmp_path, bad, says):
    import json

    from tests.helpers import QUICK

    steps = {"a": {"args": QUICK, "gpus": 0}, "b": {"args": QUICK, "after": ["a"], **bad}}
    spec = tmp_path / "p.json"
    spec.write_text(json.dumps({"name": "chain", "steps": steps}))
    out = moe(ws_path, "pipeline", str(spec), MOE_TUI_GPUS="0")
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {says}"), line
    assert not (ws_path / "runs").exists() or not any((ws_path / "runs").iterdir()), "not even the good step before it"


def test_demo_pipeline_survives_a_dead_expert_and_a_dead_daemon(ws_path, ws):
    """The demo pipeline runs both workloads to the end, through a failed expert (it blocks its
    recompute and gating runs) and a daemon SIGKILLed mid-pipeline: retrying the expert releases
    them and every run completes with every epoch in SQLite. One pipeline for both behaviours,
    since a demo run is the costliest thing the suite does."""
    import json
    import os
    import signal

    from sqlmodel import func

    from app.store import Metric
    from tests.helpers import epoch_events, wait_for

    env = {"MOE_TUI_CPU_SLOTS": "2"}
    out = moe(ws_path, "pipeline", "demo", **env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("11 runs"), out.stdout
    ids = {line.split()[2]: line.split()[1] for line in out.stdout.splitlines() if line.startswith("queued")}
    ce = ws_path / "runs" / ids["ce"]
    wait_for(lambda: len(epoch_events(ce)) >= 1, timeout=180, what="the ce expert's first epoch")
    os.kill(json.loads((ce / "status.json").read_text())["pid"], signal.SIGKILL)  # as the OOM killer would
    downstream = ("logits", "gating_dense", "gating_top_k", "reject")

    def statuses():
        moe(ws_path, "ls", **env)
        with ws.store.read() as s:
            return {r.name.split("/", 1)[1]: r.status for r in s.exec(select(Run)) if r.run_id in ids.values()}

    wait_for(lambda: all(statuses()[k] == "blocked" for k in downstream), timeout=120, what="the blocked chain")
    assert statuses()["ce"] == "failed"
    assert not (ws_path / "runs" / ids["logits"] / "launch.json").exists(), "a blocked run never starts"

    daemon = json.loads((ws_path / ".moe-tui" / "daemon.pid").read_text())
    os.kill(daemon["pid"], signal.SIGKILL)  # mid-pipeline: m-height and other experts are queued or running
    retry = moe(ws_path, "retry", ids["ce"], **env)  # any command brings a daemon back
    assert retry.returncode == 0, retry.stderr
    assert moe(ws_path, "wait", "--timeout", "1500", timeout=1600, **env).returncode == 0
    with ws.store.read() as s:
        runs = {r.run_id: r for r in s.exec(select(Run))}
        for run in runs.values():
            assert run.status == ("failed" if run.run_id == ids["ce"] else "succeeded"), (run.name, run.error)
            n = s.exec(select(func.count(func.distinct(Metric.epoch)))
                       .where(Metric.run == run.id, Metric.epoch.is_not(None))).one()
            assert n == len(epoch_events(ws_path / "runs" / run.run_id)), run.name
    assert len(runs) == 12  # the eleven steps and the retried expert
    by_name = {r.name.split("/", 1)[1]: r for r in runs.values() if r.run_id in ids.values()}
    assert (ws.run_dir(by_name["gating_dense"].run_id).artifacts / "results.md").exists()
    reject = ws.run_dir(by_name["reject"].run_id)
    assert {p.name for p in (reject.artifacts / "reject").iterdir()} >= {"curves.csv", "aurc.csv", "fit.json",
                                                                         "risk_coverage.png"}
    assert (ws.run_dir(by_name["mh_moe"].run_id).checkpoints / "best.pth").exists()
