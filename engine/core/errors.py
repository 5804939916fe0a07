"""The engine's exceptions that carry a one-line cause a person can act on."""

from __future__ import annotations

import errno

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class JobError(Exception):
    """A failure with a one-line cause a person can act on (bad input, missing file).

    The message ends up in status.json, in the run table and on stderr, so it
    must say what was wrong and what to do about it.
    """


class NoSpace(JobError):
    """A write failed for want of disk space (ENOSPC, a quota, or a library that hid it)."""

    def __init__(self, path):
        super().__init__(f"no space left on device ({path}); free space on that filesystem, then retry the run")


def is_no_space(e: BaseException | None) -> bool:
    """A NoSpace, or an OSError that is one before anything said so (ENOSPC, EDQUOT)."""
    return isinstance(e, NoSpace) or (isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS)


class Cancelled(Exception):
    """Raised at a safe point after SIGTERM/SIGINT asked the job to stop."""



class ConfigError(ValueError):
    """Bad job arguments; the message is one line that says what to change."""


def not_utf8(e: UnicodeDecodeError) -> str:
    """What is wrong with a text file a person gave that holds other bytes (often a binary named by
    mistake), for their one-line error: where the first bad byte is, not Python's codec message."""
    return f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"

