"""A run's status, derived from its directory and whether its processes live.

One pure function, shared by the ingester and the daemon, so a run reads the
same however it was started and whoever looks at it (a restarted daemon, a
TUI with no daemon, ``moe-tui reindex`` after the database was lost).

Its inputs are the run's record files as ``RunDir``'s readers return them,
validated against engine.core.events: a state here is one the schema knows.
A run whose files do not validate never reaches this function; the ingester
lists it ``unreadable`` with the cause instead of guessing.

Order of evidence:
1. the job's own final status.json (succeeded / failed / cancelled);
2. a launch record the daemon marked failed (it could not start the job:
   sbatch refused it, no executable): failed, with that cause;
3. a live job or launcher process: running;
4. the launcher's exit_code file: the job died without a final status
   (SIGKILL, out of memory), and the code says how;
5. a job that said "running" and is gone: failed, cause unknown but stated;
6. a launch record with no process and no exit code: lost;
7. only a submission: queued.

A Slurm job that has not started reads ``pending`` (``slurm.json``'s live
state, which the daemon keeps up to date), then ``running``.

A cancel request (``cancel.json``, written by ``moe-tui cancel``) turns every
"ended without a final status" and "never started" verdict into
``cancelled``: the process was stopped on purpose. A Slurm verdict
(``slurm.json``: TIMEOUT, NODE_FAIL, PREEMPTED, ...) names the cause when
Slurm, not the job, ended it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.events import TERMINAL_STATES, RecordError
from engine.core.procs import ProcessIdentity, boot_id, describe_exit
from engine.core.rundir import RunDir, read_json

CANCEL_FILE = "cancel.json"  # the manager's: a cancel request (requested_at, grace_s)
SLURM_FILE = "slurm.json"  # the manager's: the Slurm job id and, once known, its final state

# Slurm job states that mean Slurm (not the job) ended it, and what to tell a person.
SLURM_CAUSES = {
    "TIMEOUT": "Slurm stopped it at its time limit; raise --slurm time=... or [slurm] time in moe-tui.toml",
    "NODE_FAIL": "its node failed; retry it",
    "PREEMPTED": "Slurm preempted it for a higher-priority job; retry it (--resume continues from last.pth)",
    "BOOT_FAIL": "its node failed to boot; retry it",
    "DEADLINE": "it passed its Slurm deadline",
    "OUT_OF_MEMORY": "it ran out of memory; raise [slurm] mem",
}


def read_cancel(rd: RunDir) -> dict | None:
    try:
        return read_json(rd.path / CANCEL_FILE)
    except ValueError:
        return {"requested_at": None}


def read_slurm(rd: RunDir) -> dict | None:
    try:
        return read_json(rd.path / SLURM_FILE)
    except ValueError:
        return None


def slurm_slot(slurm: dict | None) -> str | None:
    """Slurm's live view of a job not yet ended, for the Slot column: ``PENDING (Priority)``, ``RUNNING``."""
    if not slurm or slurm.get("final_state") or not slurm.get("state"):
        return None
    reason = slurm.get("reason")
    return f"{slurm['state']} ({reason})" if reason and reason != "None" else slurm["state"]


@dataclass
class Settled:
    status: str
    error: str | None = None
    exit_code: int | None = None
    ended_at: float | None = None


def settle(rd: RunDir, status: dict | None, launch: dict | None, exit_code: int | None,
           cancel: dict | None = None, slurm: dict | None = None, last_epoch: int | None = None,
           reread: bool = True) -> Settled:
    """``last_epoch``: the newest epoch found in events.jsonl. The job appends the
    event before it rewrites status.json, so a kill between the two leaves the
    status one epoch behind; the events are the better witness.

    ``reread``: the caller read the files before the processes were checked; a job or
    launcher found gone may have written its last word (final status, exit code) in
    between, so they are read once more before it is judged."""
    epoch = max((status or {}).get("epoch") or 0, last_epoch or 0)
    slurm_state = (slurm or {}).get("final_state")
    if slurm_state in SLURM_CAUSES:
        # The job may have written "cancelled" on Slurm's SIGTERM; the cause is Slurm's.
        limit = f" ({slurm['time_limit']})" if slurm.get("time_limit") and slurm_state == "TIMEOUT" else ""
        where = f" at epoch {epoch}" if epoch else ""
        return Settled("failed", f"Slurm job {slurm.get('job_id')} ended {slurm_state}{limit}{where}: {SLURM_CAUSES[slurm_state]}",
                       (status or {}).get("exit_code", exit_code), (status or {}).get("ended_at") or slurm.get("ended_at"))
    if slurm_state == "CANCELLED" and cancel is None and (status or {}).get("state") in (None, "cancelled"):
        # scancel from outside moe-tui: cancelled, not failed, and said so (the job only saw a SIGTERM).
        when = f" at epoch {epoch}" if status and epoch else "" if status else " before it started"
        return Settled("cancelled", f"Slurm job {slurm.get('job_id')} was cancelled outside moe-tui (scancel){when}",
                       (status or {}).get("exit_code", exit_code), (status or {}).get("ended_at") or slurm.get("ended_at"))
    if status and status.get("state") == "cancelled" and slurm is not None and not slurm_state:
        # Slurm's SIGTERM (time limit, preemption) looks like a cancel to the job;
        # the run stays running until the daemon has heard from Slurm why.
        return Settled("running")
    if status and status.get("state") in TERMINAL_STATES:
        return Settled(status["state"], status.get("error"), status.get("exit_code"), status.get("ended_at"))
    if not status and (launch or {}).get("state") == "failed":
        # The daemon could not start it (sbatch refused it, no such executable): its verdict, kept with the run.
        return Settled("failed", launch.get("error"), None, launch.get("failed_at"))

    job = ProcessIdentity.from_record(status) if status else None
    launcher = ProcessIdentity.from_record(launch, "launcher_") if launch else None
    liveness = [p.alive() for p in (job, launcher) if p is not None]
    # None: the process is on another host; only its backend can say it is gone.
    # Slurm's final state is that word: it ends a job only once its processes are gone.
    if slurm_state:
        liveness = [False if a is None else a for a in liveness]
    if any(a is True or a is None for a in liveness):
        return Settled("running" if (status or launch) else "queued")
    if reread and liveness:
        try:
            fresh = rd.read_status() or status, exit_code if exit_code is not None else rd.read_exit_code()
        except RecordError:  # written wrong meanwhile: judged on what was read; the next ingest says why
            fresh = status, exit_code
        if fresh != (status, exit_code):
            return settle(rd, fresh[0], launch, fresh[1], cancel, slurm, last_epoch, reread=False)

    if slurm and not slurm_state and (status or launch) and not any(a is False for a in liveness):
        # Slurm has not said it ended: still in its queue (the daemon's last look, in
        # slurm.json), or running on another node.
        return Settled("pending" if not status and slurm.get("state") == "PENDING" else "running")

    if cancel is not None:
        how = f" ({describe_exit(exit_code)})" if exit_code not in (None, 0) else ""
        # A Slurm job with no status of its own was taken out of Slurm's queue, never started.
        started = "" if status else " while it waited in Slurm's queue" if slurm else "" if launch else " before it started"
        return Settled("cancelled", f"cancelled on request{started}{how}", exit_code,
                       (status or {}).get("updated_at") or cancel.get("requested_at"))
    if slurm_state and slurm_state != "COMPLETED" and not status:
        return Settled("failed", f"Slurm job {slurm.get('job_id')} ended {slurm_state} before the job started; "
                                 f"log: {rd.stdout_log}", exit_code, slurm.get("ended_at"))

    where = ""
    if epoch:
        total = (status or {}).get("total_epochs")
        where = f" after epoch {epoch}" + (f"/{total}" if total else "")
    ended = (status or {}).get("updated_at") or (launch or {}).get("launched_at")

    if exit_code is not None:
        cause = describe_exit(exit_code)
        if status:
            return Settled("failed", f"{cause}{where} before writing a final status; log: {rd.stdout_log}", exit_code, ended)
        last = rd.last_log_line()
        detail = f": {last}" if last else f"; log: {rd.stdout_log}"
        return Settled("failed", f"{cause} before the job started{detail}", exit_code, ended)

    if status:
        rebooted = job is not None and job.boot_id is not None and job.boot_id != boot_id()
        why = "the machine rebooted" if rebooted else "killed (SIGKILL or out of memory) or its launcher died"
        return Settled("failed", f"process {job.pid if job else '?'} ended{where} without a final status: {why}; log: {rd.stdout_log}", None, ended)

    if launch:
        return Settled("lost", "the launcher ended without starting the job or recording an exit code", None, ended)

    return Settled("queued")
