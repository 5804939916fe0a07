"""The SQLite store: tables (models), connections and migrations (db)."""

from app.store.db import Store
from app.store.models import ACTIVE, FINISHED, IngestState, Metric, MetricSummary, Run

__all__ = ["Store", "Run", "Metric", "MetricSummary", "IngestState", "ACTIVE", "FINISHED"]
