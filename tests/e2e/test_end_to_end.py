"""Real jobs through every layer: engine -> run directory -> SQLite -> CLI/CSV.

These train real (tiny) models in real subprocesses and kill them for real.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal

from sqlmodel import func, select

from app.store import Metric, Run
from tests.helpers import QUICK, TINY, engine, engine_bg, epoch_events, moe, moe_bg, run_dirs, wait_for



def db_counts(ws) -> tuple[int, int]:
    with ws.store.read() as s:
        return s.exec(select(func.count()).select_from(Run)).one(), s.exec(select(func.count()).select_from(Metric)).one()


def test_headless_run_shows_up_and_exports(ws_path):
    out = engine(ws_path, "train-expert", "--loss", "ce", "--preset", "quick", "--epochs", "2")
    assert out.returncode == 0, out.stderr
    (rd,) = run_dirs(ws_path)
    for name in ("run.json", "events.jsonl", "status.json", "stdout.log", "checkpoints", "artifacts"):
        assert (rd / name).exists(), name
    assert {p.name for p in (rd / "checkpoints").iterdir()} == {"best_ce.pth", "final_calibrated_ce.pth", "last.pth"}
    run = json.loads((rd / "run.json").read_text())
    assert run["command"].startswith("engine train-expert --loss ce --preset quick")
    assert run["config"]["epochs"] == 2 and run["config"]["image_size"] == 16

    ls = moe(ws_path, "ls")
    assert rd.name in ls.stdout and "succeeded" in ls.stdout and "2/2" in ls.stdout, ls.stdout
    rows = list(csv.DictReader(io.StringIO(moe(ws_path, "export", "--out", "-").stdout)))
    (row,) = rows
    assert row["status"] == "succeeded" and row["config.loss"] == "ce" and row["git_commit"]
    for key in ("train/loss", "train/acc", "val/acc", "val/head_acc", "val/tail_acc", "val/balanced_acc"):
        assert row[f"final.{key}"] != "" and row[f"best.{key}"] != "", key
    hist = list(csv.DictReader(io.StringIO(moe(ws_path, "export", "--out", "-", "--history").stdout)))
    assert {h["epoch"] for h in hist} == {"1", "2", ""}


def test_reindex_rebuilds_the_same_database(ws_path, copy_run, ws):
    copy_run(ws_path)
    copy_run(ws_path, run_id="261124-000001-beef")
    assert moe(ws_path, "ls").returncode == 0
    before = db_counts(ws)
    with ws.store.read() as s:
        before_rows = sorted((r.run_id, r.status, r.epoch, r.config) for r in s.exec(select(Run)))
    ws.store.close()
    os.remove(ws.db_path)
    out = moe(ws_path, "reindex")
    assert out.returncode == 0, out.stderr
    assert f"reindexed {before[0]} runs, {before[1]} metric rows" in out.stdout
    del ws.__dict__["store"]
    assert db_counts(ws) == before
    with ws.store.read() as s:
        assert sorted((r.run_id, r.status, r.epoch, r.config) for r in s.exec(select(Run))) == before_rows


def test_sigkill_to_a_headless_job(ws_path, ws):
    p = engine_bg(ws_path, "train-expert", "--preset", "quick")
    rd = wait_for(lambda: (run_dirs(ws_path) or [None])[0], what="the run directory")
    wait_for(lambda: len(epoch_events(rd)) >= 2, timeout=120, what="two epochs")
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = len(epoch_events(rd))
    assert moe(ws_path, "ls").returncode == 0
    with ws.store.read() as s:
        run = s.exec(select(Run)).one()
        epochs = s.exec(select(func.count(func.distinct(Metric.epoch))).where(Metric.run == run.id)).one()
    assert run.status == "failed"
    assert "without a final status" in run.error and f"after epoch {done}/20" in run.error
    assert epochs == done


def test_sigkill_to_a_queued_job_and_to_the_daemon(ws_path, ws):
    out = moe(ws_path, "submit", "--", "train-expert", "--preset", "quick")
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[1]
    rd = ws_path / "runs" / run_id
    wait_for(lambda: len(epoch_events(rd)) >= 1, timeout=120, what="the first epoch")

    # The daemon dies; the job it launched carries on.
    daemon = json.loads((ws_path / ".moe-tui" / "daemon.pid").read_text())
    os.kill(daemon["pid"], signal.SIGKILL)
    job_pid = json.loads((rd / "status.json").read_text())["pid"]
    n = len(epoch_events(rd))
    wait_for(lambda: len(epoch_events(rd)) > n, timeout=60, what="an epoch after the daemon died")
    os.kill(job_pid, 0)  # still alive

    # The next command starts a daemon (work is waiting); then the job is killed.
    assert moe(ws_path, "ls").returncode == 0
    wait_for(lambda: (ws_path / ".moe-tui" / "daemon.pid").exists(), what="a new daemon")
    os.kill(job_pid, signal.SIGKILL)
    w = moe(ws_path, "wait", run_id, "--timeout", "60")
    assert w.returncode == 1
    with ws.store.read() as s:
        run = s.exec(select(Run).where(Run.run_id == run_id)).one()
        epochs = s.exec(select(func.count(func.distinct(Metric.epoch))).where(Metric.run == run.id)).one()
    assert run.status == "failed" and run.exit_code == -9
    assert run.error.startswith("killed by SIGKILL")
    assert epochs == len(epoch_events(rd))


def test_a_run_whose_arguments_went_bad_fails_with_the_cause(ws_path, ws):
    from app.queue.daemon import ensure_daemon
    from app.queue.submit import submit

    run = submit(ws, TINY)
    with ws.store.write() as s:  # as if submit.json had been hand-edited
        r = s.get(Run, run.id)
        r.argv = json.dumps(["train-expert", "--loss", "focal"])
    ensure_daemon(ws)
    w = moe(ws_path, "wait", run.run_id, "--timeout", "60")
    assert w.returncode == 1
    with ws.store.read() as s:
        r = s.get(Run, run.id)
    assert r.status == "failed" and r.exit_code == 2
    assert r.error == "--loss 'focal' is not one of: ce, logit_adjust, balanced_softmax, decoupling, moe_head"


def test_eight_writers_and_concurrent_readers(ws_path, ws):
    """Every epoch of every run in SQLite exactly once, and never "database is locked"."""
    # Eight writers at once is the point, not what they compute: QUICK with 80 codes writes
    # eight shards, an epoch event each, in about the time of its four.
    epochs = 8
    args = [*QUICK, "--codes-per-group", str(10 * epochs)]
    jobs = [engine_bg(ws_path, *args, "--seed", str(i)) for i in range(8)]
    rounds = 0
    while any(j.poll() is None for j in jobs):
        # Three readers at once, each of which also ingests, while the jobs write.
        readers = [moe_bg(ws_path, *cmd) for cmd in (["ls"], ["ingest"], ["export", "--out", "-"])]
        for r in readers:
            _, err = r.communicate(timeout=120)
            assert r.returncode == 0 and "locked" not in err, err
        rounds += 1
    assert rounds >= 2
    errs = [j.stderr.read() for j in jobs]
    assert all(j.wait() == 0 for j in jobs), errs
    assert moe(ws_path, "ls").returncode == 0
    with ws.store.read() as s:
        per_run = s.exec(
            select(Run.run_id, Metric.epoch, Metric.key, func.count())
            .join(Metric, Metric.run == Run.id)
            .where(Metric.epoch.is_not(None))
            .group_by(Run.run_id, Metric.epoch, Metric.key)
        ).all()
        statuses = s.exec(select(Run.status)).all()
    assert statuses == ["succeeded"] * 8
    assert all(n == 1 for *_, n in per_run)
    assert {(r, e) for r, e, _, _ in per_run} == {(rd.name, e) for rd in run_dirs(ws_path) for e in range(1, epochs + 1)}
