"""SQLModel tables. The database is an index of the run directories.

Everything here can be rebuilt from ``runs/`` with ``moe-tui reindex``; a
schema change is an Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, func
from sqlmodel import Field, Session, SQLModel, select

# Run.status values. queued -> running -> succeeded | failed | cancelled | lost;
# pending: submitted to Slurm and waiting in Slurm's queue (then running);
# blocked: a dependency ended without success (retrying it re-queues the run);
# unreadable: its run.json, status.json (or submit.json, launch.json, exit_code) does not
# read or fit the schema: listed with that cause in Run.error, never guessed at; the
# next ingest after the file changes restores the real status. A plain string
# column: a new value needs no migration.
LAUNCHED = ("pending", "running")  # handed to a backend and not finished: watched, cancelled by signal or scancel
ACTIVE = ("queued", *LAUNCHED)
FINISHED = ("succeeded", "failed", "cancelled", "lost")
HOOK_OWED = ("pending", "started")  # an on-finish command not yet seen to end keeps a daemon up
BLOCKED = "blocked"
UNREADABLE = "unreadable"
HEADLESS = "headless"  # Run.backend of a run started with `engine` by hand, found by ingest: no backend to retry on
STATUSES = (*ACTIVE, *FINISHED, BLOCKED, UNREADABLE)  # every status a run can have


def _run_fk(primary_key: bool = False) -> Column:
    return Column(Integer, ForeignKey("run.id", ondelete="CASCADE"), primary_key=primary_key, nullable=False)


class Run(SQLModel, table=True):
    __tablename__ = "run"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, unique=True)  # the directory name under runs/
    name: str = ""
    kind: str = Field(default="", index=True)
    status: str = Field(default="queued", index=True)
    backend: str = "local"  # local | headless (started by `engine` by hand)
    config: str = "{}"  # JSON of the resolved config
    argv: str = "[]"  # JSON list: the engine arguments
    command: str = ""
    run_dir: str = ""  # relative to the workspace
    git_commit: str | None = None
    git_dirty: bool | None = None
    host: str | None = None
    created_at: float = 0.0  # unix seconds
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    pid: int | None = None  # the job's process
    launcher_pid: int | None = None  # the process the daemon started (it records the exit code)
    epoch: int = 0
    total_epochs: int | None = None
    primary_metric: str | None = None
    tags: str = ""
    notes: str = ""
    priority: int = 0
    pipeline_id: str | None = None
    group_id: str | None = Field(default=None, index=True)  # runs of one --sweep (the compare view averages them)
    gpus: int = 0  # GPUs the run asked for (0: a CPU slot)
    slots: str | None = None  # what the scheduler gave it: "gpu:0,1" or "cpu:3"; Slurm: its state, "PENDING (Priority)"
    cancel_requested_at: float | None = None  # written by clients, acted on by the daemon
    slurm_job_id: str | None = None
    retry_of: str | None = None  # run_id of the run this one retries
    hook: str | None = None  # on-finish command: "pending", "started" (spawned), "done" (it exited)
    # Bumped on every change, so pollers read only `rev > last seen`.
    rev: int = Field(default=0, index=True)


class RunDependency(SQLModel, table=True):
    """``run`` starts only after ``parent`` succeeded."""

    __tablename__ = "run_dependency"
    __table_args__ = (Index("ix_run_dependency_parent", "parent"),)

    run: int = Field(sa_column=_run_fk(primary_key=True))
    parent: int = Field(sa_column=Column(Integer, ForeignKey("run.id", ondelete="CASCADE"), primary_key=True, nullable=False))


class Metric(SQLModel, table=True):
    __tablename__ = "metric"
    __table_args__ = (Index("ix_metric_run_key_epoch", "run", "key", "epoch"),)

    id: int | None = Field(default=None, primary_key=True)
    run: int = Field(sa_column=_run_fk())
    epoch: int | None = None  # None: a run-level summary (final test scores)
    step: int | None = None
    key: str
    value: float
    time: float


class MetricSummary(SQLModel, table=True):
    """Per run and key: what the table, compare and export views need without
    scanning the Metric rows."""

    __tablename__ = "metric_summary"

    run: int = Field(sa_column=_run_fk(primary_key=True))
    key: str = Field(primary_key=True)
    goal: str = "max"  # "max" or "min": which way is better
    count: int = 0
    last: float | None = None
    last_epoch: int | None = None
    min: float | None = None
    max: float | None = None
    best: float | None = None
    best_epoch: int | None = None


class IngestState(SQLModel, table=True):
    """How far the ingester has read each run directory."""

    __tablename__ = "ingest_state"

    run: int = Field(sa_column=_run_fk(primary_key=True))
    events_offset: int = 0  # bytes of events.jsonl consumed (whole lines only)
    events_lines: int = 0  # lines consumed, for error messages
    signature: str = ""  # sizes and mtimes of the run's files at the last pass
    warning: str | None = None  # the last problem found (malformed line, unreadable file)


def next_rev(s: Session) -> int:
    """The next change number; call inside a writer (BEGIN IMMEDIATE) transaction."""
    return s.exec(select(func.coalesce(func.max(Run.rev), 0))).one() + 1
