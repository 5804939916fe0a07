"""The Slurm backend: sbatch scripts in the run directory, state from squeue/sacct.

The daemon (on the login node) writes ``job.sbatch`` into the run directory
and submits it; the compute node runs the same launcher as the local
backend, so the job writes only its run directory (shared filesystem) and the
exit code lands in ``exit_code``. SQLite never leaves the daemon's node.

Nothing reaches a shell unquoted: sbatch and scancel are run from argument
lists, the script's command line is ``shlex.quote``d word by word, and
``#SBATCH`` values (which sbatch itself splits on whitespace) are refused if
they hold whitespace or control characters.

The daemon learns a job's end from ``squeue -t all`` (finished jobs stay
there for MinJobAge), else ``sacct``; it writes the verdict to
``slurm.json``, which app.lifecycle reads: TIMEOUT, NODE_FAIL, PREEMPTED and
the like end the run with that cause even if the job managed to write
"cancelled" on Slurm's SIGTERM.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import sys
import time

from app.errors import UserError
from app.lifecycle import SLURM_FILE
from app.queue.settings import SlurmSettings
from app.store.models import BLOCKED, FINISHED, LAUNCHED, Run, next_rev
from app.workspace import Workspace
from engine.core.events import SCHEMA_VERSION
from engine.core.rundir import RunDir, atomic_write, atomic_write_json, read_json

log = logging.getLogger("moe-tui.slurm")

SCRIPT = "job.sbatch"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"}
_SAFE_VALUE = re.compile(r"^[^\s\x00-\x1f]+$")
RECHECK_FINISHED_S = 600  # ask Slurm about runs that ended this recently without a Slurm verdict
ENDED = ("succeeded", "cancelled", "failed")


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a Slurm client command; subprocess.TimeoutExpired when it does not answer in ``timeout`` s."""
    exe = shutil.which(argv[0])
    if exe is None:
        raise UserError(f"{argv[0]} not found on PATH: the Slurm backend needs Slurm's client commands on this machine")
    return subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _directive(flag: str, value: object) -> str:
    text = str(value)
    if not _SAFE_VALUE.match(text):
        raise UserError(f"Slurm setting {flag}={text!r} holds whitespace or control characters; sbatch cannot take it")
    return f"#SBATCH {flag}={text}"


def sbatch_script(run_id: str, rd: RunDir, ws: Workspace, argv: list[str], gpus: int, cfg: SlurmSettings) -> str:
    """The batch script: resources as #SBATCH lines, the launcher command fully quoted."""
    lines = ["#!/bin/bash", _directive("--job-name", f"moe-{run_id}")]
    if cfg.partition:
        lines.append(_directive("--partition", cfg.partition))
    lines.append(_directive("--time", cfg.time))
    lines.append(_directive("--cpus-per-task", cfg.cpus_per_task))
    if cfg.mem:
        lines.append(_directive("--mem", cfg.mem))
    if gpus:
        lines.append(_directive("--gres", f"{cfg.gres_gpu}:{gpus}"))
    for flag in cfg.extra:
        if not _SAFE_VALUE.match(flag) or not flag.startswith("-"):
            raise UserError(f"Slurm extra flag {flag!r} must be one option like --account=x, without spaces")
        lines.append(f"#SBATCH {flag}")
    q = shlex.quote
    command = [sys.executable, "-m", "app.backends.shim", str(rd.exit_code_file), "--",
               sys.executable, "-m", "engine", *argv, "--run-dir", str(rd.path)]
    lines += [
        f"# Written by moe-tui for run {run_id}. Every word below is shell-quoted.",
        "export PYTHONUNBUFFERED=1 CUDA_DEVICE_ORDER=PCI_BUS_ID",
        f"export MOE_TUI_RUN_ID={q(run_id)} MOE_TUI_WORKSPACE={q(str(ws.root))}",
        f"cd {q(str(ws.root))} || exit 1",
        "exec " + " ".join(q(c) for c in command),
        "",
    ]
    return "\n".join(lines)


def rejection(run_id: str, out: subprocess.CompletedProcess, script) -> str:
    """sbatch's refusal as one line: its reasons first (``ls`` shows the first 60 characters), then what to do."""
    lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
    reasons = "; ".join(dict.fromkeys(re.sub(r"^sbatch: error:\s*", "", ln) for ln in lines))
    return (f"sbatch rejected the job: {reasons or f'exit code {out.returncode}'}; fix the Slurm setting "
            f"(`moe-tui retry {run_id} --slurm KEY=VALUE`, or [slurm] in moe-tui.toml); script: {script}")


class SlurmBackend:
    def __init__(self, ws: Workspace, settings: SlurmSettings | None = None):
        self.ws = ws
        self.settings = settings or SlurmSettings()
        self._last_poll = 0.0

    # -- submit ----------------------------------------------------------------
    def submit(self, run: Run, argv: list[str], parent_jobs: list[str]) -> str:
        """Write the script and sbatch it; the job id. UserError with sbatch's message if it refuses."""
        rd = self.ws.run_dir(run.run_id)
        overrides = (read_json(rd.submit_json) or {}).get("slurm") or {}
        cfg = self.settings.model_copy(update=overrides)
        script = rd.path / SCRIPT
        atomic_write(script, sbatch_script(run.run_id, rd, self.ws, argv, run.gpus, cfg).encode())
        cmd = ["sbatch", "--parsable", f"--output={rd.stdout_log}", f"--chdir={self.ws.root}"]
        if parent_jobs:
            cmd.append("--dependency=afterok:" + ":".join(parent_jobs))
        cmd.append(str(script))
        try:
            out = _run(cmd, cfg.command_timeout_s)
        except subprocess.TimeoutExpired:
            # sbatch may have queued the job and only its answer be late: the job name tells
            job_id = self.job_named(f"moe-{run.run_id}")
            if job_id is None:
                raise UserError(
                    f"sbatch did not answer within {cfg.command_timeout_s:g} s and squeue lists no job "
                    f"moe-{run.run_id}: the Slurm controller is down or overloaded; `moe-tui retry {run.run_id}` "
                    f"once `sinfo` answers (raise [slurm] command_timeout_s in moe-tui.toml for a slow one)") from None
            log.warning("run %s: sbatch answered late; found its job %s by name", run.run_id, job_id)
        else:
            if out.returncode != 0:
                raise UserError(rejection(run.run_id, out, script))
            job_id = out.stdout.strip().split(";")[0]
        now = time.time()
        atomic_write_json(rd.launch_json, {"v": SCHEMA_VERSION, "backend": "slurm", "job_id": job_id,
                                           "launched_at": now, "command": cmd, "script": str(script)})
        atomic_write_json(rd.path / SLURM_FILE, {"job_id": job_id, "submitted_at": now, "state": "PENDING",
                                                 "final_state": None, "time_limit": cfg.time})
        return job_id

    def job_named(self, name: str) -> str | None:
        """The id of this user's job called ``name`` in Slurm's queue; None if there is none or squeue does not answer."""
        try:
            out = _run(["squeue", "-h", "--me", "-n", name, "-o", "%i"], self.settings.command_timeout_s)
        except subprocess.TimeoutExpired:
            return None
        ids = out.stdout.split() if out.returncode == 0 else []
        return ids[-1] if ids else None

    def cancel(self, job_id: str) -> bool:
        """scancel the job; False when scancel failed or did not answer (the caller asks again later)."""
        try:
            out = _run(["scancel", job_id], self.settings.command_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("scancel %s did not answer within %gs; trying again", job_id, self.settings.command_timeout_s)
            return False
        if out.returncode != 0:
            log.warning("scancel %s: %s", job_id, out.stderr.strip())
            return False
        return True

    # -- state -----------------------------------------------------------------
    def query(self, job_ids: list[str]) -> dict[str, dict] | None:
        """job id -> {state, reason, time_limit} from squeue (finished jobs too), else sacct.

        None when squeue did not answer (controller down or slow): then a job
        missing from the answer says nothing. squeue fails the same way for a
        single job id it has forgotten ("Invalid job id"), which is an answer.
        """
        found: dict[str, dict] = {}
        if not job_ids:
            return found
        try:
            out = _run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r|%l"],
                       self.settings.command_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("squeue did not answer within %gs; asking again next poll", self.settings.command_timeout_s)
            return None
        if out.returncode != 0 and "invalid job id" not in out.stderr.lower():
            log.warning("squeue failed: %s; asking again next poll", " ".join(out.stderr.split()))
            return None
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4 and parts[0] in job_ids:
                found[parts[0]] = {"state": parts[1], "reason": parts[2], "time_limit": parts[3]}
        missing = [j for j in job_ids if j not in found]
        if missing and shutil.which("sacct"):
            try:
                out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobIDRaw,State,Reason,Timelimit"],
                           self.settings.command_timeout_s)
            except subprocess.TimeoutExpired:
                return found  # squeue's answer stands; sacct is asked again next poll
            if out.returncode == 0:  # fails where accounting is off: squeue's answer stands
                for line in out.stdout.splitlines():
                    parts = line.strip().split("|")
                    if len(parts) == 4 and parts[0] in missing:
                        found[parts[0]] = {"state": parts[1].split()[0], "reason": parts[2], "time_limit": parts[3]}
        return found

    def poll(self, force: bool = False) -> list[str]:
        """Record each job's state in slurm.json; unhook jobs whose dependency can never be met.

        A live state (PENDING and its reason, RUNNING) goes in when it
        changes, so the run reads ``pending`` while it waits in Slurm's
        queue, and says why; a final state is Slurm's verdict. Returns the
        run ids whose slurm.json changed (the caller re-ingests them). Runs
        that already ended are asked about once more: a job that caught
        Slurm's SIGTERM at its time limit wrote "cancelled" before Slurm said
        TIMEOUT, and the cause must win; a succeeded one gets COMPLETED, so
        slurm.json does not keep its last live state.
        """
        if not force and time.monotonic() - self._last_poll < self.settings.poll_s:
            return []
        self._last_poll = time.monotonic()
        from sqlmodel import col, select

        recent = time.time() - RECHECK_FINISHED_S
        with self.ws.store.read() as s:
            runs = s.exec(select(Run).where(Run.backend == "slurm", Run.slurm_job_id.is_not(None), (
                col(Run.status).in_(LAUNCHED) | (col(Run.status).in_(ENDED) & (Run.ended_at > recent))))).all()
        runs = [r for r in runs if r.status in LAUNCHED
                or not (read_json(self.ws.run_dir(r.run_id).path / SLURM_FILE) or {}).get("final_state")]
        states = self.query([r.slurm_job_id for r in runs])
        if states is None:
            return []
        changed = []
        for run in runs:
            info = states.get(run.slurm_job_id)
            rd = self.ws.run_dir(run.run_id)
            if info is None:
                # Slurm forgot it: it ended more than MinJobAge ago (the daemon was down meanwhile) and
                # accounting has no record. Ended, cause unknown: its own files say the rest; stop asking.
                if self._record(rd, run.slurm_job_id, {"state": "UNKNOWN", "reason": "", "time_limit": ""}):
                    changed.append(run.run_id)
                continue
            if info["state"] in FINAL_STATES:
                if self._record(rd, run.slurm_job_id, info):
                    changed.append(run.run_id)
            elif info["state"] == "PENDING" and info["reason"] == "DependencyNeverSatisfied":
                if not self._parent_unsettled(run):  # else next poll, once the parent's end is ingested and can be named
                    self._unhook(run)
            elif self._record_live(rd, run.slurm_job_id, info):
                changed.append(run.run_id)
        return changed

    @staticmethod
    def _record_live(rd: RunDir, job_id: str, info: dict) -> bool:
        """Slurm's current state and reason of a job it still holds, when they changed."""
        rec = read_json(rd.path / SLURM_FILE) or {"job_id": job_id}
        if rec.get("final_state") or (rec.get("state"), rec.get("reason")) == (info["state"], info["reason"]):
            return False
        rec.update(state=info["state"], reason=info["reason"], seen_at=time.time())
        atomic_write_json(rd.path / SLURM_FILE, rec)
        return True

    @staticmethod
    def _record(rd: RunDir, job_id: str, info: dict) -> bool:
        rec = read_json(rd.path / SLURM_FILE) or {"job_id": job_id}
        if rec.get("final_state") == info["state"]:
            return False
        rec.update(state=info["state"], final_state=info["state"], reason=info["reason"], ended_at=time.time())
        if info.get("time_limit"):
            rec["time_limit"] = info["time_limit"]
        atomic_write_json(rd.path / SLURM_FILE, rec)
        return True

    def _parent_unsettled(self, run: Run) -> bool:
        """A parent Slurm has ended that the database still shows pending or running (ingested after this poll)."""
        from app.queue.deps import parents_of

        with self.ws.store.read() as s:
            return any(p.status in LAUNCHED for p in parents_of(s, [run.id])[run.id])

    def _unhook(self, run: Run) -> None:
        """A parent failed under afterok: take the job back so the run is blocked, not failed.

        It never started, so its launch files go; retrying the parent queues
        it again and it is submitted afresh.
        """
        if not self.cancel(run.slurm_job_id):
            return  # still in Slurm's queue: the next poll sees it and asks again
        rd = self.ws.run_dir(run.run_id)
        if rd.status.exists():
            return  # it did start after all: its own status will say how it ended
        rd.launch_json.unlink(missing_ok=True)
        (rd.path / SLURM_FILE).unlink(missing_ok=True)
        with self.ws.store.write() as s:
            r = s.get(Run, run.id)
            r.status, r.slurm_job_id, r.started_at, r.rev = "blocked", None, None, next_rev(s)
            r.error = self._unmet_cause(s, run.id)
        log.info("run %s: dependency never satisfied; job %s cancelled, run blocked", run.run_id, run.slurm_job_id)

    @staticmethod
    def _unmet_cause(s, pk: int) -> str:
        """Which parent did not succeed, and how to go on: the same words as a run the daemon blocks itself."""
        from app.queue.deps import blocked_cause, parents_of

        bad = [p for p in parents_of(s, [pk])[pk] if p.status != "succeeded"]
        if not bad:
            return "a dependency did not succeed (Slurm: DependencyNeverSatisfied); retrying it re-queues this run"
        p = bad[0]
        how = p.status if p.status in (*FINISHED, BLOCKED) else "did not succeed"  # the database may lag Slurm
        return blocked_cause(p, how, via=" (Slurm: DependencyNeverSatisfied)")


def slurm_available() -> str | None:
    """None when sbatch can reach a controller, else why not (for skips and errors)."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return "Slurm client commands (sbatch, squeue) are not installed"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if out.returncode != 0:
        return f"no Slurm controller answers: {' '.join(out.stderr.split())}"
    states = out.stdout.split()
    if not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"no Slurm node is up (sinfo: {', '.join(states) or 'no nodes'})"
    return None
