"""Tags, notes and deletion kept in the run directory; reindex builds a new file and swaps it
in whole; a client open across the swap reopens the new file. Real CLI subprocesses."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time

from sqlmodel import func, select

from app.queue.control import annotate
from app.queue.submit import submit
from app.store import Store
from app.store.models import Run, RunDependency
from app.workspace import Workspace
from tests.helpers import BIN, env_for, moe


def rows(db) -> dict[str, tuple[str, str]]:
    """run_id -> (tags, notes) read straight from the file, with a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        return {r: (t, n) for r, t, n in conn.execute("SELECT run_id, tags, notes FROM run")}
    finally:
        conn.close()


def test_tags_and_notes_survive_losing_the_database(ws, copy_run):
    rd = copy_run(ws.root)
    assert moe(ws.root, "ls").returncode == 0
    out = moe(ws.root, "tag", rd.name, "Baseline, seed-sweep,baseline")
    assert out.returncode == 0, out.stderr
    assert moe(ws.root, "note", rd.name, "  lr too high?  ").returncode == 0
    assert json.loads((rd / "annotations.json").read_text()) == {
        "v": 1, "tags": ["baseline", "seed-sweep"], "notes": "lr too high?", "deleted_at": None}
    ws.store.close()
    for suffix in ("", "-wal", "-shm"):
        ws.db_path.with_name(ws.db_path.name + suffix).unlink(missing_ok=True)
    out = moe(ws.root, "reindex")
    assert out.returncode == 0, out.stderr
    assert rows(ws.db_path)[rd.name] == ("baseline,seed-sweep", "lr too high?")


def test_a_bad_annotations_file_costs_one_line_and_its_tags(ws, copy_run):
    good, bad = copy_run(ws.root), copy_run(ws.root, "261201-120000-0001")
    assert moe(ws.root, "ls").returncode == 0
    annotate(ws, good.name, tags=["kept"])
    (bad / "annotations.json").write_text('{"v": 1, "tags": "not-a-list"}')
    out = moe(ws.root, "reindex")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "annotations.json" in ln]
    assert len(lines) == 1 and "tags" in lines[0] and bad.name in lines[0], out.stderr
    got = rows(ws.db_path)
    assert got[good.name][0] == "kept" and got[bad.name] == ("", "")


def test_rm_deletes_a_finished_run_and_refuses_an_active_one(ws, copy_run):
    rd = copy_run(ws.root)
    assert moe(ws.root, "pause").returncode == 0
    queued = submit(ws, ["train-expert", "--preset", "quick"])
    out = moe(ws.root, "rm", queued.run_id)
    assert out.returncode != 0 and "only finished runs can be deleted" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = moe(ws.root, "rm", rd.name)
    assert out.returncode == 0, out.stderr
    assert not rd.exists() and not list((ws.root / "runs").glob(".deleted-*"))
    assert rd.name not in rows(ws.db_path) and queued.run_id in rows(ws.db_path)
    assert moe(ws.root, "rm", "nonesuch").returncode != 0


def test_a_run_marked_deleted_stays_deleted_after_reindex(ws, copy_run):
    rd, other = copy_run(ws.root), copy_run(ws.root, "261201-120000-0001")
    # a deletion interrupted after the mark: the directory is still there
    (rd / "annotations.json").write_text(json.dumps({"v": 1, "deleted_at": time.time()}))
    assert moe(ws.root, "reindex").returncode == 0
    assert set(rows(ws.db_path)) == {other.name}


def _queue_with_dependencies(ws, copy_run, n_runs: int) -> int:
    """Finished runs to index, and a chain of queued runs each after the previous: the edge count."""
    for i in range(n_runs):
        copy_run(ws.root, f"261201-1200{i:02d}-0000")
    prev = submit(ws, ["train-expert", "--preset", "quick"])
    for _ in range(12):
        prev = submit(ws, ["train-expert", "--preset", "quick"], after=[prev.run_id])
    return 12


def test_reindex_killed_at_any_moment_leaves_a_whole_database(ws, copy_run):
    assert moe(ws.root, "pause").returncode == 0  # the daemon reindex restarts must start nothing
    edges = _queue_with_dependencies(ws, copy_run, 30)
    assert moe(ws.root, "reindex").returncode == 0
    ws.store.close()
    n_runs = len(rows(ws.db_path))
    for delay in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 3.0):
        proc = subprocess.Popen([str(BIN / "moe-tui"), "--workspace", str(ws.root), "reindex"],
                                env=env_for(ws.root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        time.sleep(delay)  # kill it somewhere along the way: the moment varies, the outcome must not
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out = moe(ws.root, "ls")
        assert out.returncode == 0, (delay, out.stderr)
        store = Store(ws.db_path, ws.migrate_lock)
        try:
            with store.read() as s:
                assert s.exec(select(func.count()).select_from(Run)).one() == n_runs, delay
                assert s.exec(select(func.count()).select_from(RunDependency)).one() == edges, delay
        finally:
            store.close()


def test_a_client_open_across_a_reindex_reopens_the_new_file(ws, copy_run):
    rd = copy_run(ws.root)
    client = Workspace(ws.root)  # a TUI or daemon: its store stays open
    with client.store.read() as s:
        assert s.exec(select(func.count()).select_from(Run)).one() == 0
    assert client.store.generation == 0
    assert moe(ws.root, "reindex").returncode == 0
    with client.store.read() as s:  # the old file's rows were none; the new file holds the run
        assert s.exec(select(Run.run_id)).all() == [rd.name]
    assert client.store.generation == 1
    annotate(client, rd.name, notes="after the swap")
    assert rows(ws.db_path)[rd.name] == ("", "after the swap"), "the write landed in the new file"
    client.store.close()
