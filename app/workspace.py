"""The workspace: a directory holding experiments.db, runs/ and the daemon's files.

Chosen by ``--workspace``, else ``$MOE_TUI_WORKSPACE``, else the current
directory (the same rule the ``engine`` CLI uses, so both find the same runs).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from app.errors import UserError
from engine.core.errors import JobError
from engine.core.rundir import RUNS_DIRNAME, RunDir, resolve_workspace

DB_NAME = "experiments.db"
STATE_DIRNAME = ".moe-tui"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, explicit: str | os.PathLike | None = None) -> "Workspace":
        """Resolve the workspace and make sure it can be written, or say why not."""
        ws = cls(resolve_workspace(explicit))
        try:
            ws.runs.mkdir(parents=True, exist_ok=True)
            ws.state_dir.mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=ws.state_dir, prefix=".probe-"):
                pass
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise UserError(
                f"workspace {ws.root} is not writable ({reason}); "
                "pass --workspace DIR or set MOE_TUI_WORKSPACE to a directory you can write"
            ) from None
        return ws

    runs = property(lambda self: self.root / RUNS_DIRNAME)
    db_path = property(lambda self: self.root / DB_NAME)
    state_dir = property(lambda self: self.root / STATE_DIRNAME)
    daemon_lock = property(lambda self: self.state_dir / "daemon.lock")
    daemon_pid = property(lambda self: self.state_dir / "daemon.pid")
    daemon_log = property(lambda self: self.state_dir / "daemon.log")
    migrate_lock = property(lambda self: self.state_dir / "migrate.lock")

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.runs / run_id)

    def writable_run_dir(self, run_id: str) -> RunDir:
        """The run's directory, to write into: a UserError if a write would leave it
        (a link in it or in its place; ``RunDir.check_writable``)."""
        rd = self.run_dir(run_id)
        try:
            rd.check_writable(self.runs)
        except JobError as e:
            raise UserError(str(e)) from None
        return rd

    def relative(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    @cached_property
    def store(self):
        """The workspace's database, migrated to the current schema on first use."""
        from app.store import Store

        return Store(self.db_path, self.migrate_lock)
