"""Rebuild experiments.db from the run directories, swapping the new file in whole.

The new database is built beside the old one (``experiments.db.reindex-<pid>``,
rollback journal, so it is one file) and renamed over it only when complete:
a reindex killed at any moment leaves the old database as it was, with every
dependency, and at worst a stale ``.reindex-*`` file the next reindex removes.

Before the swap the old file's write-ahead log is checkpointed into it and
removed: a leftover ``-wal`` beside the new file would be replayed onto it.
An old file this moe-tui cannot use (damaged, not a database, or a newer moe-tui's schema)
is not replaced but moved aside whole, with its ``-wal``: ``experiments.db.broken-<time>``
or ``experiments.db.newer-<time>``, for a person to look at or delete.
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
from app.store.db import damage, revisions
from app.workspace import Workspace

CHECKPOINT_TRIES = 50  # x 0.1 s: how long a reader of the old file may hold the swap up


def rebuild(ws: Workspace) -> tuple[IngestReport, str | None]:
    """Index every run directory into a new file, then swap it in; what the pass reported, and the
    one line saying where an old file it could not use went (None if there was none)."""
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
    moved = _set_aside(db)
    if moved is None:
        _retire_wal(db)
    os.replace(tmp, db)
    return report, moved


def _set_aside(db: Path) -> str | None:
    """Move the old file aside if this moe-tui cannot use it; the line saying so, else None."""
    unusable = _unusable(db)
    if unusable is None:
        return None
    kind, why = unusable
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = db.with_name(f"{db.name}.{kind}-{stamp}")
    n = 1
    while aside.exists():  # two reindexes in one second: never over an earlier one
        n += 1
        aside = db.with_name(f"{db.name}.{kind}-{stamp}-{n}")
    wal = db.with_name(db.name + "-wal")
    if wal.exists():  # the old file's (SQLite finds it by the name beside it): replayed onto the new one, it would damage it
        os.replace(wal, aside.with_name(aside.name + "-wal"))
    db.with_name(db.name + "-shm").unlink(missing_ok=True)  # only an index of that WAL, rebuilt from it on open
    os.replace(db, aside)
    return f"moved the old {db.name} ({why}) aside to {aside.name}; delete it once you no longer want it"


def _unusable(db: Path) -> tuple[str, str] | None:
    """("broken", SQLite's words) for a damaged file, ("newer", its revision) for a newer moe-tui's,
    None for a good file or none. ``quick_check`` reads every page: a file cut short reads fine
    up to the missing one."""
    if not db.exists() or db.stat().st_size == 0:
        return None
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            ok = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if ok != "ok":
                return "broken", f"unreadable: {ok}"
            has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'").fetchone()
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone() if has else None
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        if damage(e) is None:
            raise
        return "broken", f"unreadable: {e}"
    if row and row[0] not in revisions():
        return "newer", f"written by a newer moe-tui, schema revision {row[0]}"
    return None


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
