"""Rebuild experiments.db from the run directories, swapping the new file in whole.

The new database is built beside the old one (``experiments.db.reindex-<pid>``,
rollback journal, so it is one file) and renamed over it only when complete:
a reindex killed at any moment leaves the old database as it was, with every
dependency, and at worst a stale ``.reindex-*`` file the next reindex removes.

Before the swap the old file's write-ahead log is checkpointed into it and
removed: a leftover ``-wal`` beside the new file would be replayed onto it.
Clients open across the swap (a TUI, the daemon) see the file's inode change
at their next session and reopen (``Store.reopen_if_replaced``).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from app.errors import UserError
from app.ingest import Ingester, IngestReport
from app.store import Store
from app.workspace import Workspace

CHECKPOINT_TRIES = 50  # x 0.1 s: how long a reader of the old file may hold the swap up


def rebuild(ws: Workspace) -> IngestReport:
    """Index every run directory into a new file, then swap it in; what the pass reported."""
    db = ws.db_path
    for stale in db.parent.glob(f"{db.name}.reindex-*"):
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f"{db.name}.reindex-{os.getpid()}")
    new = Workspace(ws.root)
    new.__dict__["store"] = Store(tmp, ws.migrate_lock, journal="DELETE")
    try:
        report = Ingester(new).run_pass()
    finally:
        new.store.close()
    _retire_wal(db)
    os.replace(tmp, db)
    return report


def _retire_wal(db: Path) -> None:
    """Fold the old file's WAL into it and remove the WAL and its index, or refuse in one line."""
    wal, shm = (db.with_name(db.name + suffix) for suffix in ("-wal", "-shm"))
    if not db.exists() or not wal.exists():
        shm.unlink(missing_ok=True)
        return
    conn = sqlite3.connect(db, timeout=5)
    try:
        for _ in range(CHECKPOINT_TRIES):
            busy, _frames, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            time.sleep(0.1)
        else:
            raise UserError(f"{db} is busy (another moe-tui is reading it); close it and run moe-tui reindex again")
    finally:
        conn.close()
    wal.unlink(missing_ok=True)
    shm.unlink(missing_ok=True)
