"""The engine's exceptions that carry a one-line cause a person can act on."""

from __future__ import annotations


class JobError(Exception):
    """A failure with a one-line cause a person can act on (bad input, missing file).

    The message ends up in status.json, in the run table and on stderr, so it
    must say what was wrong and what to do about it.
    """


class Cancelled(Exception):
    """Raised at a safe point after SIGTERM/SIGINT asked the job to stop."""



class ConfigError(ValueError):
    """Bad job arguments; the message is one line that says what to change."""

