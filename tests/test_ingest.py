"""Ingest: exactly once, partial lines wait, malformed lines are reported and skipped."""

from __future__ import annotations

import json
import threading

from sqlmodel import func, select

from app.ingest import Ingester
from app.store import IngestState, Metric, MetricSummary, Run
from engine.core.recorder import RunRecorder
from engine.core.rundir import RunDir


def metric_count(ws, run_id=None) -> int:
    with ws.store.read() as s:
        q = select(func.count()).select_from(Metric)
        if run_id:
            q = q.join(Run, Run.id == Metric.run).where(Run.run_id == run_id)
        return s.exec(q).one()


def the_run(ws, run_id) -> Run:
    with ws.store.read() as s:
        return s.exec(select(Run).where(Run.run_id == run_id)).one()


def fake_job(ws, epochs=3, finish=True, goals=None) -> RunDir:
    """A real run directory written through the job-side API, without training."""
    rd = RunDir.create(ws.runs)
    rec = RunRecorder(rd, kind="train-expert", config={"loss": "ce"}, argv=["train-expert"], total_epochs=epochs,
                      primary_metric="val/acc", metric_goals=goals or {})
    rec.__enter__()
    for e in range(1, epochs + 1):
        rec.log_epoch(e, {"train/loss": 1.0 / e, "val/acc": [0.2, 0.6, 0.4][e - 1]})
    if finish:
        rec.__exit__(None, None, None)
    return rd


def test_a_pass_is_idempotent(ws):
    rd = fake_job(ws)
    ing = Ingester(ws)
    first = ing.run_pass()
    assert first.metrics_added == 6
    assert ing.run_pass().metrics_added == 0
    assert Ingester(ws).ingest_run(rd).metrics_added == 0  # even when forced
    assert metric_count(ws) == 6
    run = the_run(ws, rd.run_id)
    assert run.status == "succeeded" and run.epoch == 3 and run.total_epochs == 3
    assert run.backend == "headless" and run.kind == "train-expert" and run.host


def test_summaries_track_last_and_best_by_goal(ws):
    fake_job(ws)
    Ingester(ws).run_pass()
    with ws.store.read() as s:
        summ = {m.key: m for m in s.exec(select(MetricSummary))}
    acc, loss = summ["val/acc"], summ["train/loss"]
    assert (acc.goal, acc.last, acc.best, acc.best_epoch, acc.count) == ("max", 0.4, 0.6, 2, 3)
    assert (loss.goal, loss.best, loss.best_epoch) == ("min", 1.0 / 3, 3)


def test_partial_last_line_waits_until_complete(ws):
    rd = fake_job(ws, finish=False)
    line = json.dumps({"v": 1, "t": 1.0, "type": "epoch", "epoch": 4, "metrics": {"val/acc": 0.9}}) + "\n"
    with open(rd.events, "a") as f:
        f.write(line[:20])
    ing = Ingester(ws)
    ing.run_pass()
    assert metric_count(ws) == 6
    with open(rd.events, "a") as f:
        f.write(line[20:])
    ing.run_pass()
    assert metric_count(ws) == 7
    assert the_run(ws, rd.run_id).epoch == 4


def test_malformed_line_is_reported_with_file_and_line_and_skipped(ws):
    rd = fake_job(ws, finish=False)
    with open(rd.events, "a") as f:
        f.write("{this is not json}\n")
        f.write(json.dumps({"v": 1, "type": "epoch", "epoch": 4, "metrics": {"val/acc": 0.9}}) + "\n")
    report = Ingester(ws).run_pass()
    assert metric_count(ws) == 7
    assert len(report.warnings) == 1
    assert f"{rd.events}:4: malformed JSON" in report.warnings[0]
    with ws.store.read() as s:
        assert ":4: " in s.exec(select(IngestState)).one().warning


def test_truncated_last_line_of_a_finished_run_is_reported(ws):
    rd = fake_job(ws, finish=False)
    with open(rd.events, "a") as f:
        f.write('{"v": 1, "type": "epoch", "epo')
    status = rd.read_status()
    status.update(state="failed", error="boom", exit_code=1)
    rd.status.write_text(json.dumps(status))
    report = Ingester(ws).run_pass()
    assert metric_count(ws) == 6
    assert any(f"{rd.events}:4: truncated" in w for w in report.warnings)
    assert the_run(ws, rd.run_id).status == "failed"


def test_concurrent_ingesters_insert_each_row_once(ws):
    dirs = [fake_job(ws) for _ in range(5)]
    errors = []

    def work():
        try:
            for _ in range(3):
                Ingester(ws).run_pass()
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    assert metric_count(ws) == 6 * len(dirs)


def test_directories_without_files_are_left_for_later(ws):
    (ws.runs / "261124-000000-abcd").mkdir()
    (ws.runs / "not-a-run").mkdir()
    assert Ingester(ws).run_pass().runs_updated == 0
    with ws.store.read() as s:
        assert s.exec(select(func.count()).select_from(Run)).one() == 0
