"""Process identity (a pid alone is reused by the kernel, pid + start time is not) and exit codes."""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

# Exit codes of the engine CLI, so the manager can tell bad input from a crash.
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 128 + signal.SIGTERM
# sysexits' EX_TEMPFAIL: the disk filled up, so the job's own final status may be missing; the
# launcher's exit_code is then the one record of why.
EXIT_NO_SPACE = 75


# Process identity: a pid alone is reused by the kernel, pid + start time is not.


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    state, start = fields[0], fields[19]
    if state in ("Z", "X"):
        return None
    return int(start)


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_ticks: int | None
    host: str
    boot_id: str | None

    @classmethod
    def current(cls) -> "ProcessIdentity":
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity":
        return cls(pid, process_start_ticks(pid), socket.gethostname(), boot_id())

    @classmethod
    def from_record(cls, rec: dict, prefix: str = "") -> "ProcessIdentity | None":
        pid = rec.get(f"{prefix}pid")
        if not pid:
            return None
        return cls(int(pid), rec.get(f"{prefix}pid_start"), rec.get("host", ""), rec.get("boot_id"))

    def record(self, prefix: str = "") -> dict:
        return {
            f"{prefix}pid": self.pid,
            f"{prefix}pid_start": self.start_ticks,
            "host": self.host,
            "boot_id": self.boot_id,
        }

    def is_local(self) -> bool:
        return self.host == socket.gethostname() and self.boot_id == boot_id()

    def alive(self) -> bool | None:
        """True/False on this host and boot; None when it cannot be told from here."""
        if self.host != socket.gethostname():
            return None
        if self.boot_id != boot_id():
            return False  # rebooted since: every process of that boot is gone
        return self.start_ticks is not None and process_start_ticks(self.pid) == self.start_ticks


def describe_exit(code: int) -> str:
    """``-9`` -> "killed by SIGKILL", ``3`` -> "exited with code 3"."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or killed by hand)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        return f"killed by {signal.Signals(code - 128).name}"
    if code == EXIT_NO_SPACE:
        return f"ran out of disk space (no space left on device, exit code {code})"
    return f"exited with code {code}"


# --------------------------------------------------------------------------- #
# Reading a run directory
