"""Ingest: exactly once, partial lines wait, malformed lines are reported and skipped."""

from __future__ import annotations

import json
import threading

import pytest
from sqlmodel import func, select

from app.ingest import Ingester
from app.store import IngestState, Metric, MetricSummary, Run
from app.store.models import UNREADABLE
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


def test_expert_load_becomes_metric_rows_at_its_epoch(ws):
    rd = RunDir.create(ws.runs)
    with RunRecorder(rd, kind="train-expert", config={"loss": "moe_head"}, argv=["train-expert"], total_epochs=2) as rec:
        for e in (1, 2):
            rec.log_epoch(e, {"train/loss": 1.0 / e})
            # names that read as metrics ("mse", "loss") must not give the shares a goal
            rec.log_expert_load(e, ["mse_expert", "loss_e1"], [0.25 * e, 1 - 0.25 * e],
                                top1_share=[0.5, 0.5] if e == 2 else None)
        rec.event("expert_load", epoch=None, experts=["mse_expert", "loss_e1"], load=[0.5, 0.5])
    report = Ingester(ws).run_pass()
    with ws.store.read() as s:
        rows = sorted((m.epoch, m.key, m.value) for m in s.exec(select(Metric)) if "/" in m.key
                      and not m.key.startswith("train/"))
        summ = {m.key: m for m in s.exec(select(MetricSummary))}
    assert rows == [(1, "expert_load/loss_e1", 0.75), (1, "expert_load/mse_expert", 0.25),
                    (2, "expert_load/loss_e1", 0.5), (2, "expert_load/mse_expert", 0.5),
                    (2, "top1_share/loss_e1", 0.5), (2, "top1_share/mse_expert", 0.5)]
    assert {summ[k].goal for k in summ if not k.startswith("train/")} == {"max"}
    assert summ["expert_load/mse_expert"].last_epoch == 2
    # the evaluation-time event (no epoch) is valid: no rows (the rows above are all), no warning
    assert report.warnings == []
    assert the_run(ws, rd.run_id).status == "succeeded"


# The damage (issue 14): each line costs one warning naming file, line, field and what is wrong.
BAD_LINES = [
    ('{"v":1,"type":"epoch","epoch":"x","metrics":{"a":1}}', "epoch: expected an integer, got 'x'"),
    ('{"v":null,"type":"epoch","epoch":4,"metrics":{"a":1}}', "v: expected an integer schema version, got None"),
    ('{"v":1,"type":"epoch","epoch":4,"metrics":[1, 2]}', "metrics: expected an object, got [1, 2]"),
    ('{"v":1,"type":"epoch","epoch":%d,"metrics":{"a":1}}' % 2**70, "outside SQLite's 64-bit integer range"),
    ('{"v":1,"type":"summary","metrics":{"a":"high"}}', "metrics.a: expected a number, got 'high'"),
    ('{"v":99,"type":"epoch","epoch":4,"metrics":{"a":1}}', "schema v99 is newer than this reader"),
    ('{"v":1,"type":"expert_load","epoch":1,"experts":["e0","e1"],"load":[1.0]}', "load: 1 values for 2 experts"),
    ('{"v":1,"type":"epoch","epoch":4,', "malformed JSON"),
    ('[1, 2]', "expected a JSON object"),
]


def test_each_bad_line_is_reported_once_skipped_and_the_lines_after_it_indexed(ws):
    rd = fake_job(ws, finish=False)
    good = fake_job(ws)
    # A metric may be any JSON number (an integer beyond SQLite's range too: stored as a REAL); null has no row.
    good_line = json.dumps({"v": 1, "t": 1.0, "type": "epoch", "epoch": 4,
                            "metrics": {"val/acc": 0.9, "diverged": None, "count": 2**70}})
    with open(rd.events, "a") as f:
        for line, _ in BAD_LINES:
            f.write(line + "\n")
        f.write(good_line + "\n")
    ing = Ingester(ws)
    report = ing.run_pass()
    assert len(report.warnings) == len(BAD_LINES)
    for i, (w, (_, why)) in enumerate(zip(report.warnings, BAD_LINES)):
        assert w.startswith(f"{rd.events}:{4 + i}: ") and why in w and "\n" not in w, w
    assert metric_count(ws, rd.run_id) == 8  # 3 epochs x 2 before, val/acc and count of the good line after
    assert metric_count(ws, good.run_id) == 6
    assert the_run(ws, rd.run_id).epoch == 4
    # Offset-tracked: the bad lines are behind the offset, never reported again.
    assert ing.run_pass().warnings == [] and Ingester(ws).ingest_run(rd).warnings == []
    with open(rd.events, "a") as f:
        f.write('{"type":"epoch","epoch":true}\n')
    (w,) = ing.run_pass().warnings
    assert w == f"{rd.events}:{5 + len(BAD_LINES)}: epoch: expected an integer, got True; line skipped"


def _status(rd, **changes) -> str:
    st = json.loads(rd.status.read_text())
    st.update(changes)
    return json.dumps(st)


BAD_FILES = {
    "status epoch a string": ("status.json", lambda rd: _status(rd, epoch="three"), "status.json: epoch: expected an integer, got 'three'"),
    "status from the future": ("status.json", lambda rd: _status(rd, v=99, state="frobnicated"), "status.json: schema v99 is newer"),
    "a state that does not exist": ("status.json", lambda rd: _status(rd, state="frobnicated"), "status.json: state: 'frobnicated' is not one of"),
    "run.json from the future": ("run.json", lambda rd: json.dumps({**json.loads(rd.run_json.read_text()), "v": 99}), "run.json: schema v99 is newer"),
    "truncated status": ("status.json", lambda rd: rd.status.read_text()[:25], "status.json: malformed JSON"),
    "empty run.json": ("run.json", lambda rd: "", "run.json: empty file"),
    "run.json config a list": ("run.json", lambda rd: json.dumps({**json.loads(rd.run_json.read_text()), "config": [1, 2]}),
                               "run.json: config: expected an object, got [1, 2]"),
    "v null": ("status.json", lambda rd: _status(rd, v=None), "status.json: v: expected an integer schema version, got None"),
    "exit_code not a number": ("exit_code", lambda rd: "zero\n", "exit_code: expected an integer, got 'zero'"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_run_whose_files_do_not_fit_is_unreadable_with_the_cause_until_fixed(ws, case):
    name, damage, cause = BAD_FILES[case]
    rd, other = fake_job(ws), fake_job(ws)
    original = (rd.path / name).read_text() if (rd.path / name).exists() else None
    (rd.path / name).write_text(damage(rd))
    ing = Ingester(ws)
    (w,) = ing.run_pass().warnings
    assert cause in w and "\n" not in w, w
    run = the_run(ws, rd.run_id)
    assert run.status == UNREADABLE and cause in run.error, "listed with the cause, never guessed at"
    assert metric_count(ws, rd.run_id) == 6, "its good events are indexed all the same"
    assert the_run(ws, other.run_id).status == "succeeded" and metric_count(ws, other.run_id) == 6
    assert ing.run_pass().warnings == [], "reported once"
    if original is None:
        (rd.path / name).unlink()
    else:
        (rd.path / name).write_text(original)
    assert ing.run_pass().warnings == []
    run = the_run(ws, rd.run_id)
    assert (run.status, run.error, run.exit_code) == ("succeeded", None, 0), "readable again: the real status"


def test_a_run_with_neither_run_nor_submit_readable_is_still_listed(ws):
    rd = fake_job(ws)
    rd.run_json.write_text('{"v": 1, "run_id": 7}')
    (w,) = Ingester(ws).run_pass().warnings
    assert "run.json: run_id: expected a string, got 7" in w
    run = the_run(ws, rd.run_id)
    assert run.status == UNREADABLE and metric_count(ws, rd.run_id) == 6


def test_run_files_that_are_not_plain_files_are_refused_without_blocking(ws):
    """A FIFO read would wait for a writer forever: the ingester (the daemon's) would hang."""
    import os

    rd, other = fake_job(ws), fake_job(ws)
    rd.events.unlink()
    os.mkfifo(rd.events)
    rd.status.unlink()
    rd.status.mkdir()
    report = Ingester(ws).run_pass()
    assert sorted(report.warnings) == sorted([
        f"{rd.events}: not a regular file; remove it (the job writes a plain file); its events are not indexed until it can be read",
        f"{rd.status}: not a regular file; remove it (the job writes a plain file); the run is listed as unreadable until it is fixed",
    ])
    assert the_run(ws, rd.run_id).status == UNREADABLE
    assert the_run(ws, other.run_id).status == "succeeded"
    rd.status.rmdir()
