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

from engine.core.rundir import atomic_write


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
        atomic_write(exit_file, "127\n")
        return 127
    code = child.wait()
    atomic_write(exit_file, f"{code}\n")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
