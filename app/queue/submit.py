"""Put a run on the queue: validate, write submit.json, add the Run row."""

from __future__ import annotations

import json
import shlex
import time

from app.errors import UserError
from app.store.models import Run, next_rev
from app.workspace import Workspace
from engine.config import ConfigError, parse_argv
from engine.run import SCHEMA_VERSION, RunDir, atomic_write_json

BACKENDS = ("local",)


def submit(ws: Workspace, argv: list[str], name: str | None = None, backend: str = "local", priority: int = 0) -> Run:
    """Queue ``engine <argv>``; the same parser the job will use validates it now."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    try:
        spec = parse_argv(argv)
    except ConfigError as e:
        raise UserError(str(e)) from None
    if spec.run_dir or spec.workspace:
        raise UserError("leave out --run-dir and --workspace: moe-tui places queued runs in the workspace's runs/")

    rd = RunDir.create(ws.runs)
    now = time.time()
    record = {
        "v": SCHEMA_VERSION,
        "run_id": rd.run_id,
        "name": name or spec.name or spec.config.run_name(),
        "kind": spec.kind,
        "argv": spec.argv,
        "command": shlex.join(["engine", *spec.argv]),
        "config": spec.config.model_dump(mode="json"),
        "backend": backend,
        "priority": priority,
        "created_at": now,
        "total_epochs": spec.config.total_epochs(),
        "primary_metric": spec.config.primary_metric,
    }
    # The file first: if the database is lost, reindex finds the queued run here.
    atomic_write_json(rd.submit_json, record)
    with ws.store.write() as s:
        run = Run(
            run_id=rd.run_id,
            name=record["name"],
            kind=spec.kind,
            status="queued",
            backend=backend,
            config=json.dumps(record["config"], sort_keys=True),
            argv=json.dumps(spec.argv),
            command=record["command"],
            run_dir=ws.relative(rd.path),
            created_at=now,
            priority=priority,
            total_epochs=record["total_epochs"],
            primary_metric=record["primary_metric"],
            rev=next_rev(s),
        )
        s.add(run)
    return run
