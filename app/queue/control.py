"""What clients ask of the queue and its runs: cancel, retry, pause, resume, annotate, delete.

Clients only write requests (a row change, a file); the daemon acts on them
(signals, sbatch, scancel), so a TUI or CLI can die at any moment without
leaving a half-done action behind.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections import deque

from sqlmodel import col, select

from app import annotations
from app.errors import UserError
from app.lifecycle import CANCEL_FILE
from app.queries import find_run
from app.queue.deps import parents_of, rewrite_placeholders
from app.queue.settings import load_settings
from app.queue.submit import submit
from app.store.models import ACTIVE, BLOCKED, FINISHED, HEADLESS, LAUNCHED, Run, RunDependency, next_rev
from app.workspace import Workspace
from engine.core.config import job_class, split_trust, trust_options
from engine.core.rundir import atomic_write_json, read_json

PAUSE_FILE = "paused"  # in the workspace's .moe-tui/: no new launches while it exists


def pause(ws: Workspace) -> bool:
    """Stop starting queued runs (running ones carry on); False if already paused."""
    path = ws.state_dir / PAUSE_FILE
    if path.exists():
        return False
    atomic_write_json(path, {"paused_at": time.time()})
    return True


def resume(ws: Workspace) -> bool:
    path = ws.state_dir / PAUSE_FILE
    if not path.exists():
        return False
    path.unlink(missing_ok=True)
    return True


def is_paused(ws: Workspace) -> bool:
    return (ws.state_dir / PAUSE_FILE).exists()


def cancel(ws: Workspace, ref: str) -> Run:
    """Cancel a run: at once if it never started, else the daemon stops its processes.

    The request is written to ``cancel.json`` too, so it survives the loss of
    the database and a daemon restart.
    """
    grace = load_settings(ws.root).queue.cancel_grace_s
    with ws.store.write() as s:
        run = find_run(s, ref)
        if run.status in FINISHED:
            raise UserError(f"run {run.run_id} already {run.status}; nothing to cancel")
        rd = ws.run_dir(run.run_id)
        now = time.time()
        atomic_write_json(rd.path / CANCEL_FILE, {"requested_at": now, "grace_s": grace})
        if run.status in ("queued", BLOCKED) and not rd.launch_json.exists():
            run.status, run.error, run.ended_at = "cancelled", "cancelled on request before it started", now
        else:
            run.cancel_requested_at = now
        run.rev = next_rev(s)
        s.add(run)
    return run


def retry(ws: Workspace, ref: str, resume_from_last: bool = False, slurm: list[str] | tuple[str, ...] = (),
          trust: list[str] | tuple[str, ...] = ()) -> Run:
    """A new run from the same arguments; blocked or queued dependents now wait for it.

    With ``resume_from_last`` the new run continues from the old run's
    ``checkpoints/last.pth`` (jobs whose config has a ``resume`` setting; the
    engine checks that the settings still describe the same model and data).
    A Slurm run keeps its own ``--slurm`` settings (partition, time, account...);
    ``slurm`` items change them, e.g. ``time=4:00:00`` after a TIMEOUT.
    ``trust``: the trust options (``--trust-pickle``) the person typed for this retry; the old
    run's are not carried over, so a retry asks for them again.
    """
    with ws.store.read() as s:
        old = find_run(s, ref)
        parent_ids = [p.run_id for p in parents_of(s, [old.id])[old.id]]
    if old.status not in FINISHED:
        raise UserError(f"run {old.run_id} is {old.status}; only a finished run can be retried"
                        + (" (cancel it first)" if old.status in LAUNCHED else ""))
    argv, had = split_trust(json.loads(old.argv))
    rest, typed = split_trust([old.kind, *trust])
    if rest[1:]:
        known = ", ".join(trust_options(job_class(old.kind)).values()) or "none"
        raise UserError(f"moe-tui retry has no option {shlex.join(rest[1:])}; see `moe-tui retry --help` "
                        f"(it also takes {old.kind}'s trust options: {known})")
    if had and not typed:
        raise UserError(f"run {old.run_id} was given {shlex.join(had)}; a retry does not carry trust over: "
                        f"type it again, moe-tui retry {old.run_id} {shlex.join(had)}")
    argv += typed
    if resume_from_last:
        if "resume" not in job_class(old.kind).model_fields:
            raise UserError(f"{old.kind} jobs cannot resume (no resume setting); retry without --resume")
        last = ws.run_dir(old.run_id).checkpoints / "last.pth"
        if not last.exists():
            raise UserError(f"{last} does not exist (the run saved no checkpoint); retry without --resume")
        argv = [*argv, "--resume", str(last)]
    old_slurm = (read_json(ws.run_dir(old.run_id).submit_json) or {}).get("slurm") or {}
    # A headless run was started by hand with `engine`: no backend ran it, and the GPUs it used were
    # never asked for, so its retry is an ordinary local run with the local default of GPUs.
    headless = old.backend == HEADLESS
    new = submit(ws, argv, name=old.name, backend="local" if headless else old.backend, priority=old.priority,
                 gpus=None if headless else old.gpus,
                 after=parent_ids, group_id=old.group_id, pipeline_id=old.pipeline_id, retry_of=old.run_id,
                 slurm=slurm, slurm_base=old_slurm)
    _repoint_dependents(ws, old, new)
    return new


def _repoint_dependents(ws: Workspace, old: Run, new: Run) -> None:
    """Children of ``old`` that have not run now depend on ``new``; blocked descendants are queued again."""
    with ws.store.write() as s:
        children = s.exec(select(Run).join(RunDependency, RunDependency.run == Run.id)
                          .where(RunDependency.parent == old.id, col(Run.status).in_(("queued", BLOCKED)))).all()
        for child in children:
            dep = s.get(RunDependency, (child.id, old.id))
            s.delete(dep)
            s.flush()
            if s.get(RunDependency, (child.id, new.id)) is None:
                s.add(RunDependency(run=child.id, parent=new.id))
            argv = rewrite_placeholders(json.loads(child.argv), {old.run_id: new.run_id})
            child.argv = json.dumps(argv)
            _rewrite_submit(ws, child.run_id, old.run_id, new.run_id, argv)
        # Release the blocked subtree; the daemon blocks again whatever still has a bad parent.
        todo = deque(c.id for c in children)
        seen: set[int] = set()
        while todo:
            pk = todo.popleft()
            if pk in seen:
                continue
            seen.add(pk)
            run = s.get(Run, pk)
            if run.status == BLOCKED:
                run.status, run.error = "queued", None
            run.rev = next_rev(s)
            s.add(run)
            todo.extend(s.exec(select(RunDependency.run).join(Run, Run.id == RunDependency.run)
                               .where(RunDependency.parent == pk, Run.status == BLOCKED)).all())


def _rewrite_submit(ws: Workspace, run_id: str, old_id: str, new_id: str, argv: list[str]) -> None:
    """Keep submit.json true, so a rebuilt database has the new dependency too."""
    rd = ws.writable_run_dir(run_id)
    rec = read_json(rd.submit_json)
    if rec is None:
        return
    rec["after"] = sorted({new_id if a == old_id else a for a in rec.get("after") or []})
    rec["argv"] = argv
    rec["command"] = shlex.join(["engine", *argv])
    atomic_write_json(rd.submit_json, rec)


def set_priority(ws: Workspace, ref: str, priority: int) -> Run:
    """Change a waiting run's priority (higher starts first); recorded in submit.json too,
    so a rebuilt database keeps the order."""
    with ws.store.write() as s:
        run = find_run(s, ref)
        if run.status not in ("queued", BLOCKED):
            raise UserError(f"run {run.run_id} is {run.status}; only a queued or blocked run's priority can change")
        rd = ws.writable_run_dir(run.run_id)
        rec = read_json(rd.submit_json)
        if rec is not None:
            rec["priority"] = priority
            atomic_write_json(rd.submit_json, rec)
        run.priority = priority
        run.rev = next_rev(s)
        s.add(run)
    return run


def annotate(ws: Workspace, ref: str, tags: list[str] | tuple[str, ...] | None = None,
             notes: str | None = None) -> Run:
    """Set a run's tags and/or notes: in its annotations.json (what reindex restores), then the row."""
    fields = {k: v for k, v in (("tags", list(tags) if tags is not None else None),
                                ("notes", notes.strip() if notes is not None else None)) if v is not None}
    with ws.store.write() as s:
        run = find_run(s, ref)
        rd = ws.run_dir(run.run_id)
        if rd.path.exists():
            ann = annotations.update(ws.writable_run_dir(run.run_id), **fields)
        else:  # its directory is gone (a reindex will drop the row too): the row is all there is
            ann = annotations.Annotations(tags=list(fields.get("tags", run.tags.split(","))),
                                          notes=fields.get("notes", run.notes))
        run.tags, run.notes = ",".join(ann.tags), ann.notes
        run.rev = next_rev(s)
        s.add(run)
    return run


def delete(ws: Workspace, ref: str) -> str:
    """Remove a finished run: its directory and its row (metrics go with it); its id.

    The deletion mark goes into annotations.json first and the directory is
    renamed out of the run-id namespace before it is removed, so a crash at
    any step leaves either a run that reindex skips or a dead ``.deleted-*``
    folder, never a half-deleted run that comes back.
    """
    with ws.store.read() as s:
        run = find_run(s, ref)
    if run.status in ACTIVE:
        raise UserError(f"{run.run_id} is {run.status}; only finished runs can be deleted (cancel it first)")
    rd = ws.writable_run_dir(run.run_id)  # moe-tui deletes only run directories it made
    if rd.path.is_dir():
        annotations.mark_deleted(rd)
        trash = rd.path.with_name(f".deleted-{run.run_id}")
        os.replace(rd.path, trash)
    else:
        trash = None
    with ws.store.write() as s:
        row = s.get(Run, run.id)
        if row is not None:
            s.delete(row)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return run.run_id
