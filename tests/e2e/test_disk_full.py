"""A workspace on a filesystem that fills up: real jobs, the real daemon, a real (small) tmpfs.

The cause says "no space left on device" and where, nothing half-written stays, the daemon
waits for space instead of dying, and every command says one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.procs import EXIT_NO_SPACE, ProcessIdentity
from tests.helpers import QUICK, TINY, engine, moe, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root")


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the filesystem with one file."""
    st = os.statvfs(fs)
    filler = fs / f"filler-{len(list(fs.glob('filler-*')))}"
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    with open(filler, "wb") as f:
        f.write(b"\0" * size)
    return filler


def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def queued_id(out) -> str:
    assert out.returncode == 0, out.stderr
    return next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("queued"))


def test_a_full_disk_fails_the_run_with_the_cause_and_the_daemon_waits_for_space(small_fs):
    ws = small_fs / "ws"
    ws.mkdir()
    assert moe(ws, "pause").returncode == 0
    run = queued_id(moe(ws, "submit", "--", *TINY))
    filler = fill(small_fs, leave=200_000)  # room for the events, not for the first checkpoint
    assert moe(ws, "resume").returncode == 0
    assert moe(ws, "wait", run, "--timeout", "120").returncode == 1
    show = moe(ws, "show", run)
    assert show.returncode == 0, show.stderr
    status = json.loads((ws / "runs" / run / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == EXIT_NO_SPACE, status
    assert status["error"].startswith(f"no space left on device ({ws / 'runs' / run / 'checkpoints'}"), status["error"]
    assert temporaries(ws) == [], "a partial file stayed behind"

    # Now nothing fits: the daemon waits with a queued run instead of dying, every command
    # says one line, and no half-made run stays.
    filler.unlink()
    assert moe(ws, "pause").returncode == 0
    waiting = queued_id(moe(ws, "submit", "--", *QUICK))
    daemon = json.loads((ws / ".moe-tui" / "daemon.pid").read_text())["pid"]
    fill(small_fs, leave=0)
    assert moe(ws, "resume").returncode == 0
    log = ws / ".moe-tui" / "daemon.log"
    wait_for(lambda: "the workspace's disk is full (database or disk is full); free space on it; retrying every"
             in log.read_text(), timeout=30, what="the daemon to say the disk is full")
    out = moe(ws, "submit", "--", *QUICK)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no space left on device" in out.stderr or "disk is full" in out.stderr, out.stderr
    assert sorted(p.name for p in (ws / "runs").iterdir()) == sorted([run, waiting]), "a half-made run directory stayed"
    for args in (["ls"], ["show", run], ["tag", run, "full"]):
        out = moe(ws, *args)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 1, (args, out.stderr)

    headless = engine(ws, *QUICK)  # cannot even write its run.json: says so, exits EX_TEMPFAIL
    assert headless.returncode == EXIT_NO_SPACE, headless.stderr
    assert headless.stderr.strip().splitlines()[-1].startswith("error: no space left on device ("), headless.stderr
    assert "Traceback" not in headless.stderr and temporaries(ws) == []

    for f in small_fs.glob("filler-*"):
        f.unlink()
    assert moe(ws, "wait", waiting, "--timeout", "120").returncode == 0
    assert json.loads((ws / ".moe-tui" / "daemon.pid").read_text())["pid"] == daemon, "the daemon died of the full disk"
    assert "the disk has room again" in log.read_text()
    assert temporaries(ws) == []


def test_a_job_that_cannot_write_its_final_status_is_read_from_the_launchers_exit_code(small_fs, tmp_path):
    """The job's exit code says why (EXIT_NO_SPACE); the launcher waits until the exit code fits."""
    exit_file = small_fs / "exit_code"
    ran = tmp_path / "job-ran"  # on another filesystem: the job's one trace while the disk is full
    filler = fill(small_fs, leave=0)
    shim = subprocess.Popen([sys.executable, "-m", "app.backends.shim", str(exit_file), "--", sys.executable, "-c",
                             f"open({str(ran)!r}, 'w').close(); raise SystemExit({EXIT_NO_SPACE})"])
    launcher = ProcessIdentity.of(shim.pid)  # while it lives: pid and start time, as status.json records a job
    children = Path(f"/proc/{shim.pid}/task/{shim.pid}/children")
    wait_for(lambda: ran.exists() and children.read_text().strip() == "", timeout=30, what="the job to end")
    assert shim.poll() is None and not exit_file.exists(), "the launcher gave up instead of waiting for space"
    assert temporaries(small_fs) == []
    filler.unlink()
    assert shim.wait(timeout=60) == 1
    assert exit_file.read_text() == f"{EXIT_NO_SPACE}\n"

    from app.lifecycle import settle
    from engine.core.rundir import RunDir

    rd = RunDir(small_fs)
    # The job's last status said running (its final write found no room); its process is gone.
    status = {"v": 1, "run_id": "x", "state": "running", "epoch": 2, "total_epochs": 3, **launcher.record()}
    settled = settle(rd, status, None, EXIT_NO_SPACE)
    assert settled.status == "failed"
    assert settled.error.startswith("ran out of disk space (no space left on device, exit code 75) after epoch 2/3"), settled.error
