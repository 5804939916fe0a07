"""Writes land where they were named and nowhere else, whole: a device, a FIFO or a symlink a person
names is fed or followed, never replaced; a file this tool names is never written over a FIFO."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from engine.core.errors import JobError
from engine.core.rundir import atomic_write, ensure_inside, write_named
from tests.helpers import moe

HEADER = "run_id,name,kind,status,error,created_at,duration_s,git_commit"


def test_export_to_a_device_node_writes_to_the_device_and_leaves_it_a_device(ws_path, ws):
    if os.geteuid() != 0:
        pytest.skip("making a device node (mknod) needs root")
    null = ws_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers, in the test's own folder
    out = moe(ws_path, "export", "--out", str(null))
    assert out.returncode == 0, out.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode), "the rename replaced the device node with a file"
    assert [p.name for p in ws_path.glob(".null.*")] == [], "a temporary file was left beside it"


def test_export_to_a_fifo_feeds_the_reader(ws_path, ws):
    fifo = ws_path / "csv.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    out = moe(ws_path, "export", "--out", str(fifo), timeout=60)
    reader.join(timeout=30)
    assert out.returncode == 0, out.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and got[0].decode().startswith(HEADER)


def test_export_through_a_symlink_replaces_its_target_and_keeps_the_link(ws_path, ws, tmp_path):
    target = tmp_path / "elsewhere" / "runs.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = ws_path / "latest.csv"
    link.symlink_to(target)
    out = moe(ws_path, "export", "--out", str(link))
    assert out.returncode == 0, out.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith(HEADER)


def test_write_named_creates_a_plain_file_whole(tmp_path):
    path = tmp_path / "a.csv"
    write_named(path, "x\n")
    assert path.read_text() == "x\n" and stat.S_ISREG(os.lstat(path).st_mode)


def test_atomic_write_refuses_a_fifo_and_replaces_a_link_without_following_it(tmp_path):
    fifo = tmp_path / "status.json"
    os.mkfifo(fifo)
    with pytest.raises(JobError, match=r"status.json is a FIFO, not a file; moe-tui never writes over one"):
        atomic_write(fifo, "{}")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    link = tmp_path / "launch.json"
    link.symlink_to(outside)
    atomic_write(link, "{}")
    assert outside.read_text() == "keep\n" and not link.is_symlink() and link.read_text() == "{}"


def test_ensure_inside_names_the_link_that_leads_out(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "scratch").mkdir()
    ensure_inside(run / "checkpoints" / "last.pth", run)  # absent, inside: fine
    (run / "artifacts").symlink_to(tmp_path / "scratch")
    with pytest.raises(JobError) as e:
        ensure_inside(run / "artifacts" / "plot.png", run)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{run / 'artifacts' / 'plot.png'} is a link that leads out of {run}")
    assert msg.endswith("remove the link")


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    """A SIGKILL during a checkpoint save leaves .last.pth.<pid>.*.tmp; a live writer's stays."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = tmp_path / f".last.pth.{dead.pid}.0badc0de.tmp"
        writing = tmp_path / f".last.pth.{alive.pid}.0badc0de.tmp"
        other = tmp_path / f".best.pth.{dead.pid}.0badc0de.tmp"
        for p in (left, writing, other):
            p.write_bytes(b"partial")
        atomic_write(tmp_path / "last.pth", b"whole")
        assert not left.exists() and writing.exists() and other.exists()
        assert (tmp_path / "last.pth").read_bytes() == b"whole"
    finally:
        alive.kill()
