"""The Slurm backend against a real one-node cluster (scripts/slurm-up.sh starts one).

Skipped, with the reason shown, where no Slurm controller answers.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from sqlmodel import select

from app.backends.slurm import slurm_available
from app.store import Run
from tests.helpers import QUICK, TINY, epoch_events, moe, wait_for


_why_not = slurm_available()
if _why_not:
    pytestmark = [pytest.mark.skip(reason=f"no Slurm cluster: {_why_not}; start one with sudo scripts/slurm-up.sh")]

# One CPU per job so two jobs share the 2-core test node.
SLURM = {"MOE_TUI_BACKEND": "slurm"}


@pytest.fixture
def slurm_ws(ws_path):
    (ws_path / "moe-tui.toml").write_text('[slurm]\ncpus_per_task = 1\ntime = "00:10:00"\npoll_s = 1\n')
    yield ws_path
    # Leave no job of this workspace in the cluster.
    for launch in ws_path.glob("runs/*/launch.json"):
        job = json.loads(launch.read_text()).get("job_id")
        if job:
            subprocess.run(["scancel", job], capture_output=True)


def queued_id(out) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[1]


def run_row(ws, run_id) -> Run:
    with ws.store.read() as s:
        return s.exec(select(Run).where(Run.run_id == run_id)).one()


def test_two_step_chain_through_slurm(slurm_ws, ws):
    a = queued_id(moe(slurm_ws, "submit", "--name", "first", "--", *QUICK, **SLURM))
    b = queued_id(moe(slurm_ws, "submit", "--name", "second", "--after", a, "--", *QUICK, "--name", "from {run:first}", **SLURM))
    assert moe(slurm_ws, "wait", a, b, "--timeout", "170").returncode == 0
    ra, rb = run_row(ws, a), run_row(ws, b)
    assert ra.status == rb.status == "succeeded" and ra.backend == rb.backend == "slurm"
    la = json.loads((slurm_ws / "runs" / a / "launch.json").read_text())
    lb = json.loads((slurm_ws / "runs" / b / "launch.json").read_text())
    # The second was submitted while the first was still in Slurm's hands, chained by afterok.
    assert f"--dependency=afterok:{la['job_id']}" in lb["command"]
    script = (slurm_ws / "runs" / b / "job.sbatch").read_text()
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --time=00:10:00" in script
    assert f"--name 'from {slurm_ws / 'runs' / a}'" in script  # quoted for the shell
    assert json.loads((slurm_ws / "runs" / b / "run.json").read_text())["name"] == f"from {slurm_ws / 'runs' / a}"
    code = slurm_ws / "runs" / b / "exit_code"  # the launcher writes it just after the job's final status
    assert wait_for(lambda: code.exists() and code.read_text().strip(), timeout=20, what="exit_code") == "0"
    assert len(epoch_events(slurm_ws / "runs" / b)) == 4  # QUICK's four shards
    # Slurm's verdict replaces the last live state it was seen in (RUNNING) once the run has ended.
    for run in (a, b):
        slurm_file = slurm_ws / "runs" / run / "slurm.json"
        wait_for(lambda: json.loads(slurm_file.read_text()).get("final_state") == "COMPLETED", timeout=30,
                 what=f"COMPLETED in {slurm_file}")


def test_cancel_and_time_limit(slurm_ws, ws):
    """One job cancelled with scancel; one killed by Slurm at its 1-minute limit ends with that cause."""
    long = [*TINY, "--epochs", "2000", "--lr-milestones", "1500"]
    victim = queued_id(moe(slurm_ws, "submit", "--name", "victim", "--", *long, **SLURM))
    child = queued_id(moe(slurm_ws, "submit", "--name", "child", "--after", victim, "--", *TINY, **SLURM))
    slow = queued_id(moe(slurm_ws, "submit", "--name", "slow", "--slurm", "time=1", "--", *long, **SLURM))
    wait_for(lambda: len(epoch_events(slurm_ws / "runs" / victim)) >= 1, timeout=90, what="the victim's first epoch")
    child_launch = slurm_ws / "runs" / child / "launch.json"
    wait_for(child_launch.exists, timeout=20, what="the child's sbatch (afterok on the victim)")
    child_job = json.loads(child_launch.read_text())["job_id"]
    out = moe(slurm_ws, "cancel", victim)
    assert out.returncode == 0, out.stderr
    assert moe(slurm_ws, "wait", victim, "--timeout", "60").returncode == 1
    r = run_row(ws, victim)
    assert r.status == "cancelled", r.error
    # Its afterok child can never start: the daemon takes it back from Slurm and blocks it.
    wait_for(lambda: moe(slurm_ws, "ls").returncode == 0 and run_row(ws, child).status == "blocked",
             timeout=30, what="the child to be blocked")
    assert "DependencyNeverSatisfied" in run_row(ws, child).error
    assert not (slurm_ws / "runs" / child / "launch.json").exists()
    sq = subprocess.run(["squeue", "-h", "-t", "all", "-j", child_job, "-o", "%T"], capture_output=True, text=True)
    assert sq.stdout.strip() in ("CANCELLED", ""), sq.stdout

    assert moe(slurm_ws, "wait", slow, "--timeout", "170").returncode == 1
    r = run_row(ws, slow)
    assert r.status == "failed"
    # The limit as squeue prints it, the epoch it reached, and what to do.
    assert r.error.startswith(f"Slurm job {r.slurm_job_id} ended TIMEOUT (1:00) at epoch {r.epoch}: "), r.error
    assert r.error.endswith("Slurm stopped it at its time limit; raise --slurm time=... or [slurm] time in moe-tui.toml")


def default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    return next(p.rstrip("*") for p in out.stdout.split() if p.endswith("*"))


def test_sbatch_rejection_is_the_runs_error_and_survives_a_reindex(slurm_ws, ws):
    """sbatch's reason first (ls shows 60 characters) and what to do; kept in the run directory, so a
    rebuilt database does not queue and submit the run again; a retry keeps the run's --slurm settings
    and changes the one named."""
    a = queued_id(moe(slurm_ws, "submit", "--slurm", "partition=nosuchpart", "--slurm", "time=0:05:00", "--", *TINY, **SLURM))
    assert moe(slurm_ws, "wait", a, "--timeout", "60").returncode == 1
    r = run_row(ws, a)
    assert r.status == "failed"
    assert r.error.startswith("sbatch rejected the job: invalid partition specified: nosuchpart; "), r.error
    assert f"`moe-tui retry {a} --slurm KEY=VALUE`" in r.error and "sbatch: error" not in r.error, r.error
    assert "\n" not in r.error

    out = moe(slurm_ws, "reindex")
    assert out.returncode == 0, out.stderr
    assert moe(slurm_ws, "wait", a, "--timeout", "20").returncode == 1
    show = moe(slurm_ws, "show", a).stdout  # the database is a new file now
    assert "status    failed" in show and "error     sbatch rejected the job: invalid partition" in show, show
    assert not (slurm_ws / "runs" / a / "slurm.json").exists(), "submitted again"
    ws.store.close()  # reindex replaced the database file
    ws.__dict__.pop("store")

    part = default_partition()
    out = moe(slurm_ws, "retry", a, "--slurm", f"partition={part}")
    assert out.returncode == 0, out.stderr
    b = out.stdout.split()[1]
    assert json.loads((slurm_ws / "runs" / b / "submit.json").read_text())["slurm"] == {"partition": part, "time": "0:05:00"}
    assert moe(slurm_ws, "wait", b, "--timeout", "120").returncode == 0
    script = (slurm_ws / "runs" / b / "job.sbatch").read_text()
    assert f"#SBATCH --partition={part}" in script and "#SBATCH --time=0:05:00" in script

    empty = moe(slurm_ws, "submit", "--slurm", "time=", "--", *TINY, **SLURM)
    assert empty.returncode == 2 and "--slurm time= has no value" in empty.stderr, empty.stderr
    typo = moe(slurm_ws, "submit", "--slurm", "time=abc", "--", *TINY, **SLURM)
    assert typo.returncode == 2 and "--slurm time: 'abc' is not a Slurm time limit" in typo.stderr, typo.stderr
    bad = moe(slurm_ws, "submit", "--slurm", "extra=--comment=a b", "--", *TINY, **SLURM)
    assert bad.returncode == 0  # accepted: the value is checked when the script is written
    c = bad.stdout.split()[1]
    assert moe(slurm_ws, "wait", c, "--timeout", "60").returncode == 1
    assert "without spaces" in run_row(ws, c).error


def test_jobs_taken_out_of_slurms_queue(slurm_ws, ws):
    """Held in Slurm's queue: one scancel'ed from outside moe-tui reads cancelled (not failed), and its
    afterok child is blocked naming it; one cancelled by moe-tui says it never left Slurm's queue."""
    held = ["--slurm", "extra=--begin=now+3600"]
    a = queued_id(moe(slurm_ws, "submit", "--name", "outside", *held, "--", *TINY, **SLURM))
    child = queued_id(moe(slurm_ws, "submit", "--name", "child", "--after", a, "--", *TINY, **SLURM))
    b = queued_id(moe(slurm_ws, "submit", "--name", "inside", *held, "--", *TINY, **SLURM))
    launches = [slurm_ws / "runs" / r / "launch.json" for r in (a, child, b)]
    wait_for(lambda: all(p.exists() for p in launches), timeout=30, what="three sbatch submissions")
    job = json.loads(launches[0].read_text())["job_id"]
    assert subprocess.run(["scancel", job], capture_output=True).returncode == 0
    assert moe(slurm_ws, "cancel", b).returncode == 0
    assert moe(slurm_ws, "wait", a, b, "--timeout", "60").returncode == 1
    ra, rb = run_row(ws, a), run_row(ws, b)
    assert ra.status == "cancelled", ra.error
    assert ra.error == f"Slurm job {job} was cancelled outside moe-tui (scancel) before it started"
    assert (rb.status, rb.error) == ("cancelled", "cancelled on request while it waited in Slurm's queue")
    wait_for(lambda: moe(slurm_ws, "ls").returncode == 0 and run_row(ws, child).status == "blocked",
             timeout=30, what="the child to be blocked")
    err = run_row(ws, child).error
    assert err.startswith(f"dependency {a} (outside) cancelled (Slurm: DependencyNeverSatisfied); "), err
    assert err.endswith(f"`moe-tui retry {a}` re-queues this run"), err


async def test_a_job_waiting_in_slurms_queue_reads_pending_with_slurms_reason(slurm_ws, ws):
    """Held back by Slurm (--begin in an hour), a run reads pending, with Slurm's reason, in ls, show,
    export, the TUI and its Queue screen; released, it runs and succeeds."""
    from app.tui.app import MoeTuiApp
    from app.tui.screens.queue import QueueScreen
    from tests.tui_support import screen_text, settle

    a = queued_id(moe(slurm_ws, "submit", "--name", "later", "--slurm", "extra=--begin=now+3600", "--", *QUICK, **SLURM))
    wait_for(lambda: moe(slurm_ws, "ls").returncode == 0 and run_row(ws, a).slots == "PENDING (BeginTime)",
             timeout=40, what="Slurm's reason for holding the job")
    r = run_row(ws, a)
    assert r.status == "pending" and r.slurm_job_id, (r.status, r.slots)
    where = f"slurm:{r.slurm_job_id} PENDING (BeginTime)"
    sq = subprocess.run(["squeue", "-h", "-j", r.slurm_job_id, "-o", "%T|%r"], capture_output=True, text=True)
    assert sq.stdout.strip() == "PENDING|BeginTime", "Slurm agrees"

    out = moe(slurm_ws, "ls")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith(a))
    assert line.split()[1] == "pending" and line.rstrip().endswith(where), line
    assert moe(slurm_ws, "ls", "--status", "pending").stdout.startswith("ID")
    show = moe(slurm_ws, "show", a).stdout
    assert "status    pending" in show and f"slot {where}" in show, show
    csv = moe(slurm_ws, "export", "-o", "-").stdout
    assert f"{a},later,mheight-generate,pending," in csv
    assert (slurm_ws / "runs" / a / "status.json").exists() is False, "it has not started"

    app = MoeTuiApp(ws, poll_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        text = screen_text(app)
        row = next(ln for ln in text.splitlines() if "later" in ln)
        assert row.split()[0] == "pending", row
        assert f"waiting in Slurm: {where}" in text
        await app.push_screen(QueueScreen())
        await settle(app, pilot)
        assert f"{a} later · PENDING (BeginTime)" in screen_text(app)

    # Released, Slurm runs it: running, then succeeded, and the Slot no longer says pending.
    rel = subprocess.run(["scontrol", "update", f"jobid={r.slurm_job_id}", "StartTime=now"], capture_output=True, text=True)
    assert rel.returncode == 0, rel.stderr
    assert moe(slurm_ws, "wait", a, "--timeout", "150").returncode == 0
    r = run_row(ws, a)
    assert r.status == "succeeded" and r.slots is None and len(epoch_events(slurm_ws / "runs" / a)) == 4
    assert "PENDING" not in moe(slurm_ws, "ls").stdout


def test_a_job_slurm_forgot_while_the_daemon_was_down_settles(slurm_ws, ws):
    """The daemon is down while its job is scancel'ed (the job writes "cancelled" and waits for Slurm's
    verdict); by the time a daemon is back, Slurm has forgotten the job (MinJobAge, no accounting). The
    run must settle from its own files, not read running forever."""
    long = [*TINY, "--epochs", "2000", "--lr-milestones", "1500"]
    a = queued_id(moe(slurm_ws, "submit", "--slurm", "extra=--begin=now+3600", "--", *long, **SLURM))
    rd = slurm_ws / "runs" / a
    wait_for((rd / "slurm.json").exists, timeout=30, what="the sbatch submission")
    assert moe(slurm_ws, "daemon", "stop").returncode == 0
    job = json.loads((rd / "launch.json").read_text())["job_id"]
    assert subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True).returncode == 0
    wait_for(lambda: len(epoch_events(rd)) >= 1, timeout=60, what="the job's first epoch")
    assert subprocess.run(["scancel", job], capture_output=True).returncode == 0
    wait_for(lambda: json.loads((rd / "status.json").read_text())["state"] == "cancelled", timeout=30, what="its status")
    # Forgotten: Slurm keeps an ended job for MinJobAge (600 s here); a job id it never had stands in for it.
    forgotten = "67000000"
    for name in ("launch.json", "slurm.json"):
        rec = json.loads((rd / name).read_text())
        (rd / name).write_text(json.dumps({**rec, "job_id": forgotten}))
    sq = subprocess.run(["squeue", "-h", "-t", "all", "-j", forgotten], capture_output=True, text=True)
    assert sq.returncode != 0 and "invalid job id" in sq.stderr.lower(), (sq.stdout, sq.stderr)

    assert moe(slurm_ws, "wait", a, "--timeout", "30").returncode == 1
    r = run_row(ws, a)
    assert (r.status, r.error) == ("cancelled", "cancelled by SIGTERM"), (r.status, r.error)
    assert json.loads((rd / "slurm.json").read_text())["final_state"] == "UNKNOWN"


def test_sbatch_that_answers_late_or_never(slurm_ws, ws, tmp_path):
    """A slow controller: sbatch that queues the job but answers after the timeout has its job found by
    name and followed to the end; sbatch that never answers fails the run in one line saying what to do,
    and leaves no job behind."""
    import shutil

    real = shutil.which("sbatch")
    late, down = tmp_path / "late", tmp_path / "down"
    for d, body in ((late, f'out=$("{real}" "$@"); rc=$?; sleep 4; echo "$out"; exit $rc'), (down, "sleep 60")):
        d.mkdir()
        (d / "sbatch").write_text(f"#!/bin/bash\n{body}\n")
        (d / "sbatch").chmod(0o755)
    with (slurm_ws / "moe-tui.toml").open("a") as f:
        f.write("command_timeout_s = 1.5\n")
    path = os.environ["PATH"]

    a = queued_id(moe(slurm_ws, "submit", "--", *QUICK, PATH=f"{late}:{path}", **SLURM))  # starts the daemon with this PATH
    assert moe(slurm_ws, "wait", a, "--timeout", "150").returncode == 0
    job = json.loads((slurm_ws / "runs" / a / "launch.json").read_text())["job_id"]
    assert job.isdigit() and run_row(ws, a).slurm_job_id == job

    assert moe(slurm_ws, "daemon", "stop").returncode == 0
    b = queued_id(moe(slurm_ws, "submit", "--", *QUICK, PATH=f"{down}:{path}", **SLURM))
    assert moe(slurm_ws, "wait", b, "--timeout", "60").returncode == 1
    r = run_row(ws, b)
    assert r.status == "failed" and "\n" not in r.error
    assert r.error.startswith(f"sbatch did not answer within 1.5 s and squeue lists no job moe-{b}"), r.error
    assert f"moe-tui retry {b}" in r.error
    names = subprocess.run(["squeue", "-h", "-n", f"moe-{b}", "-o", "%i"], capture_output=True, text=True).stdout
    assert names.strip() == ""
