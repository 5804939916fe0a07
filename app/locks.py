"""Advisory file locks (flock): one daemon per workspace, one migrator at a time.

The kernel drops a flock when its holder dies, so a crashed daemon never
leaves a stale lock behind, unlike a bare pidfile.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class FileLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire_within(self, seconds: float) -> bool:
        """Take the lock if it is free now or within ``seconds``, without blocking longer.

        ``is_locked_elsewhere`` takes the lock for a moment to look: a process that gives up
        at the first refusal can lose to such a look, where a real holder keeps it for good.
        """
        deadline = time.monotonic() + seconds
        while not self.acquire(blocking=False):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def is_locked_elsewhere(self) -> bool:
        """True if another process holds the lock right now."""
        if self.acquire(blocking=False):
            self.release()
            return False
        return True

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
