"""Status from evidence: final status, live processes, exit codes, absence."""

from __future__ import annotations

import subprocess
import time

from app.lifecycle import settle
from engine.core.procs import ProcessIdentity
from engine.core.rundir import RunDir


def dead_identity() -> ProcessIdentity:
    p = subprocess.Popen(["true"])
    ident = ProcessIdentity.of(p.pid)
    p.wait()
    return ident


def running_status(ident: ProcessIdentity, epoch=3) -> dict:
    return {"state": "running", "epoch": epoch, "total_epochs": 10, "updated_at": time.time(), **ident.record()}


def test_final_status_wins(tmp_path):
    s = settle(RunDir(tmp_path), {"state": "succeeded", "exit_code": 0, "ended_at": 5.0}, None, None)
    assert (s.status, s.exit_code, s.ended_at) == ("succeeded", 0, 5.0)


def test_live_job_is_running(tmp_path):
    p = subprocess.Popen(["sleep", "30"])
    try:
        s = settle(RunDir(tmp_path), running_status(ProcessIdentity.of(p.pid)), None, None)
        assert s.status == "running"
    finally:
        p.kill()
        p.wait()


def test_killed_job_with_exit_code(tmp_path):
    s = settle(RunDir(tmp_path), running_status(dead_identity()), None, -9)
    assert s.status == "failed" and s.exit_code == -9
    assert s.error.startswith("killed by SIGKILL") and "after epoch 3/10" in s.error


def test_events_ahead_of_status_name_the_last_finished_epoch(tmp_path):
    # Killed after appending epoch 4's event but before rewriting status.json (epoch 3).
    s = settle(RunDir(tmp_path), running_status(dead_identity()), None, -9, last_epoch=4)
    assert "after epoch 4/10" in s.error


def test_vanished_job_without_exit_code(tmp_path):
    s = settle(RunDir(tmp_path), running_status(dead_identity()), None, None)
    assert s.status == "failed" and "without a final status" in s.error


def test_what_a_job_wrote_on_its_way_out_is_read_again(tmp_path):
    """The ingest read the files, then the launcher wrote the exit code and exited, then the
    processes were checked: the exit code on disk, not the earlier read, says how it ended."""
    rd = RunDir(tmp_path)
    launch = {"launched_at": 1.0, **dead_identity().record("launcher_")}
    rd.exit_code_file.write_text("-9\n")
    s = settle(rd, running_status(dead_identity()), launch, None)
    assert s.status == "failed" and s.exit_code == -9 and s.error.startswith("killed by SIGKILL"), s


def test_rebooted_machine(tmp_path):
    ident = dead_identity()
    ident = ProcessIdentity(ident.pid, ident.start_ticks, ident.host, "an-earlier-boot")
    s = settle(RunDir(tmp_path), running_status(ident), None, None)
    assert s.status == "failed" and "rebooted" in s.error


def test_job_that_never_started(tmp_path):
    (tmp_path / "stdout.log").write_text("Traceback...\nModuleNotFoundError: No module named 'torch'\n")
    launch = {"launched_at": 1.0, **dead_identity().record("launcher_")}
    s = settle(RunDir(tmp_path), None, launch, 1)
    assert s.status == "failed"
    assert s.error == "exited with code 1 before the job started: ModuleNotFoundError: No module named 'torch'"


def test_launch_without_process_or_exit_code_is_lost(tmp_path):
    launch = {"launched_at": 1.0, **dead_identity().record("launcher_")}
    assert settle(RunDir(tmp_path), None, launch, None).status == "lost"


def test_starting_and_queued(tmp_path):
    launch = {"launched_at": 1.0, **ProcessIdentity.current().record("launcher_")}
    assert settle(RunDir(tmp_path), None, launch, None).status == "running"
    assert settle(RunDir(tmp_path), None, None, None).status == "queued"


def test_other_hosts_are_left_to_their_backend(tmp_path):
    ident = ProcessIdentity(1, 1, "compute-node-7", "x")
    assert settle(RunDir(tmp_path), running_status(ident), None, None).status == "running"


def test_a_job_on_another_node_ends_when_slurm_says_so(tmp_path):
    """Killed on its compute node without a final status: Slurm's final state says it is gone
    (pid and start time cannot be checked from the login node), so the exit code settles it."""
    ident = ProcessIdentity(1, 1, "compute-node-7", "x")
    launch = {"backend": "slurm", "job_id": "42", "launched_at": 1.0}
    slurm = {"job_id": "42", "state": "RUNNING"}
    assert settle(RunDir(tmp_path), running_status(ident), launch, None, slurm=slurm).status == "running"
    slurm = {"job_id": "42", "state": "FAILED", "final_state": "FAILED"}
    s = settle(RunDir(tmp_path), running_status(ident), launch, -9, slurm=slurm)
    assert (s.status, s.exit_code) == ("failed", -9), s
    assert s.error.startswith("killed by SIGKILL") and "after epoch 3/10 before writing a final status" in s.error, s.error
    s = settle(RunDir(tmp_path), running_status(ident), launch, None, slurm=slurm)  # the launcher died too
    assert s.status == "failed" and "without a final status" in s.error, s
