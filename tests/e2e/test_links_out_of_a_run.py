"""A link inside a run directory, or in its place, never makes a job or the manager write outside it.

Each case is a real job or the real daemon on a run directory with one link that leads out of
it; the file the link points at must come out untouched, and the run says why in one line.
"""

from __future__ import annotations

import json
import shutil

from sqlmodel import select

from app.store import Run
from tests.helpers import QUICK, engine, moe

SECRET = "must stay as it is\n"


def queued_id(out) -> str:
    assert out.returncode == 0, out.stderr
    return next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("queued"))


def run_row(ws, run_id: str) -> Run:
    with ws.store.read() as s:
        return s.exec(select(Run).where(Run.run_id == run_id)).one()


def test_a_job_refuses_a_run_dir_whose_log_or_checkpoints_lead_out(ws_path, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "notes.txt"
    secret.write_text(SECRET)
    for name, target in (("stdout.log", secret), ("checkpoints", outside)):
        rd = ws_path / f"run-{name}"
        rd.mkdir()
        (rd / name).symlink_to(target)
        out = engine(ws_path, *QUICK, "--run-dir", str(rd))
        assert out.returncode == 2, out.stderr
        err = out.stderr.strip().splitlines()
        assert err == [f"error: {rd / name} is a link that leads out of {rd} (to {target}); "
                       "moe-tui never writes through one: remove the link"], out.stderr
        assert secret.read_text() == SECRET and sorted(p.name for p in outside.iterdir()) == ["notes.txt"]
        assert json.loads((rd / "status.json").read_text())["error"] == err[0].removeprefix("error: ")


def test_the_daemon_fails_a_queued_run_with_a_link_instead_of_writing_through_it(ws_path, ws, tmp_path):
    assert moe(ws_path, "pause").returncode == 0
    via_log = queued_id(moe(ws_path, "submit", "--name", "log-link", "--", *QUICK))
    moved = queued_id(moe(ws_path, "submit", "--name", "dir-link", "--", *QUICK))
    fine = queued_id(moe(ws_path, "submit", "--name", "fine", "--", *QUICK))
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (ws_path / "runs" / via_log / "stdout.log").symlink_to(secret)
    # The whole run directory replaced by a link to a copy of it somewhere else.
    elsewhere = tmp_path / "elsewhere"
    shutil.move(ws_path / "runs" / moved, elsewhere)
    (ws_path / "runs" / moved).symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())

    assert moe(ws_path, "resume").returncode == 0
    assert moe(ws_path, "wait", via_log, moved, fine, "--timeout", "120").returncode == 1
    assert secret.read_text() == SECRET
    assert sorted(p.name for p in elsewhere.iterdir()) == before, "the manager wrote into the linked folder"
    r = run_row(ws, via_log)
    assert r.status == "failed" and r.error.startswith(f"{ws_path / 'runs' / via_log / 'stdout.log'} is a link that leads out of")
    r = run_row(ws, moved)
    assert r.status == "failed" and r.error == (f"{ws_path / 'runs' / moved} is a link, not a run directory moe-tui made; "
                                                "moe-tui never writes through one: remove the link")
    assert run_row(ws, fine).status == "succeeded", "one bad run costs that run, never the others"
    # The verdict on the log-link run is kept in its own directory (a reindex reads it failed).
    launch = json.loads((ws_path / "runs" / via_log / "launch.json").read_text())
    assert launch["state"] == "failed" and "is a link that leads out of" in launch["error"]


def test_tagging_a_run_whose_annotations_lead_out_says_so_in_one_line(ws_path, ws, tmp_path):
    assert moe(ws_path, "pause").returncode == 0
    a = queued_id(moe(ws_path, "submit", "--", *QUICK))
    secret = tmp_path / "secret.json"
    secret.write_text(SECRET)
    (ws_path / "runs" / a / "annotations.json").symlink_to(secret)
    out = moe(ws_path, "tag", a, "best")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "annotations.json is a link that leads out of" in out.stderr and out.stderr.strip().endswith("remove the link")
    assert secret.read_text() == SECRET
