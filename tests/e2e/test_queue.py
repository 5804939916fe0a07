"""The queue daemon with real jobs: slots, dependencies, blocking and retry, cancel, crash recovery.

Every run here is a real job in a real detached subprocess: QUICK (network-free) where a run
only has to start and end, TINY training where a test needs epochs that take a while.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlmodel import func, select

from app.store import Metric, Run
from app.store.models import RunDependency
from tests.helpers import QUICK, TINY, epoch_events, moe, wait_for



def queued_id(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[1]


def status(ws_path, run_id) -> dict:
    return json.loads((ws_path / "runs" / run_id / "status.json").read_text())


def runs_by_id(ws) -> dict[str, Run]:
    with ws.store.read() as s:
        return {r.run_id: r for r in s.exec(select(Run))}


def test_two_cpu_slots_three_runs(ws_path, ws):
    """Two run at once, the third starts when one ends; the on-finish command sees each."""
    env = {"MOE_TUI_CPU_SLOTS": "2", "MOE_TUI_ON_FINISH": 'echo "$MOE_TUI_RUN_ID $MOE_TUI_RUN_STATUS" >> hooks.txt'}
    # All three queued before any starts: a QUICK run (~3 s) could end before the next submit lands.
    assert moe(ws_path, "pause").returncode == 0
    ids = [queued_id(moe(ws_path, "submit", "--name", f"r{i}", "--", *QUICK, "--seed", str(i), **env)) for i in range(3)]
    assert moe(ws_path, "resume").returncode == 0
    assert moe(ws_path, "wait", *ids, "--timeout", "150").returncode == 0
    st = {i: status(ws_path, i) for i in ids}
    launched = {i: json.loads((ws_path / "runs" / i / "launch.json").read_text())["launched_at"] for i in ids}
    first_end = min(st[ids[0]]["ended_at"], st[ids[1]]["ended_at"])
    assert st[ids[1]]["started_at"] < st[ids[0]]["ended_at"], "the first two overlap"
    assert launched[ids[2]] >= first_end, "the third waited for a free slot"
    # Order, not latency (benchmarks/bench_queue.py measures that): the daemon's own log
    # started the third on a later pass than the first two, on a slot one of them freed.
    started = [line for line in ws.daemon_log.read_text().splitlines() if " started on " in line]
    order = {i: next(k for k, line in enumerate(started) if f"run {i} started on " in line) for i in ids}
    assert order[ids[2]] > max(order[ids[0]], order[ids[1]]), "the daemon started the third after the first two"
    slots = [json.loads((ws_path / "runs" / i / "launch.json").read_text())["slots"] for i in ids]
    assert sorted(slots[:2]) == ["cpu:0", "cpu:1"] and slots[2] in slots[:2]
    env0 = json.loads((ws_path / "runs" / ids[0] / "launch.json").read_text())["env"]
    assert env0["CUDA_VISIBLE_DEVICES"] == "" and env0["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    hooks = wait_for(lambda: (ws_path / "hooks.txt").exists() and len((ws_path / "hooks.txt").read_text().splitlines()) == 3
                     and (ws_path / "hooks.txt").read_text(), timeout=20, what="three on-finish calls")
    assert sorted(hooks.splitlines()) == sorted(f"{i} succeeded" for i in ids)


def test_failed_parent_blocks_the_chain_and_retry_releases_it(ws_path, ws):
    env = {"MOE_TUI_CPU_SLOTS": "2"}
    a = queued_id(moe(ws_path, "submit", "--name", "expert", "--", *TINY, "--epochs", "30", **env))
    b = queued_id(moe(ws_path, "submit", "--name", "recompute", "--after", "expert", "--",
                      *QUICK, "--name", "inputs {run:expert}", **env))
    c = queued_id(moe(ws_path, "submit", "--name", "gating", "--after", b, "--", *QUICK, **env))
    # The expert dies as the OOM killer would kill it.
    rd = ws_path / "runs" / a
    wait_for(lambda: len(epoch_events(rd)) >= 1, timeout=90, what="the expert's first epoch")
    os.kill(status(ws_path, a)["pid"], signal.SIGKILL)
    assert moe(ws_path, "wait", a, b, c, "--timeout", "60").returncode == 1
    runs = runs_by_id(ws)
    assert runs[a].status == "failed" and runs[a].error.startswith("killed by SIGKILL")
    assert runs[b].status == "blocked" and runs[c].status == "blocked"
    assert f"dependency {a} (expert) failed" in runs[b].error and f"dependency {b} (recompute) blocked" in runs[c].error
    assert not (ws_path / "runs" / b / "launch.json").exists(), "a blocked run never starts"

    out = moe(ws_path, "retry", a, **env)
    assert out.returncode == 0, out.stderr
    a2 = out.stdout.split()[1]
    # The retry is a new run of the same arguments (30 tiny epochs), remembered as such.
    assert json.loads((ws_path / "runs" / a2 / "submit.json").read_text())["retry_of"] == a
    assert moe(ws_path, "wait", a2, b, c, "--timeout", "150").returncode == 0
    runs = runs_by_id(ws)
    assert [runs[x].status for x in (a2, b, c)] == ["succeeded"] * 3
    assert json.loads((ws_path / "runs" / b / "run.json").read_text())["name"] == f"inputs {ws_path / 'runs' / a2}"
    assert json.loads((ws_path / "runs" / b / "submit.json").read_text())["after"] == [a2]
    assert status(ws_path, b)["started_at"] >= status(ws_path, a2)["ended_at"]


def test_daemon_sigkill_mid_pipeline(ws_path, ws, tmp_path):
    """The daemon dies while step one trains: the next command brings one back and the chain completes."""
    spec = tmp_path / "chain.yaml"
    spec.write_text(f"""
name: chain
steps:
  first:
    args: {json.dumps([*TINY, "--epochs", "5", "--lr-milestones", "4"])}
  second:
    args: {json.dumps([*QUICK, "--name", "after {run:first}"])}
""")
    out = moe(ws_path, "pipeline", str(spec))
    assert out.returncode == 0, out.stderr
    first, second = (line.split()[1] for line in out.stdout.splitlines()[:2])
    wait_for(lambda: len(epoch_events(ws_path / "runs" / first)) >= 1, timeout=90, what="the first epoch")
    daemon = json.loads((ws_path / ".moe-tui" / "daemon.pid").read_text())
    os.kill(daemon["pid"], signal.SIGKILL)
    assert moe(ws_path, "ls").returncode == 0  # any command: restarts the daemon, which re-adopts `first`
    assert moe(ws_path, "wait", "--timeout", "150").returncode == 0
    runs = runs_by_id(ws)
    assert runs[first].status == runs[second].status == "succeeded"
    assert runs[first].pipeline_id == runs[second].pipeline_id and runs[first].pipeline_id.startswith("chain-")
    with ws.store.read() as s:
        for rid in (first, second):
            n = s.exec(select(func.count(func.distinct(Metric.epoch))).where(
                Metric.run == runs[rid].id, Metric.epoch.is_not(None))).one()
            assert n == len(epoch_events(ws_path / "runs" / rid)) == runs[rid].total_epochs


def test_cancel_running_and_queued_runs(ws_path, ws):
    long = queued_id(moe(ws_path, "submit", "--", *TINY, "--epochs", "200"))
    waiting = queued_id(moe(ws_path, "submit", "--after", long, "--", *QUICK))
    wait_for(lambda: len(epoch_events(ws_path / "runs" / long)) >= 1, timeout=90, what="an epoch")
    out = moe(ws_path, "cancel", waiting)
    assert out.returncode == 0 and "cancelled" in out.stdout
    out = moe(ws_path, "cancel", long)
    assert out.returncode == 0 and "cancel requested" in out.stdout
    assert moe(ws_path, "wait", long, "--timeout", "60").returncode == 1
    runs = runs_by_id(ws)
    assert runs[long].status == "cancelled" and runs[long].error == "cancelled by SIGTERM"
    assert runs[waiting].status == "cancelled" and "before it started" in runs[waiting].error
    assert "already cancelled" in moe(ws_path, "cancel", long).stderr


def test_retry_resume_continues_a_cancelled_run_from_its_last_epoch(ws_path, ws):
    # 40 tiny epochs: with 12, a quiet machine finished them in the second `moe-tui cancel` takes to start
    run = queued_id(moe(ws_path, "submit", "--", *TINY, "--epochs", "40"))
    rd = ws_path / "runs" / run
    wait_for(lambda: len(epoch_events(rd)) >= 2, timeout=120, what="two epochs")
    assert moe(ws_path, "cancel", run).returncode == 0
    assert moe(ws_path, "wait", run, "--timeout", "60").returncode == 1
    done = len(epoch_events(rd))
    assert runs_by_id(ws)[run].status == "cancelled" and (rd / "checkpoints" / "last.pth").exists()

    out = moe(ws_path, "retry", run, "--resume")
    assert out.returncode == 0, out.stderr
    new = next(r for r in runs_by_id(ws).values() if r.retry_of == run)
    assert moe(ws_path, "wait", new.run_id, "--timeout", "180").returncode == 0
    epochs = [e["epoch"] for e in epoch_events(ws_path / "runs" / new.run_id)]
    assert epochs == list(range(done + 1, 41)), epochs  # continues, does not start over
    assert f"--resume {rd}/checkpoints/last.pth" in runs_by_id(ws)[new.run_id].command


def test_cancel_escalates_to_sigkill_after_the_grace_period(ws, ws_path, monkeypatch):
    """A job that ignores SIGTERM is killed, with its whole process group."""
    from app.queue.control import cancel
    from app.queue.daemon import Daemon
    from app.queue.submit import submit
    from engine.core.procs import ProcessIdentity
    from engine.core.rundir import atomic_write_json

    monkeypatch.setenv("MOE_TUI_CANCEL_GRACE", "0.5")
    run = submit(ws, TINY)
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    rd = ws.run_dir(run.run_id)
    atomic_write_json(rd.launch_json, {"backend": "local", **ProcessIdentity.of(stubborn.pid).record("launcher_")})
    with ws.store.write() as s:
        s.get(Run, run.id).status = "running"
    cancel(ws, run.run_id)
    d = Daemon(ws)
    d.act_on_cancels()
    time.sleep(0.3)
    assert stubborn.poll() is None, "SIGTERM is ignored"
    time.sleep(0.4)
    d.act_on_cancels()
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    d.ingester.run_pass()
    with ws.store.read() as s:
        r = s.get(Run, run.id)
    assert r.status == "cancelled" and r.error == "cancelled on request"


def test_pause_sweep_and_reindex(ws_path, ws):
    """Nothing starts while paused; a sweep is a group; reindex rebuilds dependencies; priority orders starts."""
    assert moe(ws_path, "pause").stdout.strip() == "queue paused"
    out = moe(ws_path, "submit", "--sweep", "seed=0,1", "--sweep", "lr=0.05,0.1", "--name", "grid", "--", *TINY)
    assert out.returncode == 0, out.stderr
    ids = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("queued")]
    assert len(ids) == 4 and "4 runs" in out.stdout
    dep = queued_id(moe(ws_path, "submit", "--after", ids[0], "--", *QUICK))
    hi = queued_id(moe(ws_path, "submit", "--priority", "5", "--", *QUICK))
    time.sleep(2)
    runs = runs_by_id(ws)
    assert all(runs[i].status == "queued" for i in ids)
    assert len({runs[i].group_id for i in ids}) == 1 and runs[ids[0]].group_id.startswith("sweep-")
    assert [runs[i].name for i in ids] == ["grid lr=0.05 seed=0", "grid lr=0.05 seed=1", "grid lr=0.1 seed=0", "grid lr=0.1 seed=1"]
    assert json.loads(runs[ids[3]].config)["lr"] == 0.1 and json.loads(runs[ids[3]].config)["seed"] == 1
    assert "paused" in moe(ws_path, "daemon", "status").stdout.lower()
    assert moe(ws_path, "cancel", *ids[1:]).returncode == 0

    assert moe(ws_path, "reindex").returncode == 0
    del ws.__dict__["store"]
    runs = runs_by_id(ws)
    with ws.store.read() as s:
        deps = s.exec(select(RunDependency)).all()
    assert [(d.run, d.parent) for d in deps] == [(runs[dep].id, runs[ids[0]].id)]
    assert runs[ids[0]].group_id == runs[ids[1]].group_id and runs[ids[1]].status == "cancelled"

    assert moe(ws_path, "cancel", dep).returncode == 0
    assert moe(ws_path, "resume").stdout.strip() == "queue resumed"
    assert moe(ws_path, "wait", ids[0], hi, "--timeout", "120").returncode == 0
    launched = {i: json.loads((ws_path / "runs" / i / "launch.json").read_text())["launched_at"] for i in (ids[0], hi)}
    assert launched[hi] < launched[ids[0]], "one slot: the higher priority went first though queued last"


def test_bad_queue_input_gets_one_line(ws_path, tmp_path):
    def err(*args) -> str:
        out = moe(ws_path, *args)
        assert out.returncode == 2 and out.stdout == "", out.stdout
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        return out.stderr.strip()

    assert err("submit", "--after", "nope", "--", *TINY) == "error: dependency: no run 'nope' in this workspace; `moe-tui ls` lists the runs"
    assert err("submit", "--backend", "pbs", "--", *TINY) == "error: unknown backend 'pbs'; choose one of: local, slurm"
    assert "asks for 4 GPU(s) but this machine has 0" in err("submit", "--gpus", "4", "--", *TINY)
    assert "--lr 'x'" in err("submit", "--sweep", "lr=0.1,x", "--", *TINY)
    cyc = tmp_path / "cyc.yaml"
    cyc.write_text(f"steps:\n  a: {{args: {json.dumps(TINY)}, after: [b]}}\n  b: {{args: {json.dumps(TINY)}, after: [a]}}\n")
    assert "the dependencies form a cycle: a -> b -> a" in err("pipeline", str(cyc))
    assert err("pipeline", "nosuch") == "error: no pipeline file nosuch; name a YAML or JSON file, or one of: demo, lt, mheight"
    assert not (ws_path / "runs").exists() or not any((ws_path / "runs").iterdir()), "bad input queues nothing"


def test_daemon_start_status_stop_and_idle_exit(ws_path):
    out = moe(ws_path, "daemon", "start", MOE_TUI_IDLE_EXIT="2")
    assert out.returncode == 0 and out.stdout.startswith("started: pid "), out.stdout + out.stderr
    st = moe(ws_path, "daemon", "status")
    assert st.returncode == 0 and "daemon pid" in st.stdout and "CPU slot" in st.stdout
    # Nothing to do: it leaves by itself after the idle time.
    wait_for(lambda: moe(ws_path, "daemon", "status").returncode == 3, timeout=30, what="the idle daemon to exit")
    assert moe(ws_path, "daemon", "start").returncode == 0
    out = moe(ws_path, "daemon", "stop")
    assert out.returncode == 0 and out.stdout.startswith("stopped daemon")
    assert moe(ws_path, "daemon", "status").returncode == 3


def test_ensure_daemon_returns_once_the_daemon_holds_its_lock(ws_path, ws):
    """A caller that looks right after ensure_daemon finds the daemon; concurrent callers start one."""
    from concurrent.futures import ThreadPoolExecutor

    from app.queue.daemon import daemon_info, ensure_daemon, stop_daemon, wake_daemon
    from engine.core.procs import ProcessIdentity

    assert daemon_info(ws) is None
    assert ensure_daemon(ws) is True
    info = daemon_info(ws)  # no sleep, no polling: it must hold the lock and have said so already
    assert info is not None and info.get("pid"), "ensure_daemon returned before the daemon held its lock"
    assert ProcessIdentity.from_record(info).alive()
    assert wake_daemon(ws, info), "its pid file names a live daemon that takes SIGUSR1"
    assert ensure_daemon(ws) is False, "a second caller finds it and starts none"
    time.sleep(0.5)
    assert ProcessIdentity.from_record(info).alive(), "the wake did not kill it"
    assert stop_daemon(ws) == info["pid"]

    # Four clients at once, none running: exactly one starts the daemon, all return with it up.
    with ThreadPoolExecutor(4) as pool:
        started = list(pool.map(lambda _: ensure_daemon(ws), range(4)))
    assert started.count(True) == 1, started
    info = daemon_info(ws)
    assert info is not None and ProcessIdentity.from_record(info).alive()
    log = (ws_path / ".moe-tui" / "daemon.log").read_text()
    assert log.count(" serving ") == 2, "one daemon per start, never a second alongside"
    stop_daemon(ws)


def test_ensure_daemon_that_cannot_start_says_why(ws_path, ws):
    from app.errors import UserError
    from app.queue.daemon import daemon_info, ensure_daemon

    (ws_path / "moe-tui.toml").write_text("[queue]\ncpu_slots = 'many'\n")
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        ensure_daemon(ws)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and time.monotonic() - t0 < 25, "it fails as soon as the daemon exits"
    assert msg.startswith("the queue daemon exited as it started (exit code 2): error: ") and "cpu_slots" in msg, msg
    assert msg.endswith("see .moe-tui/daemon.log"), msg

    (ws_path / "moe-tui.toml").unlink()
    with pytest.raises(UserError, match=r"^the queue daemon did not take its lock within 0s; see .moe-tui/daemon.log"):
        ensure_daemon(ws, timeout_s=0.01)
    time.sleep(0.3)
    assert daemon_info(ws) is None, "the half-started daemon was stopped, not left behind"


def test_the_tui_says_once_why_no_daemon_starts(ws_path, ws):
    from app.queue.daemon import daemon_info, stop_daemon
    from app.tui.data import TuiData

    assert moe(ws_path, "pause").returncode == 0
    queued_id(moe(ws_path, "submit", "--", *QUICK))  # waits: the queue is paused
    stop_daemon(ws)
    (ws_path / "moe-tui.toml").write_text("[queue]\ncpu_slots = 'many'\n")
    data = TuiData(ws)
    warnings = data.refresh_files()
    assert len(warnings) == 1 and warnings[0].startswith("the queue daemon exited as it started"), warnings
    data._last_ingest = 0.0  # the next pass at once
    assert data.refresh_files() == [], "the same cause is not repeated every second"
    assert daemon_info(ws) is None


def test_an_on_finish_command_cut_off_by_a_dead_daemon_runs_again(ws_path, ws):
    """At least once: a command the daemon started and never saw end is run by the next daemon."""
    hook = ('echo "$MOE_TUI_RUN_ID start" >> hooks.txt; echo $$ > hook.pid; '
            'while [ ! -e release ]; do sleep 0.1; done; echo "$MOE_TUI_RUN_ID end" >> hooks.txt')
    (ws_path / "moe-tui.toml").write_text(f"[queue]\non_finish = '{hook}'\n")
    run = queued_id(moe(ws_path, "submit", "--", *QUICK))
    hooks, pid_file = ws_path / "hooks.txt", ws_path / "hook.pid"
    wait_for(lambda: hooks.exists() and pid_file.exists() and pid_file.read_text().strip(), timeout=90,
             what="the on-finish command to start")
    assert runs_by_id(ws)[run].hook == "started", "marked done before the command ended"
    # The daemon and its command die together, as with a reboot or the OOM killer.
    os.kill(json.loads((ws_path / ".moe-tui" / "daemon.pid").read_text())["pid"], signal.SIGKILL)
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    (ws_path / "release").touch()
    assert moe(ws_path, "ls").returncode == 0  # any command brings a daemon back: a command is owed
    wait_for(lambda: runs_by_id(ws)[run].hook == "done", timeout=60, what="the command to be run again to its end")
    assert hooks.read_text().splitlines() == [f"{run} start", f"{run} start", f"{run} end"]


def test_a_run_read_lost_while_its_job_lives_settles_when_its_files_change(ws_path, ws):
    """The daemon died between starting the launcher and recording it: the run reads lost, but the
    job runs on; when its files change, the ingester settles it again instead of keeping "lost"."""
    from app.backends.local import job_command
    from app.queue.daemon import stop_daemon
    from engine.core.procs import ProcessIdentity
    from engine.core.rundir import RunDir, atomic_write_json

    assert moe(ws_path, "pause").returncode == 0
    run = queued_id(moe(ws_path, "submit", "--", *QUICK))
    stop_daemon(ws)
    rd = RunDir(ws_path / "runs" / run)
    # What the daemon wrote just before it died: "launching", in its own (now dead) name.
    dead = subprocess.Popen(["true"])
    ident = ProcessIdentity.of(dead.pid)
    dead.wait()
    atomic_write_json(rd.launch_json, {"v": 1, "backend": "local", "launched_at": time.time(), "state": "launching",
                                       **ident.record("launcher_")})
    with ws.store.write() as s:  # as the dead daemon's claim left the row
        row = s.exec(select(Run).where(Run.run_id == run)).one()
        row.status, row.started_at = "running", time.time()
        s.add(row)
    assert moe(ws_path, "ls").returncode == 0
    assert runs_by_id(ws)[run].status == "lost"
    # ... while the job it started runs, and writes its files.
    with open(rd.stdout_log, "ab") as log:
        job = subprocess.Popen([sys.executable, "-m", "app.backends.shim", str(rd.exit_code_file), "--",
                                *job_command(json.loads(runs_by_id(ws)[run].argv), rd)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=ws_path,
                               env={**os.environ, "MOE_TUI_WORKSPACE": str(ws_path)})
    assert job.wait(timeout=150) == 0
    wait_for(lambda: moe(ws_path, "ls").returncode == 0 and runs_by_id(ws)[run].status == "succeeded",
             timeout=30, what="the run to settle succeeded")
    r = runs_by_id(ws)[run]
    assert r.error is None and r.exit_code == 0 and r.epoch == 4


def test_retry_resume_of_a_headless_run_queues_it_on_the_local_backend(ws_path, ws, copy_run):
    """A run started by hand with `engine` (the session's trained one) has no backend to retry on."""
    old = copy_run(ws_path).name
    assert moe(ws_path, "ls").returncode == 0 and runs_by_id(ws)[old].backend == "headless"
    out = moe(ws_path, "retry", old, "--resume")
    assert out.returncode == 0, out.stderr
    new = next(r for r in runs_by_id(ws).values() if r.retry_of == old)
    assert new.backend == "local" and f"--resume {ws_path / 'runs' / old}/checkpoints/last.pth" in new.command
    # The daemon starts it locally; the engine reads the checkpoint and, the old run having trained
    # all its epochs, says so (a run cut short would go on from its last epoch, as above).
    assert moe(ws_path, "wait", new.run_id, "--timeout", "180").returncode == 1
    ran = runs_by_id(ws)[new.run_id]
    assert ran.status == "failed" and ran.exit_code == 2 and "already finished epoch 3; raise --epochs" in ran.error
