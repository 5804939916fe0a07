"""The queue's start order: the daemon starts runs in it, the Queue screen shows it."""

from __future__ import annotations


def start_key(priority: int | None, pk: int) -> tuple[int, int]:
    """Highest priority first, then oldest (the store's row id grows with submission)."""
    return (-(priority or 0), pk)
