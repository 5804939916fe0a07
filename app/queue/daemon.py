"""The queue daemon: one per workspace, detached, started on demand.

It ingests run directories continuously, starts queued runs on free slots,
and notices runs that ended. It never holds a job's life: jobs run in their
own sessions under a launcher that records their exit code, so killing the
daemon (or rebooting the login node's SSH session) loses nothing. A new
daemon finds live runs by pid and start time and settles finished ones from
their files (see app.lifecycle).

    python -m app.queue.daemon --workspace DIR     (what `moe-tui daemon start` runs)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time

from sqlmodel import col, func, select

from app.backends import local
from app.errors import disk_full, disk_full_message
from app.ingest import Ingester
from app.lifecycle import CANCEL_FILE
from app.locks import FileLock
from app.queue.control import is_paused
from app.queue.deps import parents_of, resolve_placeholders, settle_dependencies
from app.queue.order import start_key
from app.queue.settings import Settings, load_settings
from app.queue.slots import Occupancy, allocate, discover_gpus, slot_env
from app.store.models import FINISHED, HEADLESS, HOOK_OWED, LAUNCHED, Run, RunDependency, next_rev
from app.workspace import Workspace
from engine.core.errors import JobError, NoSpace
from engine.core.events import LaunchRecord, RecordError
from engine.core.procs import ProcessIdentity
from engine.core.rundir import RunDir, atomic_write_json, read_json, write_record

log = logging.getLogger("moe-tui.daemon")

POLL_S = 0.5  # between passes while runs are queued or running
FULL_DISK_RETRY_S = 5.0  # between passes while the workspace's disk is full
IDLE_POLL_S = 2.0  # between passes with nothing to do (clients wake the daemon with SIGUSR1)
LOCK_PATIENCE_S = 0.5  # a probe holds the daemon lock for microseconds, a serving daemon for good
# SIGUSR1: a client queued, cancelled, retried or resumed something. SIGCHLD:
# one of our launchers ended, so a slot is free. Either starts a pass at once.
WAKE_SIGNALS = {signal.SIGUSR1, signal.SIGCHLD}


class Daemon:
    def __init__(self, ws: Workspace, idle_exit_s: float | None = None, poll_s: float = POLL_S):
        self.ws = ws
        self._idle_exit_override = idle_exit_s
        self.poll_s = poll_s
        self.ingester = Ingester(ws)
        self.children: dict[str, subprocess.Popen] = {}
        self.hooks: dict[int, subprocess.Popen] = {}  # run pk -> its on-finish command, until it exits
        self._sigterm_at: dict[str, float] = {}  # run_id -> when this daemon sent SIGTERM for a cancel
        self._settings_key: tuple | None = None
        self.settings: Settings = load_settings(ws.root)
        self._slurm = None
        self._stop = False
        self._woken = False
        self._passes = 0

    @property
    def idle_exit_s(self) -> float:
        return self._idle_exit_override if self._idle_exit_override is not None else self.settings.queue.idle_exit_s

    def reload_settings(self) -> None:
        """Re-read moe-tui.toml when it changed; a bad edit keeps the last good settings."""
        path = self.ws.root / "moe-tui.toml"
        try:
            st = path.stat()
            key = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key == self._settings_key:
            return
        self._settings_key = key
        try:
            self.settings = load_settings(self.ws.root)
        except Exception as e:  # UserError: say so in the log, keep serving
            log.error("%s; keeping the previous settings", e)

    @property
    def slurm(self):
        if self._slurm is None:
            from app.backends.slurm import SlurmBackend

            self._slurm = SlurmBackend(self.ws)
        self._slurm.settings = self.settings.slurm
        return self._slurm

    def serve(self) -> int:
        lock = FileLock(self.ws.daemon_lock)
        # Patience, not a first refusal: the client that started this daemon probes the lock (taking it
        # for a moment) while it waits, and a daemon that met such a probe stood down with none serving.
        if not lock.acquire_within(LOCK_PATIENCE_S):
            log.info("another daemon already serves %s", self.ws.root)
            return 0
        me = ProcessIdentity.current()
        # The handlers go in before the pid file names this daemon: a client
        # that reads it may SIGUSR1 at once, and SIGUSR1's default kills.
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for sig in WAKE_SIGNALS:
            signal.signal(sig, self._on_wake)
        # "wake": clients may SIGUSR1 this daemon (an older one would die of it).
        atomic_write_json(self.ws.daemon_pid, {**me.record(), "started_at": time.time(), "workspace": str(self.ws.root),
                                               "wake": "SIGUSR1"})
        q = self.settings.queue
        gpus = discover_gpus()
        log.info("daemon %d serving %s: %d GPU(s) x %d run(s), %d CPU slot(s), cap %s, idle exit %.0fs",
                 me.pid, self.ws.root, len(gpus), q.runs_per_gpu, q.cpu_slots, q.max_running or "none", self.idle_exit_s)
        idle_since = time.monotonic()
        full_since: float | None = None
        try:
            while not self._stop:
                self._woken = False
                try:
                    self.step()
                except Exception as e:
                    if not disk_full(e):
                        raise
                    # Nothing can be recorded, so nothing is started: wait for space, then
                    # go on where the pass stopped (every step is idempotent).
                    if full_since is None:
                        full_since = time.monotonic()
                        log.error("%s; retrying every %.0fs", disk_full_message(e),
                                  FULL_DISK_RETRY_S)
                    self._sleep(FULL_DISK_RETRY_S)
                    idle_since = time.monotonic()
                    continue
                if full_since is not None:
                    log.info("the disk has room again after %.0fs; serving", time.monotonic() - full_since)
                    full_since = None
                busy = self._has_work()
                if busy:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self.idle_exit_s:
                    log.info("idle for %.0fs; exiting", self.idle_exit_s)
                    break
                self._sleep(self.poll_s if busy else max(self.poll_s, IDLE_POLL_S))
        finally:
            self.ws.daemon_pid.unlink(missing_ok=True)
            lock.release()
        return 0

    def step(self) -> None:
        """One pass: ingest, reap, dependencies, cancels, Slurm, launch, on-finish hooks."""
        self.reload_settings()
        if self._passes == 0:
            self.requeue_unfinished_hooks()
        # The first pass reads everything (the database may have been rebuilt).
        report = self.ingester.run_pass(skip_queued=self._passes > 0)
        self._passes += 1
        for w in report.warnings:
            log.warning("%s", w)
        for run_id, proc in list(self.children.items()):
            if proc.poll() is not None:  # reap the launcher so it does not linger as a zombie
                del self.children[run_id]
                self.ingester.run_pass(only=[run_id])
        with self.ws.store.read() as s:
            ready, blocked = settle_dependencies(s, dry_run=True)
        if blocked:
            with self.ws.store.write() as s:
                ready, blocked = settle_dependencies(s)
        for pk in blocked:
            log.info("run #%d blocked: a dependency did not succeed", pk)
        self.act_on_cancels()
        if self._active_slurm():
            for run_id in self.slurm.poll():
                self.ingester.ingest_run(self.ws.run_dir(run_id))
        if not is_paused(self.ws):
            self.launch_ready(ready)
        self.run_hooks()
        self.reap_hooks()

    def _active_slurm(self) -> bool:
        with self.ws.store.read() as s:
            recent = time.time() - 600  # finished runs may still await Slurm's verdict (see SlurmBackend.poll)
            return s.exec(select(Run.id).where(Run.backend == "slurm", Run.slurm_job_id.is_not(None), (
                col(Run.status).in_(LAUNCHED) | (Run.ended_at > recent))).limit(1)).first() is not None

    def _has_work(self) -> bool:
        with self.ws.store.read() as s:
            n = s.exec(select(func.count()).select_from(Run).where(
                (Run.status == "queued") | col(Run.status).in_(LAUNCHED) | col(Run.hook).in_(HOOK_OWED))).one()
        return n > 0 or bool(self.children) or bool(self.hooks)

    # -- launching -------------------------------------------------------------
    def launch_ready(self, ready_with_parents: list[int]) -> None:
        """Start what fits, in start order; smaller runs may pass a big one that waits for GPUs."""
        q = self.settings.queue
        with self.ws.store.read() as s:
            occ = Occupancy()
            for slots in s.exec(select(Run.slots).where(Run.status == "running", Run.backend == "local")):
                occ.take(slots)
        devices = discover_gpus()
        for pk, gpus, backend, _ in self.startable(ready_with_parents):
            if backend == "slurm":
                self.launch_slurm(pk)
                continue
            if q.max_running and occ.running >= q.max_running:
                continue
            slots = allocate(gpus, devices, occ, q.cpu_slots, q.runs_per_gpu)
            if slots is not None:
                self.launch(pk, slots)

    def startable(self, ready_with_parents: list[int]) -> list[tuple[int, int | None, str, int]]:
        """(pk, gpus, backend, priority) of every run that may start now, in start order."""
        with self.ws.store.read() as s:
            cols = (Run.id, Run.gpus, Run.backend, Run.priority)
            rows = list(s.exec(select(*cols).where(Run.status == "queued", col(Run.id).not_in(select(RunDependency.run)))))
            if ready_with_parents:
                rows += list(s.exec(select(*cols).where(col(Run.id).in_(ready_with_parents))))
            seen = {r[0] for r in rows}
            chained = [pk for pk in self._slurm_chainable(s) if pk not in seen]
            if chained:
                rows += list(s.exec(select(*cols).where(col(Run.id).in_(chained))))
        return sorted(rows, key=lambda r: start_key(r[3], r[0]))

    def _slurm_chainable(self, s) -> list[int]:
        """Queued Slurm runs whose unfinished parents are all submitted Slurm jobs, pending or running (afterok chains them)."""
        pks = list(s.exec(select(Run.id).where(Run.status == "queued", Run.backend == "slurm",
                                               col(Run.id).in_(select(RunDependency.run)))).all())
        parents = parents_of(s, pks)
        return [pk for pk in pks if parents[pk] and all(
            p.status == "succeeded" or (p.backend == "slurm" and p.status in LAUNCHED and p.slurm_job_id)
            for p in parents[pk]) and not all(p.status == "succeeded" for p in parents[pk])]

    def _claim(self, pk: int, slots: str | None) -> tuple[Run, list[str]] | None:
        # Claim the run in the database before starting anything, so no other
        # pass starts it twice; a crash after this is settled from the files.
        with self.ws.store.write() as s:
            run = s.get(Run, pk)
            if run is None or run.status != "queued":
                return None
            rd = self.ws.run_dir(run.run_id)
            if rd.launch_json.exists() or (rd.path / CANCEL_FILE).exists():
                return None  # launched before by a daemon that then died, or cancelled: ingest settles it
            run.status, run.started_at, run.slots, run.rev = "running", time.time(), slots, next_rev(s)
            if self.settings.queue.on_finish:
                run.hook = "pending"
            argv = resolve_placeholders(json.loads(run.argv), self.ws.runs)
        return run, argv

    def launch(self, pk: int, slots: str) -> None:
        claimed = self._claim(pk, slots)
        if claimed is None:
            return
        run, argv = claimed
        rd = self.ws.run_dir(run.run_id)
        if not self._writable(pk, rd):
            return
        env = {**slot_env(slots, self.settings.queue.cpu_slots), "MOE_TUI_RUN_ID": run.run_id}
        try:
            # Until the launcher exists, the daemon stands in for it: a reader sees a
            # live process, and if the daemon dies right here the run reads "lost".
            write_record(rd.launch_json, LaunchRecord, {"backend": "local", "launched_at": time.time(),
                                                        "state": "launching", **ProcessIdentity.current().record("launcher_")})
            proc, record = local.launch(self.ws, rd, argv, env_extra=env, slots=slots)
        except (OSError, NoSpace) as e:
            log.error("run %s: cannot start: %s", rd.run_id, e)
            self._fail(pk, f"cannot start the job: {e}")
            return
        self.children[rd.run_id] = proc
        with self.ws.store.write() as s:
            r = s.get(Run, pk)
            r.launcher_pid, r.rev = proc.pid, next_rev(s)
        log.info("run %s started on %s (launcher pid %d): engine %s", rd.run_id, slots, proc.pid, " ".join(argv))

    def launch_slurm(self, pk: int) -> None:
        claimed = self._claim(pk, None)
        if claimed is None:
            return
        run, argv = claimed
        if not self._writable(pk, self.ws.run_dir(run.run_id)):
            return
        with self.ws.store.read() as s:
            parent_jobs = [p.slurm_job_id for p in parents_of(s, [pk])[pk]
                           if p.status in LAUNCHED and p.backend == "slurm" and p.slurm_job_id]
        from app.errors import UserError

        try:
            job_id = self.slurm.submit(run, argv, parent_jobs)
        except UserError as e:
            log.error("run %s: %s", run.run_id, e)
            self._fail(pk, str(e))
            return
        with self.ws.store.write() as s:  # in Slurm's queue now; the next poll says when it runs
            r = s.get(Run, pk)
            r.status, r.slurm_job_id, r.slots, r.rev = "pending", job_id, "PENDING", next_rev(s)
        log.info("run %s submitted to Slurm as job %s%s", run.run_id, job_id,
                 f" (afterok:{':'.join(parent_jobs)})" if parent_jobs else "")

    def _writable(self, pk: int, rd: RunDir) -> bool:
        """Before the first write to a run (launch.json, stdout.log, Slurm's --output): a run
        whose files would lead out of it fails with that cause instead."""
        try:
            rd.check_writable(self.ws.runs)
        except JobError as e:
            log.error("run %s: %s", rd.run_id, e)
            self._fail(pk, str(e))
            return False
        return True

    def _fail(self, pk: int, error: str) -> None:
        """The run could not be started: say so in its directory first, then in the database.

        The launch record keeps the verdict with the run, so a rebuilt
        database (``moe-tui reindex``) reads it failed instead of queueing it,
        and submitting it, again.
        """
        now = time.time()
        with self.ws.store.write() as s:
            run = s.get(Run, pk)
            rd = self.ws.run_dir(run.run_id)
            try:
                rd.check_writable(self.ws.runs, only=rd.launch_json)
                write_record(rd.launch_json, LaunchRecord,
                             {"backend": run.backend, "state": "failed", "error": error, "failed_at": now})
            except JobError:  # a link out of the run, or a full disk: the verdict stays in the database only
                pass
            run.status, run.error, run.ended_at, run.rev = "failed", error, now, next_rev(s)

    # -- cancels ---------------------------------------------------------------
    def act_on_cancels(self) -> None:
        """SIGTERM the process group of each cancelled run, SIGKILL after the grace period."""
        with self.ws.store.read() as s:
            runs = s.exec(select(Run).where(col(Run.status).in_(LAUNCHED), Run.cancel_requested_at.is_not(None))).all()
        grace = self.settings.queue.cancel_grace_s
        now = time.monotonic()
        for run in runs:
            rd = self.ws.run_dir(run.run_id)
            if run.backend == "slurm":
                if run.run_id not in self._sigterm_at and run.slurm_job_id and self.slurm.cancel(run.slurm_job_id):
                    self._sigterm_at[run.run_id] = now  # else scancel failed or timed out: the next pass asks again
                continue
            try:
                launch = rd.read_launch() or {}
            except RecordError:
                continue  # the ingest pass reports the file once and lists the run unreadable
            ident = ProcessIdentity.from_record(launch, "launcher_")
            if ident is None or ident.pid == os.getpid() or not ident.alive():
                continue  # gone already: the next ingest pass settles it as cancelled
            first = self._sigterm_at.get(run.run_id)
            sig = signal.SIGTERM if first is None else signal.SIGKILL if now - first >= grace else None
            if sig is None:
                continue
            try:
                os.killpg(ident.pid, sig)  # the launcher leads its own session: the group is the run
            except ProcessLookupError:
                continue
            if first is None:
                self._sigterm_at[run.run_id] = now
            log.info("run %s: cancel: sent %s to process group %d", run.run_id, sig.name, ident.pid)

    # -- on-finish hooks ---------------------------------------------------------
    # A run's hook goes "pending" (when it launches) -> "started" (its command spawned) -> "done"
    # (the command exited). A daemon that dies in between leaves "started", and the next daemon
    # runs the command again: at least once, never silently not at all.
    def requeue_unfinished_hooks(self) -> None:
        """At start: commands a dead daemon started and never saw end are owed again."""
        with self.ws.store.write() as s:
            for run in s.exec(select(Run).where(Run.hook == "started")).all():
                run.hook, run.rev = "pending", next_rev(s)
                s.add(run)
                log.info("run %s: the on-finish command was started by a daemon that died; running it again",
                         run.run_id)

    def run_hooks(self) -> None:
        cmd = self.settings.queue.on_finish
        pending = select(Run).where(Run.hook == "pending", col(Run.status).in_(FINISHED))
        with self.ws.store.read() as s:
            if s.exec(pending.limit(1)).first() is None:
                return
        with self.ws.store.write() as s:
            runs = s.exec(pending).all()
            for run in runs:
                run.hook, run.rev = ("started" if cmd else "done"), next_rev(s)
                s.add(run)
        for run in runs:
            if not cmd:
                continue
            env = {**os.environ, "MOE_TUI_RUN_ID": run.run_id, "MOE_TUI_RUN_STATUS": run.status,
                   "MOE_TUI_RUN_DIR": str(self.ws.run_dir(run.run_id).path), "MOE_TUI_RUN_NAME": run.name,
                   "MOE_TUI_RUN_ERROR": run.error or "", "MOE_TUI_WORKSPACE": str(self.ws.root)}
            # The user's own command from their own config, run by their shell;
            # run values travel in the environment, never spliced into the line.
            with open(self.ws.state_dir / "on-finish.log", "ab") as out:
                self.hooks[run.id] = subprocess.Popen(["/bin/sh", "-c", cmd], env=env, stdin=subprocess.DEVNULL,
                                                      stdout=out, stderr=subprocess.STDOUT, cwd=self.ws.root,
                                                      start_new_session=True)
            log.info("run %s %s: on-finish command started", run.run_id, run.status)

    def reap_hooks(self) -> None:
        ended = {pk: proc.returncode for pk, proc in self.hooks.items() if proc.poll() is not None}
        if not ended:
            return
        with self.ws.store.write() as s:
            for pk, code in ended.items():
                run = s.get(Run, pk)
                if run is not None:
                    run.hook, run.rev = "done", next_rev(s)
                    s.add(run)
                    log.info("run %s: on-finish command exited with code %d", run.run_id, code)
        for pk in ended:
            del self.hooks[pk]

    def _sleep(self, seconds: float) -> None:
        """Wait for a wake signal or ``seconds``.

        The wake signals are blocked only while waiting, so the processes the
        daemon starts inherit a normal signal mask; one that arrived during
        the pass set ``_woken`` in its handler and skips the wait.
        """
        if self._woken:
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
        try:
            if not self._woken:
                signal.sigtimedwait(WAKE_SIGNALS, seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WAKE_SIGNALS)

    def _on_wake(self, signum, frame) -> None:
        self._woken = True

    def _on_stop(self, signum, frame) -> None:
        self._stop = True


# --------------------------------------------------------------------------- #
# Client side: is one running, start one, stop it.


def daemon_info(ws: Workspace) -> dict | None:
    """The running daemon's pid record, or None when no daemon holds the lock."""
    if not FileLock(ws.daemon_lock).is_locked_elsewhere():
        return None
    return read_json(ws.daemon_pid) or {"pid": None}


def _serving(ws: Workspace) -> dict | None:
    """The pid record of a daemon that holds the lock and has said so in a live pid file, else None.

    Between taking the lock and writing ``daemon.pid`` a new daemon leaves
    the last one's file (or none) in place: a record counts only if its
    process is alive (pid *and* start time).
    """
    info = daemon_info(ws)
    ident = ProcessIdentity.from_record(info) if info and info.get("pid") else None
    return info if ident is not None and ident.alive() else None


def wake_daemon(ws: Workspace, info: dict | None = None) -> bool:
    """Ask the running daemon for a pass now (SIGUSR1); False if there is none to ask."""
    info = info or daemon_info(ws)
    ident = ProcessIdentity.from_record(info) if info and info.get("pid") else None
    if ident is None or info.get("wake") != "SIGUSR1" or not ident.alive():
        return False
    try:
        os.kill(ident.pid, signal.SIGUSR1)
    except ProcessLookupError:
        return False
    return True


DAEMON_START_TIMEOUT_S = 30.0  # imports and a first migration on a loaded 2-core machine take a few seconds


def ensure_daemon(ws: Workspace, timeout_s: float = DAEMON_START_TIMEOUT_S) -> bool:
    """Start a detached daemon if none runs, else wake it; True if this call started it.

    Returns only once a daemon holds the workspace lock and has written its
    pid file, so a caller that looks right after (``daemon_info``,
    ``wake_daemon``, a second ``ensure_daemon``) finds it. A daemon that
    exits before taking the lock, or is not up within ``timeout_s``, raises
    a one-line UserError that names its log.
    """
    from app.errors import UserError

    deadline = time.monotonic() + timeout_s
    while daemon_info(ws) is not None:
        serving = _serving(ws)
        if serving is not None:
            wake_daemon(ws, serving)
            return False
        # The lock is held but no live daemon.pid names its holder: one is starting right now.
        if time.monotonic() > deadline:
            raise UserError(f"a queue daemon holds {os.path.relpath(ws.daemon_lock, ws.root)} but has not written "
                            f"daemon.pid within {timeout_s:.0f}s; see {os.path.relpath(ws.daemon_log, ws.root)}")
        time.sleep(0.05)
    log_path = ws.daemon_log
    log_start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.queue.daemon", "--workspace", str(ws.root)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ws.root,
            start_new_session=True,
            close_fds=True,
        )
    info = _wait_for_daemon(ws, proc, timeout_s, log_start)
    return info.get("pid") == proc.pid  # else another client's daemon won the lock, and ours stood down


def _wait_for_daemon(ws: Workspace, proc: subprocess.Popen | None, timeout_s: float, log_start: int) -> dict:
    from app.errors import UserError

    rel_log = os.path.relpath(ws.daemon_log, ws.root)
    deadline = time.monotonic() + timeout_s
    while True:
        info = _serving(ws)
        if info is not None:
            return info
        if proc is not None and proc.poll() is not None:
            info = _serving(ws)  # it may have stood down for a daemon that started meanwhile
            if info is not None:
                return info
            if proc.returncode == 0 and daemon_info(ws) is not None:
                proc = None  # that daemon is between its lock and its pid file: wait for it
                continue
            cause = _last_log_line(ws.daemon_log, log_start)
            raise UserError(f"the queue daemon exited as it started (exit code {proc.returncode})"
                            + (f": {cause}" if cause else "") + f"; see {rel_log}")
        if time.monotonic() > deadline:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # ours, in its own session; do not leave a half-started one
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            raise UserError(f"the queue daemon did not take its lock within {timeout_s:.0f}s; "
                            f"see {rel_log}, then `moe-tui daemon start`")
        time.sleep(0.05)


def _last_log_line(path, start: int) -> str:
    """The last non-empty line the daemon wrote to its log after ``start`` (its error, when it crashed)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            tail = f.read()[-4096:].decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def stop_daemon(ws: Workspace, timeout_s: float = 15.0) -> int | None:
    """SIGTERM the daemon and wait for it to let go of its lock; returns its pid."""
    info = daemon_info(ws)
    if info is None:
        return None
    pid = info.get("pid")
    ident = ProcessIdentity.from_record(info) if pid else None
    if ident is not None and ident.alive():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    lock = FileLock(ws.daemon_lock)
    while lock.is_locked_elsewhere():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the daemon (pid {pid}) did not stop within {timeout_s:.0f}s")
        time.sleep(0.1)
    return pid


def needs_daemon(ws: Workspace) -> bool:
    """Queued runs, runs the daemon should be watching, or on-finish commands to run."""
    with ws.store.read() as s:
        return s.exec(select(Run.id).where(
            (Run.status == "queued") | (col(Run.status).in_(LAUNCHED) & (Run.backend != HEADLESS))
            | col(Run.hook).in_(HOOK_OWED)).limit(1)).first() is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.queue.daemon")
    p.add_argument("--workspace", required=True)
    p.add_argument("--idle-exit", type=float)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from app.errors import UserError

    try:
        ws = Workspace.open(args.workspace)
        return Daemon(ws, idle_exit_s=args.idle_exit).serve()
    except UserError as e:  # e.g. a broken moe-tui.toml at start: one line, which ensure_daemon shows
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
