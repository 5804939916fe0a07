"""Read-side queries shared by the CLI, the TUI and export."""

from __future__ import annotations

import time
from collections import defaultdict

from sqlmodel import Session, col, select

from app.errors import UserError
from app.names import UnknownName, resolve
from app.store.models import Metric, MetricSummary, Run


def find_run(s: Session, ref: str) -> Run:
    """A run by id, unique id prefix, or unique name."""
    run = s.exec(select(Run).where(Run.run_id == ref)).first()
    if run:
        return run
    matches = s.exec(select(Run).where(col(Run.run_id).startswith(ref)).limit(6)).all() if ref else []
    if not matches:
        matches = s.exec(select(Run).where(Run.name == ref).limit(6)).all()
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no run '{ref}' in this workspace; `moe-tui ls` lists the runs")
    ids = ", ".join(m.run_id for m in matches[:5])
    raise UserError(f"'{ref}' matches several runs ({ids}); give more of the id")


def check_run_filter(status: str | None, kind: str | None) -> tuple[str | None, str | None]:
    """The status and kind that --status and --kind name, by the TUI filter's rule (app.names):
    a name or any unambiguous beginning of one. A misspelt one would list nothing and look
    like an empty workspace: refuse it."""
    try:
        return (None if status is None else resolve("status", status, f"--status '{status}'"),
                None if kind is None else resolve("kind", kind, f"--kind '{kind}'"))
    except UnknownName as e:
        raise UserError(str(e)) from None


def list_runs(s: Session, status: str | None = None, kind: str | None = None, limit: int | None = None) -> list[Run]:
    status, kind = check_run_filter(status, kind)
    q = select(Run)
    if status:
        q = q.where(Run.status == status)
    if kind:
        q = q.where(Run.kind == kind)
    q = q.order_by(col(Run.id).desc())
    if limit:
        q = q.limit(limit)
    return list(reversed(s.exec(q).all()))


def slot_label(status: str, slurm_job_id: str | None, slots: str | None, gpus: int) -> str:
    """Where a run runs (or ran): ``gpu:0,1``, ``cpu:3``, ``slurm:123`` and, while Slurm holds
    the job, Slurm's state (``slurm:123 PENDING (Priority)``); for a waiting run what it asks for."""
    if slurm_job_id:
        return f"slurm:{slurm_job_id}" + (f" {slots}" if slots else "")
    if slots:
        return slots
    if status in ("queued", "blocked"):
        return f"{gpus} GPU" if gpus else "cpu"
    return ""


def summaries(s: Session, run_pks: list[int]) -> dict[int, dict[str, MetricSummary]]:
    out: dict[int, dict[str, MetricSummary]] = defaultdict(dict)
    for i in range(0, len(run_pks), 500):  # stay under SQLite's bound-parameter limit
        for m in s.exec(select(MetricSummary).where(col(MetricSummary.run).in_(run_pks[i : i + 500]))):
            out[m.run][m.key] = m
    return out


def metric_rows(s: Session, run_pk: int, after_id: int = 0, keys: list[str] | None = None) -> list[Metric]:
    """Metric rows of a run newer than ``after_id`` (pollers pass the last id they saw)."""
    q = select(Metric).where(Metric.run == run_pk, Metric.id > after_id)
    if keys:
        q = q.where(col(Metric.key).in_(keys))
    return list(s.exec(q.order_by(Metric.id)).all())


def duration_s(run: Run, now: float | None = None) -> float | None:
    if run.started_at is None:
        return None
    end = run.ended_at if run.ended_at is not None else (now or time.time()) if run.status == "running" else None
    return None if end is None else max(0.0, end - run.started_at)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
