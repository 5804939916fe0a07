"""What the TUI reads, shaped for display; called from thread workers only.

Returns plain dataclasses, never ORM objects, so nothing crosses threads
attached to a session.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from sqlmodel import col, select

from app.queries import metric_rows, summaries
from app.store.models import Run
from app.workspace import Workspace

INGEST_EVERY_S = 1.0  # when no daemon runs, the TUI tails run directories itself


@dataclass(frozen=True)
class RunRow:
    pk: int
    run_id: str
    name: str
    kind: str
    status: str
    backend: str
    epoch: int
    total_epochs: int | None
    metric_key: str | None
    metric_best: float | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    error: str | None
    command: str
    config: dict = field(compare=False)

    def duration(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or (now or time.time() if self.status == "running" else None)
        return None if end is None else max(0.0, end - self.started_at)


@dataclass(frozen=True)
class MetricPoint:
    id: int
    epoch: int | None
    key: str
    value: float


class TuiData:
    def __init__(self, ws: Workspace):
        self.ws = ws
        self._last_ingest = 0.0

    def refresh_files(self) -> list[str]:
        """Ingest run directories if no daemon does it; returns new warnings."""
        from app.ingest import Ingester
        from app.queue.daemon import daemon_info

        now = time.monotonic()
        if now - self._last_ingest < INGEST_EVERY_S or daemon_info(self.ws) is not None:
            return []
        self._last_ingest = now
        warnings = Ingester(self.ws).run_pass().warnings
        from app.queue.daemon import ensure_daemon, needs_daemon

        if needs_daemon(self.ws):  # queued work and no daemon (it crashed, or idled out)
            ensure_daemon(self.ws)
        return warnings

    def runs_since(self, rev: int) -> tuple[list[RunRow], int]:
        """Runs changed after ``rev`` and the newest rev seen."""
        with self.ws.store.read() as s:
            runs = s.exec(select(Run).where(Run.rev > rev).order_by(Run.rev)).all()
            summ = summaries(s, [r.id for r in runs])
        rows = []
        for r in runs:
            m = summ.get(r.id, {}).get(r.primary_metric or "")
            rows.append(RunRow(
                pk=r.id, run_id=r.run_id, name=r.name, kind=r.kind, status=r.status, backend=r.backend,
                epoch=r.epoch, total_epochs=r.total_epochs, metric_key=r.primary_metric,
                metric_best=m.best if m else None, created_at=r.created_at, started_at=r.started_at,
                ended_at=r.ended_at, error=r.error, command=r.command, config=json.loads(r.config or "{}"),
            ))
        return rows, max([rev] + [r.rev for r in runs])

    def deleted_since(self, known: set[int]) -> set[int]:
        """Which of the runs the TUI shows no longer exist (after a reindex)."""
        if not known:
            return set()
        with self.ws.store.read() as s:
            present = set(s.exec(select(Run.id).where(col(Run.id).in_(list(known)))).all())
        return known - present

    def metrics_since(self, run_pk: int, after_id: int) -> list[MetricPoint]:
        with self.ws.store.read() as s:
            return [MetricPoint(m.id, m.epoch, m.key, m.value) for m in metric_rows(s, run_pk, after_id)]
