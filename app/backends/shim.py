"""The launcher between the daemon and a job: waits for it and records its exit code.

    python -m app.backends.shim EXIT_FILE -- COMMAND...

The daemon starts this in a new session (its own process group), so a dropped
SSH connection, a closed TUI or a dead daemon cannot reach the job. When the
job ends, however it ends, the exit code (negative: the signal that killed it)
is written atomically to EXIT_FILE, so whoever looks next (this daemon, a
restarted one, ``moe-tui reindex``) can say how it ended.

Stdlib and engine.core only, and quiet: the job's output goes to the run's stdout.log.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from engine.core.errors import NoSpace
from engine.core.rundir import atomic_write

NO_SPACE_RETRY_S = 5.0  # a few bytes; each try is cheap
NO_SPACE_PATIENCE_S = 7 * 24 * 3600.0  # a week: a full scratch disk waits for a person


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m app.backends.shim EXIT_FILE -- COMMAND...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    # Cancel signals reach the whole process group, job included; the shim must
    # outlive the job to record its code. A Python-level handler (not SIG_IGN)
    # is reset to the default in the child at exec, so the job still gets them.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as e:
        print(f"error: cannot start {command[0]}: {e.strerror}", flush=True)
        record_exit(exit_file, 127)
        return 127
    code = child.wait()
    record_exit(exit_file, code)
    return 0 if code == 0 else 1


def record_exit(exit_file: str, code: int) -> None:
    """Write the exit code; on a full disk, wait until it fits. It is the run's last record:
    a job that could not write its final status (EXIT_NO_SPACE) is read from it alone."""
    waited = 0.0
    while True:
        try:
            atomic_write(exit_file, f"{code}\n")
            return
        except NoSpace:
            if waited >= NO_SPACE_PATIENCE_S:
                raise
        time.sleep(NO_SPACE_RETRY_S)
        waited += NO_SPACE_RETRY_S


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
