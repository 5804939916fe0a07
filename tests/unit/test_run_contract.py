"""The run-directory contract, as a job writes it and a reader sees it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from engine.core.errors import JobError
from engine.core.events import RecordError, parse_event_lines
from engine.core.procs import EXIT_BAD_INPUT, EXIT_CANCELLED, ProcessIdentity, describe_exit
from engine.core.recorder import RunRecorder
from engine.core.rundir import RunDir, new_run_id
from tests.helpers import wait_for


def recorder(tmp_path, **kw):
    rd = RunDir.create(tmp_path / "runs")
    return rd, RunRecorder(rd, kind="test", config={"a": 1}, argv=["test"], total_epochs=3, **kw)


def test_a_successful_job_leaves_a_complete_directory(tmp_path):
    rd, rec = recorder(tmp_path)
    with rec:
        rec.log_epoch(1, {"train/loss": 1.0, "val/acc": float("nan")})
        rec.log_summary({"test/acc": 0.5})
    run = rd.read_run()
    assert run["kind"] == "test" and run["config"] == {"a": 1} and run["run_id"] == rd.run_id
    assert {"commit", "dirty"} <= set(run["git"]) and "python" in run["versions"] and run["host"]
    status = rd.read_status()
    assert status["state"] == "succeeded" and status["exit_code"] == 0 and status["epoch"] == 1
    assert status["pid"] == os.getpid() and status["ended_at"] >= status["started_at"]
    events = [json.loads(l) for l in rd.events.read_text().splitlines()]
    assert [e["type"] for e in events] == ["epoch", "summary", "end"]
    assert all(e["v"] == 1 for e in events)
    assert events[0]["metrics"]["val/acc"] is None  # NaN is written as null, keeping the line valid JSON
    assert rd.checkpoints.is_dir() and rd.artifacts.is_dir()
    assert "epoch 1/3" in rd.stdout_log.read_text()
    assert rec.exit_code == 0


def test_job_error_fails_with_its_one_line_cause(tmp_path):
    rd, rec = recorder(tmp_path)
    with rec:
        raise JobError("data root /nope has no cifar-10-batches-py; pass --data-root")
    st = rd.read_status()
    assert st["state"] == "failed" and st["exit_code"] == EXIT_BAD_INPUT
    assert st["error"] == "data root /nope has no cifar-10-batches-py; pass --data-root"


def test_a_crash_is_failed_with_type_place_and_log(tmp_path):
    rd, rec = recorder(tmp_path)
    with rec:
        {}["missing"]
    st = rd.read_status()
    assert st["state"] == "failed" and st["exit_code"] == 1
    assert st["error"].startswith("KeyError: 'missing' at test_run_contract.py:")
    assert "\n" not in st["error"]
    assert "Traceback" in rd.stdout_log.read_text()


def test_a_used_directory_is_refused(tmp_path):
    rd, rec = recorder(tmp_path)
    with rec:
        pass
    with pytest.raises(JobError, match="already holds a run"):
        RunRecorder(rd, kind="test", config={}, argv=[]).__enter__()


def test_a_job_outlives_its_terminal(tmp_path):
    """The reader of a headless job's output goes away: the job finishes, the log keeps every line."""
    script = textwrap.dedent(f"""
        import time
        from engine.core.recorder import RunRecorder
        from engine.core.rundir import RunDir
        rd = RunDir.create({str(tmp_path / 'runs')!r})
        with RunRecorder(rd, kind="test", config={{}}, argv=[]) as rec:
            for epoch in range(1, 41):
                time.sleep(0.02)
                rec.log_epoch(epoch, {{"x": epoch}})
            raise RuntimeError("boom")  # the cause is still recorded with no terminal
        raise SystemExit(rec.exit_code)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdout.readline()
    p.stdout.close()  # the terminal is gone
    assert p.wait(timeout=60) == 1
    (rd,) = [RunDir(d) for d in (tmp_path / "runs").glob("*")]
    st = rd.read_status()
    assert st["state"] == "failed" and st["error"].startswith("RuntimeError: boom")
    assert "epoch 40  x 40" in rd.stdout_log.read_text()


def test_sigterm_cancels_at_a_safe_point(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from engine.core.recorder import RunRecorder
        from engine.core.rundir import RunDir
        rd = RunDir.create({str(tmp_path / 'runs')!r})
        rec = RunRecorder(rd, kind="test", config={{}}, argv=[])
        with rec:
            for epoch in range(1, 1000):
                time.sleep(0.05)
                rec.check_cancelled()
                rec.log_epoch(epoch, {{"x": epoch}})
        raise SystemExit(rec.exit_code)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rd = wait_for(lambda: next(iter(RunDir(d) for d in (tmp_path / "runs").glob("*")), None), what="run dir")
    wait_for(lambda: (rd.read_status() or {}).get("epoch", 0) >= 2, what="two epochs")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == EXIT_CANCELLED
    st = rd.read_status()
    assert st["state"] == "cancelled" and st["error"] == "cancelled by SIGTERM"


def test_event_lines_partial_malformed_and_newer():
    chunk = b'{"type":"epoch","epoch":1}\n{not json}\n\n{"v":99,"type":"epoch"}\n{"type":"ep'
    lines, used = parse_event_lines(chunk, first_lineno=5)
    assert used == chunk.rindex(b"\n") + 1  # the partial line waits
    assert [ln.lineno for ln in lines] == [5, 6, 7, 8]
    assert lines[0].event == {"type": "epoch", "epoch": 1}
    assert "malformed JSON" in lines[1].error
    assert lines[2].error == "empty line"
    assert "newer than this reader" in lines[3].error


def test_process_identity_tells_live_dead_and_reused():
    me = ProcessIdentity.current()
    assert me.alive() is True
    p = subprocess.Popen(["sleep", "30"])
    ident = ProcessIdentity.of(p.pid)
    assert ident.alive() is True
    p.kill()
    p.wait()
    assert ident.alive() is False
    reused = ProcessIdentity(me.pid, (me.start_ticks or 0) + 1, me.host, me.boot_id)
    assert reused.alive() is False  # same pid, different start time: not our process
    assert ProcessIdentity(me.pid, me.start_ticks, "elsewhere", me.boot_id).alive() is None
    assert ProcessIdentity(me.pid, me.start_ticks, me.host, "another-boot").alive() is False


def test_exit_descriptions():
    assert describe_exit(-9).startswith("killed by SIGKILL")
    assert describe_exit(137).startswith("killed by SIGKILL")
    assert describe_exit(3) == "exited with code 3"


def test_run_ids_sort_by_time_and_never_collide(tmp_path):
    before = time.time()
    ids = [RunDir.create(tmp_path).run_id for _ in range(50)]
    after = time.time()
    assert len(set(ids)) == 50
    assert ids == sorted(ids), "within one second too, creation order is name order"
    # Bracketed by time.time(), the clock the ids read: time.strftime() with no
    # argument reads time(2), whose coarse clock lags it by up to a tick, so
    # an id made at hh:mm:31.001 could compare later than a "now" of hh:mm:30.
    assert new_run_id(before)[:13] <= ids[0][:13]
    assert ids[-1][:13] <= new_run_id(after)[:13]


def test_a_job_cannot_write_what_the_reader_would_reject(tmp_path):
    rd, rec = recorder(tmp_path)
    with rec:
        with pytest.raises(TypeError, match=r"events.jsonl: epoch event: epoch: expected an integer, got 'x'"):
            rec.event("epoch", epoch="x", metrics={})
        with pytest.raises(TypeError, match="load: 1 values for 2 experts"):
            rec.log_expert_load(1, ["e0", "e1"], [1.0])
        with pytest.raises(TypeError, match="outside SQLite's 64-bit integer range"):
            rec.log_epoch(2**70, {"x": 1.0})
        with pytest.raises(TypeError, match="state: 'frobnicated' is not one of"):
            rec._set_status(state="frobnicated")
        rec.log_expert_load(None, ["e0", "e1"], [0.25, float("nan")], top1_share=[0.5, 0.5])  # evaluate-gating's
        rec.log_epoch(1, {"loss": float("inf")})
    lines, _ = parse_event_lines(rd.events.read_bytes(), 1)
    assert [ln.error for ln in lines] == [None, None, None], "what was written reads back"
    load, epoch = lines[0].event, lines[1].event
    assert (load["epoch"], load["load"], load["top1_share"]) == (None, [0.25, None], [0.5, 0.5])
    assert epoch["metrics"] == {"loss": None}, "a diverged value is null: no value, never a crash"
    assert rd.read_status()["state"] == "succeeded"


def test_record_files_validate_on_read(tmp_path):
    rd, rec = recorder(tmp_path)
    with rec:
        pass
    rd.status.write_text(rd.status.read_text().replace('"state": "succeeded"', '"state": "frobnicated"'))
    with pytest.raises(RecordError, match="status.json: state: 'frobnicated' is not one of 'running', 'succeeded'"):
        rd.read_status()
    rd.run_json.write_text('{"v": 2, "run_id": "x", "kind": "test"}')
    with pytest.raises(RecordError, match=r"run.json: schema v2 is newer than this reader \(v1\); upgrade moe-tui"):
        rd.read_run()
    rd.exit_code_file.write_text("-9\n")
    assert rd.read_exit_code() == -9
    rd.exit_code_file.write_text("999")
    with pytest.raises(RecordError, match="exit_code: 999 is not an exit status"):
        rd.read_exit_code()


def test_a_job_reading_a_bad_run_file_fails_as_bad_input_with_the_cause(tmp_path):
    upstream, rec = recorder(tmp_path)
    with rec:
        pass
    upstream.run_json.write_text('{"v": 99, "run_id": "x", "kind": "train-gating"}')
    rd, rec = recorder(tmp_path)
    with rec:
        upstream.read_run()  # as evaluate-gating reads its training run
    st = rd.read_status()
    assert st["state"] == "failed" and st["exit_code"] == EXIT_BAD_INPUT
    assert st["error"] == f"{upstream.run_json}: schema v99 is newer than this reader (v1); upgrade moe-tui"
