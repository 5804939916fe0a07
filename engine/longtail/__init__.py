"""Long-tail image classification: data, models, losses and the expert jobs.

Kept import-free so that ``engine.longtail.config`` (imported by the manager) loads no torch."""
