"""The local backend: each run a detached subprocess of this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from app.workspace import Workspace
from engine.core.events import SCHEMA_VERSION
from engine.core.procs import ProcessIdentity
from engine.core.rundir import RunDir, atomic_write_json


def job_command(argv: list[str], rd: RunDir) -> list[str]:
    """The engine command line, with this interpreter so the run uses this environment."""
    return [sys.executable, "-m", "engine", *argv, "--run-dir", str(rd.path)]


def launch(ws: Workspace, rd: RunDir, argv: list[str], env_extra: dict[str, str] | None = None,
           slots: str | None = None) -> tuple[subprocess.Popen, dict]:
    """Start a run detached (own session, stdin closed), output to stdout.log.

    Returns the launcher process and the launch record written to launch.json.
    """
    command = [sys.executable, "-m", "app.backends.shim", str(rd.exit_code_file), "--", *job_command(argv, rd)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MOE_TUI_WORKSPACE": str(ws.root), **(env_extra or {})}
    with open(rd.stdout_log, "ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ws.root,
            env=env,
            start_new_session=True,  # survives the daemon, the terminal and SSH hangups
            close_fds=True,
        )
    record = {
        "v": SCHEMA_VERSION,
        "backend": "local",
        "launched_at": time.time(),
        "command": command,
        "slots": slots,
        "env": env_extra or {},
        **ProcessIdentity.of(proc.pid).record("launcher_"),
    }
    atomic_write_json(rd.launch_json, record)
    return proc, record
