"""The one exception type the CLI and TUI show to people as a single line, and the one test
for the fault every layer can meet from outside: a full disk."""

from __future__ import annotations

import sqlite3

from engine.core.errors import is_no_space


class UserError(Exception):
    """Bad input or a state a person must fix; the message says what and how."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: SQLAlchemy keeps sqlite3's error in ``orig``) says the
    disk is full: a job's NoSpace, ENOSPC/EDQUOT, or SQLite's SQLITE_FULL."""
    for e in (exc, getattr(exc, "orig", None), exc.__cause__):
        if is_no_space(e):
            return True
        if isinstance(e, sqlite3.Error) and (getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                                             or "database or disk is full" in str(e)):
            return True
    return False


def disk_full_message(exc: BaseException) -> str:
    """The one line for a ``disk_full`` error: SQLite's own words where it said it."""
    return f"the workspace's disk is full ({getattr(exc, 'orig', None) or exc}); free space on it"
