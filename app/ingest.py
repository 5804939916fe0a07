"""Tail run directories into SQLite: idempotent, offset-tracked, batched.

Exactly-once without coordination: each run is ingested inside a
``BEGIN IMMEDIATE`` transaction that re-reads the stored offset, reads the
file from there, inserts the rows and moves the offset, all or nothing. Any
number of ingesters (the daemon, ``moe-tui ls``, a TUI) may run at once;
the second one to take the write lock simply finds nothing new.

A partial last line (the job is mid-write) is left for the next pass. Every
line and record file is validated against the schema in engine.core.events:
a line that does not fit is reported once (file:line: field: what is wrong)
and skipped, the offset moves past it and the lines after it are indexed; a
run whose run.json, status.json, submit.json, launch.json or exit_code does
not fit is listed with status ``unreadable`` and that cause until a file
changes and reads again.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Iterable

from sqlalchemy import insert
from sqlmodel import Session, select

from app import annotations
from app.annotations import Annotations
from app.lifecycle import (
    CANCEL_FILE,
    SLURM_FILE,
    read_cancel,
    read_slurm,
    settle,
    slurm_slot,
)
from app.store.models import (
    BLOCKED,
    FINISHED,
    HEADLESS,
    LAUNCHED,
    UNREADABLE,
    IngestState,
    Metric,
    MetricSummary,
    Run,
    RunDependency,
    next_rev,
)
from app.workspace import Workspace
from engine.core.config import goal_for
from engine.core.events import RecordError, parse_event_lines
from engine.core.rundir import (
    EVENTS,
    EXIT_CODE,
    LAUNCH,
    RUN_JSON,
    STATUS,
    SUBMIT,
    RunDir,
    is_run_id,
    open_regular,
)

CHUNK_BYTES = 4 << 20  # events read per transaction; bounds how long the write lock is held
WATCHED = (SUBMIT, LAUNCH, RUN_JSON, STATUS, EVENTS, EXIT_CODE, CANCEL_FILE, SLURM_FILE)


@dataclass
class IngestReport:
    runs_updated: int = 0
    metrics_added: int = 0
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: "IngestReport") -> None:
        self.runs_updated += other.runs_updated
        self.metrics_added += other.metrics_added
        self.warnings += other.warnings


def signature(rd: RunDir) -> str:
    """Sizes and mtimes of the files a pass reads: unchanged means nothing to do."""
    parts = []
    base = f"{rd.path}/"  # plain strings: pathlib joins cost more than the stats at 1,000 runs
    for name in WATCHED:
        try:
            st = os.stat(base + name)
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append("-")
    return "|".join(parts)


def _run_names(runs_root) -> list[str]:
    """Run directory names, oldest first (as iter_run_dirs, without a Path per run)."""
    try:
        return sorted(e.name for e in os.scandir(runs_root) if is_run_id(e.name) and e.is_dir())
    except FileNotFoundError:
        return []


def _read_records(rd: RunDir) -> tuple[dict, str | None, list[str]]:
    """The run's record files, each validated against its schema (``engine.core.events``).

    Returns what could be read ({name: dict or None}), the cause that makes the run
    unreadable (the first file that does not fit), and one warning per such file.
    """
    readers = {STATUS: rd.read_status, LAUNCH: rd.read_launch, SUBMIT: rd.read_submit,
               RUN_JSON: rd.read_run, EXIT_CODE: rd.read_exit_code}
    found, bad = {}, []
    for name, read in readers.items():
        try:
            found[name] = read()
        except RecordError as e:
            found[name] = None
            bad.append(str(e))
    # The cause, stored with the run, names the file by its name: the run is known, and a listing's
    # note column then shows what is wrong rather than the workspace's path.
    cause = bad[0].replace(f"{rd.path}{os.sep}", "", 1) if bad else None
    return found, cause, bad


def _metric_rows(run_pk: int, epoch: int | None, ev: dict) -> list[dict]:
    """Metric rows of an epoch or summary event; a null value (NaN, inf: diverged) has no row."""
    return [{"run": run_pk, "epoch": epoch, "step": ev.get("step"), "key": key, "value": value,
             "time": ev.get("t", 0.0)} for key, value in ev.get("metrics", {}).items() if value is not None]


def _dir_time(rd: RunDir) -> float:
    try:
        return rd.path.stat().st_mtime
    except OSError:
        return time.time()


def expert_load_rows(ev: dict, run_pk: int, rows: list[dict], goals: dict) -> str | None:
    """An ``expert_load`` event as Metric rows at its epoch: ``expert_load/<expert>`` (mean routing
    weight) and ``top1_share/<expert>``; beside the epoch's metrics, so the TUI plots it from SQLite.
    Returns what is wrong with an event that gives no rows.

    An event without an epoch (evaluate-gating's load on the test split) gives no rows and no
    warning: it is valid, but the plot is over epochs and storing it at the last one would draw
    it as training; it stays in events.jsonl and the job's results file.
    """
    epoch, experts = ev.get("epoch"), ev.get("experts") or []
    if epoch is None:
        return None
    series = {"expert_load": ev.get("load"), "top1_share": ev.get("top1_share")}
    for prefix, values in series.items():
        if values is not None and len(values) != len(experts):
            return f"expert_load has {len(experts)} experts but {len(values)} {prefix} values"
    for prefix, values in series.items():
        for name, value in zip(experts, values or []):
            if isinstance(value, (int, float)) and value == value:
                key = f"{prefix}/{name}"
                # a share has no better direction; the expert's name (e.g. "mse_expert") must not pick one
                goals.setdefault(key, "max")
                rows.append({"run": run_pk, "epoch": epoch, "step": None, "key": key,
                             "value": float(value), "time": ev.get("t", 0.0)})
    return None


class Ingester:
    def __init__(self, ws: Workspace):
        self.ws = ws
        self.store = ws.store
        self._pending_links: list[tuple[str, str]] = []  # (child, parent) run ids to link at the end of a pass
        self._reported: set[str] = set()  # warnings that no stored offset or signature keeps from repeating

    # -- passes ---------------------------------------------------------------
    def run_pass(self, only: Iterable[str] | None = None, skip_queued: bool = False) -> IngestReport:
        """Ingest every run directory that changed since the last pass.

        ``skip_queued``: the daemon's passes. Only the daemon moves a run out
        of "queued" (and ingests it when it does), so re-reading the files of
        every queued run each pass would only cost time at thousands queued.
        """
        report = IngestReport()
        with self.store.read() as s:
            rows = s.exec(
                select(Run.run_id, Run.status, IngestState.signature).join(
                    IngestState, IngestState.run == Run.id, isouter=True
                )
            ).all()
        known = {r[0]: (r[1], r[2]) for r in rows}
        wanted = set(only) if only is not None else None
        self._pending_links = []
        for name in _run_names(self.ws.runs):
            if wanted is not None and name not in wanted:
                continue
            status, sig = known.get(name, (None, None))
            if (status in FINISHED and status != "lost") or (skip_queued and status == "queued"):
                continue  # a finished run's files do not change
            rd = RunDir(self.ws.runs / name)
            if sig is not None and sig == signature(rd) and not self._process_ended(rd, status):
                continue  # "lost" included: read again only once its directory changes (a job that lived on)
            try:
                report.merge(self.ingest_run(rd))
            except OSError as e:  # a directory that cannot be read at all: that run only, and once
                msg = f"{e.filename or rd.path}: cannot read ({e.strerror or e}); the run is left as it was"
                if msg not in self._reported:  # once, not on every pass of the daemon
                    self._reported.add(msg)
                    report.warnings.append(msg)
        self._link_dependencies()
        return report

    def _link_dependencies(self) -> None:
        """Dependencies of runs rebuilt from submit.json whose parent came later in the pass."""
        if not self._pending_links:
            return
        with self.store.write() as s:
            for child_id, parent_id in self._pending_links:
                child = s.exec(select(Run.id).where(Run.run_id == child_id)).first()
                parent = s.exec(select(Run.id).where(Run.run_id == parent_id)).first()
                if child and parent and s.get(RunDependency, (child, parent)) is None:
                    s.add(RunDependency(run=child, parent=parent))
        self._pending_links = []

    def _process_ended(self, rd: RunDir, status: str | None) -> bool:
        """A running (or Slurm-pending) run whose files did not change may still have lost its process."""
        if status not in LAUNCHED:
            return False
        try:
            return settle(rd, rd.read_status(), rd.read_launch(), rd.read_exit_code(),
                          read_cancel(rd), read_slurm(rd)).status != status
        except RecordError:
            return True  # ingest_run marks it unreadable, with the cause

    # -- one run --------------------------------------------------------------
    def ingest_run(self, rd: RunDir) -> IngestReport:
        report = IngestReport()
        ann, problem = annotations.read(rd)
        if ann is not None and ann.deleted_at is not None:
            return report  # deleted by a person, its removal interrupted: `moe-tui rm` finishes it
        # Read status before events: the job writes its last events before its
        # final status, so a final status seen here means every event is on disk.
        sig = signature(rd)
        files, unreadable, bad = _read_records(rd)
        status, launch, submit, run_json = files[STATUS], files[LAUNCH], files[SUBMIT], files[RUN_JSON]
        exit_code = files[EXIT_CODE]
        while True:
            with self.store.write() as s:
                run = self._run_row(s, rd, submit, run_json, ann, problem, report, force=unreadable is not None)
                if run is None:
                    return report  # a directory still being created
                state = s.get(IngestState, run.id) or IngestState(run=run.id)
                done = self._ingest_events(s, rd, run, state, run_json, report)
                if done:
                    if unreadable is not None:
                        # Listed with the cause, never hidden and never guessed at; reported once
                        # (the signature below), and read again when a file changes.
                        for msg in bad:
                            self._warn(state, report, f"{msg}; the run is listed as {UNREADABLE} until it is fixed")
                        run.status, run.error = UNREADABLE, unreadable
                    else:
                        self._apply_status(rd, run, status, launch, exit_code, state, report)
                    state.signature = sig
                run.rev = next_rev(s)
                s.add(run)
                s.add(state)
            if done:
                report.runs_updated += 1
                return report

    def _run_row(self, s: Session, rd: RunDir, submit: dict | None, run_json: dict | None,
                 ann: Annotations | None = None, ann_problem: str | None = None,
                 report: IngestReport | None = None, force: bool = False) -> Run | None:
        """The run's row, made from submit.json or run.json if new; ``force``: also from neither
        (their files are unreadable: the run is still listed, by its id). A new row takes its
        tags and notes from annotations.json."""
        run = s.exec(select(Run).where(Run.run_id == rd.run_id)).first()
        if run is None:
            source = submit or run_json
            if source is None and not force:
                return None
            source = source or {"created_at": _dir_time(rd)}
            run = Run(
                run_id=rd.run_id,
                name=source.get("name") or "",
                kind=source.get("kind") or "",
                status="queued",
                backend=(submit or {}).get("backend", HEADLESS),
                config=json.dumps(source.get("config") or {}, sort_keys=True),
                argv=json.dumps(source.get("argv") or []),
                command=source.get("command") or "",
                run_dir=self.ws.relative(rd.path),
                created_at=source.get("created_at") or time.time(),
                priority=(submit or {}).get("priority", 0),
                total_epochs=source.get("total_epochs"),
                primary_metric=source.get("primary_metric"),
                pipeline_id=(submit or {}).get("pipeline_id"),
                group_id=(submit or {}).get("group_id"),
                gpus=(submit or {}).get("gpus") or 0,
                retry_of=(submit or {}).get("retry_of"),
                # what a person said about it, kept in the run directory (app/annotations.py)
                tags=",".join(ann.tags) if ann else "",
                notes=ann.notes if ann else "",
            )
            if ann_problem and report is not None:
                report.warnings.append(ann_problem)
            s.add(run)
            s.flush()  # assigns run.id
            for parent_id in (submit or {}).get("after") or []:
                parent = s.exec(select(Run.id).where(Run.run_id == parent_id)).first()
                if parent is not None:
                    s.add(RunDependency(run=run.id, parent=parent))
                else:
                    self._pending_links.append((rd.run_id, parent_id))
        if run_json and run.host is None:
            git = run_json.get("git") or {}
            run.name = run.name or run_json.get("name") or ""
            run.kind = run.kind or run_json.get("kind") or ""
            run.config = json.dumps(run_json.get("config") or {}, sort_keys=True)
            run.command = run_json.get("command") or run.command
            run.git_commit, run.git_dirty = git.get("commit"), git.get("dirty")
            run.host = run_json.get("host")
            run.total_epochs = run_json.get("total_epochs") or run.total_epochs
            run.primary_metric = run_json.get("primary_metric") or run.primary_metric
        return run

    def _ingest_events(self, s: Session, rd: RunDir, run: Run, state: IngestState,
                       run_json: dict | None, report: IngestReport) -> bool:
        """Read the next chunk of events.jsonl; True once the end of the file is reached."""
        try:
            with open_regular(rd.events) as f:
                f.seek(state.events_offset)
                chunk = f.read(CHUNK_BYTES)
                at_end = not f.read(1)
        except FileNotFoundError:
            return True
        except (OSError, RecordError) as e:  # permissions, a FIFO: the run is listed, without its events
            why = e if isinstance(e, RecordError) else f"{rd.events}: cannot read ({e.strerror or e})"
            self._warn(state, report, f"{why}; its events are not indexed until it can be read")
            return True
        lines, used = parse_event_lines(chunk, state.events_lines + 1)
        if used == 0 and not at_end:
            used = len(chunk)  # one line longer than a chunk: not an event we can use
            lines = []
            self._warn(state, report, f"{rd.events}:{state.events_lines + 1}: longer than {CHUNK_BYTES} bytes; line skipped")
        goals = dict((run_json or {}).get("metric_goals") or {})  # expert_load_rows adds its keys' goals
        rows = []
        for ln in lines:
            if ln.event is None:
                self._warn(state, report, f"{rd.events}:{ln.lineno}: {ln.error}; line skipped")
                continue
            # A plain dict, validated against engine.core.events: its fields have the schema's
            # types (ints within SQLite's range, metric values float or None).
            ev = ln.event
            if ev["type"] == "epoch":
                rows += _metric_rows(run.id, ev["epoch"], ev)
                run.epoch = max(run.epoch or 0, ev["epoch"])
            elif ev["type"] == "summary":
                rows += _metric_rows(run.id, None, ev)
            elif ev["type"] == "expert_load":
                warning = expert_load_rows(ev, run.id, rows, goals)
                if warning:
                    self._warn(state, report, f"{rd.events}:{ln.lineno}: {warning}; line skipped")
        if rows:
            s.execute(insert(Metric), rows)
            self._update_summaries(s, run.id, rows, goals)
            report.metrics_added += len(rows)
        state.events_offset += used
        state.events_lines += len(lines)
        # At the end of the file we are done, even if a partial line waits there.
        return at_end

    def _update_summaries(self, s: Session, run_pk: int, rows: list[dict], goals: dict) -> None:
        summaries = {m.key: m for m in s.exec(select(MetricSummary).where(MetricSummary.run == run_pk))}
        for r in rows:
            key, v, epoch = r["key"], r["value"], r["epoch"]
            m = summaries.get(key)
            if m is None:
                m = summaries[key] = MetricSummary(run=run_pk, key=key, goal=goal_for(key, goals))
            m.count += 1
            m.last, m.last_epoch = v, epoch
            m.min = v if m.min is None else min(m.min, v)
            m.max = v if m.max is None else max(m.max, v)
            better = m.best is None or (v > m.best if m.goal == "max" else v < m.best)
            if better:
                m.best, m.best_epoch = v, epoch
            s.add(m)

    def _apply_status(self, rd: RunDir, run: Run, status: dict | None, launch: dict | None,
                      exit_code: int | None, state: IngestState, report: IngestReport) -> None:
        slurm = read_slurm(rd)
        settled = settle(rd, status, launch, exit_code, read_cancel(rd), slurm, last_epoch=run.epoch)
        if run.status in ("queued", BLOCKED) and settled.status == "queued":
            return  # blocked is the daemon's verdict from the parents, not from the files
        if run.status == UNREADABLE:
            run.error = None  # its files read again: the cause is gone with it
        run.status = settled.status
        if status:
            run.pid = status.get("pid") or run.pid
            run.started_at = status.get("started_at") or run.started_at
            run.total_epochs = status.get("total_epochs") or run.total_epochs
            run.epoch = max(run.epoch or 0, status.get("epoch") or 0)
        if launch:
            run.launcher_pid = launch.get("launcher_pid") or run.launcher_pid
            run.slurm_job_id = launch.get("job_id") or run.slurm_job_id
            run.slots = launch.get("slots") or run.slots
            run.started_at = run.started_at or launch.get("launched_at")
        if slurm is not None:  # the Slot of a Slurm run: what Slurm says while it has the job
            slot = slurm_slot(slurm) if settled.status in LAUNCHED else None
            # Started on its node before the daemon's next squeue: no stale "PENDING" beside "running".
            run.slots = None if settled.status == "running" and (slot or "").startswith("PENDING") else slot
        if settled.status in FINISHED:
            run.error, run.exit_code = settled.error, settled.exit_code
            run.ended_at = settled.ended_at or time.time()
            self._check_truncated_tail(rd, state, report)
        elif run.ended_at is not None:  # "lost" whose job wrote again: it lives, the verdict goes
            run.error, run.exit_code, run.ended_at = None, None, None

    def _check_truncated_tail(self, rd: RunDir, state: IngestState, report: IngestReport) -> None:
        """Once nothing will write again, bytes after the last newline are a truncated line."""
        try:
            size = os.path.getsize(rd.events)
        except FileNotFoundError:
            return
        if size > state.events_offset:
            self._warn(state, report, f"{rd.events}:{state.events_lines + 1}: truncated "
                                      f"({size - state.events_offset} bytes, no newline at end of file); line skipped")
            state.events_offset = size
            state.events_lines += 1

    @staticmethod
    def _warn(state: IngestState, report: IngestReport, msg: str) -> None:
        state.warning = msg
        report.warnings.append(msg)
