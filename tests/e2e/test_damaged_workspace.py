"""One run of several damaged (issue 14's "Done when"): every command and the daemon say one line per
bad item, exit 0, index everything else, and the queue keeps starting runs.

Real run directories (written through the job-side API), the real CLI and daemon as subprocesses,
a real job for the daemon to start (make-splits on the embedded digits: no training).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest

from app.workspace import Workspace
from tests.helpers import env_for, moe
from tests.unit.test_ingest import fake_job

BAD_LINES = [  # the lines; each is one bad item
    '{"v":1,"type":"epoch","epoch":"x","metrics":{"a":1}}',
    '{"v":null,"type":"epoch","epoch":4,"metrics":{"a":1}}',
    '{"v":1,"type":"epoch","epoch":4,"metrics":[1, 2]}',
    '{"v":1,"type":"epoch","epoch":%d,"metrics":{"a":1}}' % 2**70,
    '{"v":1,"type":"epoch","epo',  # malformed JSON, then more lines
]
GOOD_LINE = '{"v":1,"t":2.0,"type":"epoch","epoch":4,"metrics":{"val/acc":0.95}}'
BAD_ITEMS = len(BAD_LINES) + 1  # and status.json


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A workspace of four finished runs, the second damaged in events.jsonl and status.json; no database."""
    root = tmp_path_factory.mktemp("damaged") / "ws"
    ws = Workspace.open(root)
    runs = [fake_job(ws) for _ in range(4)]
    ws.store.close()
    for suffix in ("", "-wal", "-shm"):
        ws.db_path.with_name(ws.db_path.name + suffix).unlink(missing_ok=True)
    damaged = runs[1]
    with open(damaged.events, "a") as f:
        f.write("\n".join([*BAD_LINES, GOOD_LINE]) + "\n")
    status = json.loads(damaged.status.read_text())
    damaged.status.write_text(json.dumps({**status, "epoch": "three"}))
    return root, [r.run_id for r in runs], damaged.run_id


@pytest.fixture
def damaged_ws(template, ws_path):
    """A fresh copy of the template: each command meets the damage for the first time."""
    root, ids, bad = template
    shutil.rmtree(ws_path)
    shutil.copytree(root, ws_path)
    return ws_path, ids, bad


def warnings_about(stderr: str, run_id: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if run_id in line]


def check_bad_items(lines: list[str]) -> None:
    assert len(lines) == BAD_ITEMS, "\n".join(lines)
    for i in range(len(BAD_LINES)):  # events.jsonl:5 .. :9, after three epochs and the end
        assert sum(f"events.jsonl:{5 + i}: " in line for line in lines) == 1, lines
    (status,) = [line for line in lines if "status.json" in line]
    assert "status.json: epoch: expected an integer, got 'three'" in status


@pytest.mark.parametrize("command", [["reindex"], ["ls"], ["show", "@bad"], ["export", "--out", "-"]],
                         ids=["reindex", "ls", "show", "export"])
def test_each_command_says_one_line_per_bad_item_and_lists_everything(damaged_ws, command):
    ws, ids, bad = damaged_ws
    out = moe(ws, *[bad if a == "@bad" else a for a in command])
    assert out.returncode == 0, out.stderr
    check_bad_items(warnings_about(out.stderr, bad))
    again = moe(ws, *[bad if a == "@bad" else a for a in command])
    assert again.returncode == 0
    if command == ["reindex"]:  # a new database: it meets the damage afresh
        check_bad_items(warnings_about(again.stderr, bad))
    else:
        assert warnings_about(again.stderr, bad) == [], "each bad item is reported once"

    listed = moe(ws, "ls").stdout
    for run_id in ids:
        assert run_id in listed
    (row,) = [line for line in listed.splitlines() if line.startswith(bad)]
    assert " unreadable " in row and "status.json: epoch: expec" in row, "listed with its cause, not guessed"
    assert sum(" succeeded " in line for line in listed.splitlines()) == 3

    shown = moe(ws, "show", bad).stdout
    assert "status    unreadable" in shown and "error     " in shown and "got 'three'" in shown

    rows = list(csv.DictReader(io.StringIO(moe(ws, "export", "--out", "-", "--history").stdout)))
    per_run = {run_id: [r for r in rows if r["run_id"] == run_id] for run_id in ids}
    assert all(len(per_run[run_id]) == 6 for run_id in ids if run_id != bad), "every other run indexed"
    assert len(per_run[bad]) == 7 and {"epoch": "4", "key": "val/acc", "value": "0.95"}.items() <= per_run[bad][-1].items(), \
        "the good lines of the damaged run, before and after the bad ones, are indexed"
    (wide,) = [r for r in csv.DictReader(io.StringIO(moe(ws, "export", "--out", "-").stdout)) if r["run_id"] == bad]
    assert wide["status"] == "unreadable" and "got 'three'" in wide["error"]


def test_the_daemon_says_one_line_per_bad_item_and_starts_a_run_queued_after_the_damage(damaged_ws):
    ws, ids, bad = damaged_ws
    from app.queue.submit import submit

    w = Workspace.open(ws)
    run = submit(w, ["make-splits", "--dataset", "digits"], name="after-the-damage")
    w.store.close()
    # The real daemon in the foreground: its first pass meets the damage; it exits once idle.
    daemon = subprocess.run([sys.executable, "-m", "app.queue.daemon", "--workspace", str(ws), "--idle-exit", "1"],
                            capture_output=True, text=True, timeout=300, env=env_for(ws), stdin=subprocess.DEVNULL)
    assert daemon.returncode == 0, daemon.stderr
    check_bad_items(warnings_about(daemon.stderr, bad))
    out = moe(ws, "wait", run.run_id, "--timeout", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    assert warnings_about(out.stderr, bad) == []
    listed = moe(ws, "ls").stdout
    assert all(run_id in listed for run_id in ids)


# --------------------------------------------------------------------------- #
# A damaged experiments.db: one line that says `moe-tui reindex`, and reindex keeps the old file.

def _damage_db(db, how: str) -> None:
    import sqlite3

    if how == "newer":  # a newer moe-tui's migration ran on it
        con = sqlite3.connect(db)
        con.execute("UPDATE alembic_version SET version_num = '0099'")
        con.commit()
        con.close()
        return
    data = db.read_bytes()
    if how == "garbage":
        db.write_bytes(b"\x00\x8d garbage, not SQLite" * 50)
    elif how == "truncated":
        db.write_bytes(data[:8192])
    else:  # "run table": the file opens, and the first query of the runs fails
        con = sqlite3.connect(db)
        (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'run'").fetchone()
        page = con.execute("PRAGMA page_size").fetchone()[0]
        con.close()
        db.write_bytes(data[:page * (root - 1)] + b"\xde\xad" * (page // 2) + data[page * root:])


@pytest.fixture
def indexed_ws(damaged_ws):
    """The damaged workspace with its database built (and its WAL folded in), no daemon."""
    ws, ids, bad = damaged_ws
    assert moe(ws, "ls").returncode == 0
    for suffix in ("-wal", "-shm"):
        assert not (ws / f"experiments.db{suffix}").exists(), "the last connection folded the WAL in"
    return ws, ids


@pytest.mark.parametrize("how", ["garbage", "truncated", "run table", "newer"])
def test_a_damaged_database_is_one_line_and_reindex_sets_it_aside(indexed_ws, how):
    ws, ids = indexed_ws
    db = ws / "experiments.db"
    _damage_db(db, how)
    damaged = db.read_bytes()
    want = ("was written by a newer moe-tui (schema revision 0099; this one knows up to " if how == "newer"
            else "is unreadable (")
    for args in (["ls"], ["show", ids[0]], []):  # [] opens the TUI: the same line, before the screen is taken
        out = moe(ws, *args, timeout=60)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        # The TUI meets a damaged runs page in its first poll, after it took the terminal: the line
        # comes once the terminal is given back (its escape codes before it are the terminal's)
        assert "Traceback" not in out.stderr and out.stderr.count("error: ") == 1, out.stderr
        line = out.stderr[out.stderr.index("error: "):].rstrip("\n")
        assert "\n" not in line and line.startswith(f"error: {db} {want}") and "moe-tui reindex" in line, line

    out = moe(ws, "reindex")
    assert out.returncode == 0, out.stderr
    (aside,) = [p for p in ws.iterdir() if p.name.startswith("experiments.db.") and not p.name.endswith(".lock")]
    assert aside.name.startswith("experiments.db.newer-" if how == "newer" else "experiments.db.broken-")
    assert aside.read_bytes() == damaged, "the old file is kept as it was, never deleted"
    moved = [line for line in out.stderr.splitlines() if line.startswith("moved the old experiments.db")]
    assert len(moved) == 1 and f"aside to {aside.name}" in moved[0]
    assert f"reindexed {len(ids)} runs" in out.stdout
    listed = moe(ws, "ls")
    assert listed.returncode == 0 and all(run_id in listed.stdout for run_id in ids)
    assert moe(ws, "reindex").stderr.count("moved the old") == 0, "a good database is replaced, not set aside"


async def test_the_tui_exits_with_the_one_line_when_the_database_is_damaged_under_it(indexed_ws):
    """The file opens (its header is fine) and the runs' page is not: the first poll meets it, and the
    app ends with exit code 2 and the line `moe-tui` prints once the terminal is back (shown above
    through the real CLI), instead of an empty table that says "No runs yet"."""
    from app.tui.app import MoeTuiApp
    from tests.tui_support import settle

    ws_root, _ = indexed_ws
    _damage_db(ws_root / "experiments.db", "run table")
    w = Workspace.open(ws_root)
    app = MoeTuiApp(w, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
    assert app.return_code == 2
    assert app.fatal and app.fatal.startswith(f"{ws_root / 'experiments.db'} is unreadable (") and "moe-tui reindex" in app.fatal
    w.store.close()


async def test_the_tui_lists_a_run_whose_config_is_a_list_as_unreadable(damaged_ws):
    from textual.widgets import DataTable

    from app.tui.app import MoeTuiApp
    from tests.tui_support import settle

    ws_root, ids, _ = damaged_ws
    run_json = ws_root / "runs" / ids[0] / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "config": [1, 2]}))
    w = Workspace.open(ws_root)
    app = MoeTuiApp(w, poll_s=0.2)
    async with app.run_test(size=(160, 30)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        assert table.row_count == len(ids)
        statuses = {str(table.get_cell_at((i, table.get_column_index("run_id")))):
                    str(table.get_cell_at((i, table.get_column_index("status")))) for i in range(table.row_count)}
        assert statuses[ids[0]].startswith("unreadab")
        await pilot.press("enter")  # its run screen, with the cause
        await settle(app, pilot)
    assert app.return_code is None, "still running until the test left it"
    w.store.close()
