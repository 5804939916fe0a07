"""SQLite connections: pragmas, writer transactions, migrations at open.

Every connection gets ``synchronous=NORMAL``, a busy timeout and foreign keys.
The journal mode (WAL on local disks) is a property of the database file: it
is set once, with the migrations, under the same file lock, because
``PRAGMA journal_mode=WAL`` from several fresh connections at once can fail
with "database is locked" without waiting in the busy handler.

pysqlite's own transaction handling is switched off so we emit ``BEGIN``
ourselves: readers ``BEGIN`` (deferred), writers ``BEGIN IMMEDIATE``, which
takes the write lock up front and so waits in the busy handler instead of
failing with "database is locked" when a read transaction tries to upgrade.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator

import sqlalchemy.exc
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.errors import UserError
from app.locks import FileLock

BUSY_TIMEOUT_MS = 60_000  # a writer waits this long for the lock before giving up
UNREADABLE_DB = ("{db} is unreadable ({cause}); `moe-tui reindex` rebuilds it from runs/ "
                 "(and keeps the unreadable file beside it)")
NEWER_DB = ("{db} was written by a newer moe-tui (schema revision {revision}; this one knows up to {head}); "
            "upgrade moe-tui, or run `moe-tui reindex` to rebuild it for this version from runs/ "
            "(the newer file is kept beside it)")


class DatabaseUnreadable(UserError):
    """experiments.db cannot be used by this moe-tui: damaged, not a database, or a newer one's.
    Nothing else works until it is rebuilt, so the TUI exits on it where other errors are notices."""


def damage(exc: BaseException) -> str | None:
    """SQLite's words when ``exc`` says the file is not a database or is damaged; else None (a locked
    database, a full disk and the like are not the file's fault)."""
    e = getattr(exc, "orig", None) or exc
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(e, sqlite3.DatabaseError) and code is not None and code & 0xFF in (sqlite3.SQLITE_NOTADB,
                                                                                     sqlite3.SQLITE_CORRUPT):
        return str(e)
    return None
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs", "9p", "afs"}


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path``, from /proc/mounts ('' if unknown)."""
    path = Path(path).resolve()
    best, fstype = "", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def journal_mode_for(db_path: Path) -> str:
    # WAL needs shared memory between processes, which network filesystems do not give.
    return "DELETE" if filesystem_type(db_path.parent) in NETWORK_FS else "WAL"


def make_engine(db_path: Path) -> Engine:
    engine = create_engine(
        f"sqlite:///{db_path}",
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we send BEGIN ourselves (see module doc)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writer") else "BEGIN")

    return engine


class Store:
    """The workspace's experiments.db: short read and write sessions.

    ``moe-tui reindex`` swaps a rebuilt file in under the same name. Every
    session first compares the file's identity (device, inode) with the one
    this store opened, one ``stat``, and on a change reopens, so a TUI or
    daemon open across a reindex reads and writes the new file, and
    ``generation`` counts the reopenings (the TUI reloads its rows on one:
    row ids and revisions start afresh in a rebuilt file).
    """

    def __init__(self, db_path: Path, lock_path: Path | None = None, journal: str | None = None):
        self.db_path = Path(db_path)
        self._lock_path = lock_path or self.db_path.with_name(self.db_path.name + ".migrate.lock")
        self._journal = journal
        self.generation = 0
        self._open()

    def _open(self) -> None:
        self.engine = make_engine(self.db_path)
        self._writer = self.engine.execution_options(writer=True)
        with self._readable():
            migrate(self.engine, self._lock_path, self._journal or journal_mode_for(self.db_path))
        self._identity = file_identity(self.db_path)

    @contextlib.contextmanager
    def _readable(self) -> Iterator[None]:
        """A damaged file is met at open or at any later query (a truncated one reads until the
        missing page): either way the one line that says so and how to rebuild it."""
        try:
            yield
        except (sqlalchemy.exc.DatabaseError, sqlite3.DatabaseError) as e:
            cause = damage(e)
            if cause is None:
                raise
            raise DatabaseUnreadable(UNREADABLE_DB.format(db=self.db_path, cause=cause)) from None

    def reopen_if_replaced(self) -> int:
        """Reopen when the file was replaced since it was opened; the current generation."""
        if file_identity(self.db_path) != self._identity:
            self.engine.dispose()
            self._open()
            self.generation += 1
        return self.generation

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        self.reopen_if_replaced()
        with self._readable(), Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A BEGIN IMMEDIATE transaction, committed on success, rolled back on error."""
        self.reopen_if_replaced()
        with self._readable(), Session(self._writer, expire_on_commit=False) as s:
            with s.begin():
                yield s

    def close(self) -> None:
        self.engine.dispose()


def file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


# --------------------------------------------------------------------------- #
# Migrations

MIGRATIONS = Path(__file__).with_name("migrations")


def revisions() -> list[str]:
    """Every migration this moe-tui has, oldest first, read from the scripts' file names (``NNNN_*.py``)."""
    names = sorted(p.stem for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    return [n.split("_", 1)[0] for n in names]


def head_revision() -> str:
    """The newest migration."""
    return revisions()[-1]


def check_revision(db: Path, revision: str | None) -> None:
    """DatabaseUnreadable if the file's schema revision is none this moe-tui has (a newer one wrote it):
    Alembic would fail on it with "Can't locate revision", and no older code should write to it."""
    if revision is not None and revision not in revisions():
        raise DatabaseUnreadable(NEWER_DB.format(db=db, revision=revision, head=head_revision()))


def file_state(engine: Engine) -> tuple[str, str | None]:
    """The database file's journal mode (upper case) and schema revision (None before the first), in one connection."""
    with engine.connect() as conn:
        journal = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).upper()
        has = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'").first()
        row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first() if has else None
        return journal, row[0] if row else None


def migrate(engine: Engine, lock_path: Path, journal: str = "WAL") -> None:
    """Bring the database to ``journal`` mode and the schema to the newest revision, under a file lock.

    The common case (already done) costs one connection's queries and no Alembic import.
    """
    head = head_revision()
    db = Path(engine.url.database or "")
    state = file_state(engine)
    if state == (journal, head):
        return
    check_revision(db, state[1])  # before the journal mode is touched: the file is not ours to change
    with FileLock(lock_path):
        mode, revision = file_state(engine)  # another process may have done it while we waited
        check_revision(db, revision)
        if mode != journal:
            raw = engine.raw_connection()  # outside any transaction, which the journal mode needs
            try:
                raw.cursor().execute(f"PRAGMA journal_mode={journal}")
            finally:
                raw.close()
        if revision == head:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.execution_options(writer=True).begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def schema_matches_models(engine: Engine) -> list:
    """Differences between the migrated schema and the SQLModel tables (empty when in sync)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import app.store.models  # noqa: F401  (registers the tables)

    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)

