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
from pathlib import Path

from sqlmodel import func, select

from app.backends import local
from app.ingest import Ingester
from app.locks import FileLock
from app.store.models import Run, next_rev
from app.workspace import Workspace
from engine.run import ProcessIdentity, atomic_write_json, read_json

log = logging.getLogger("moe-tui.daemon")

POLL_S = 0.5  # between passes: a queued run starts within this of a slot freeing
DEFAULT_PARALLEL = 1  # runs at once (slots per GPU and CPU slots come with the queue issue)
DEFAULT_IDLE_EXIT_S = 300  # exit after this long with nothing queued or running


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Daemon:
    def __init__(self, ws: Workspace, parallel: int | None = None, idle_exit_s: float | None = None, poll_s: float = POLL_S):
        self.ws = ws
        self.parallel = int(parallel or _env_number("MOE_TUI_PARALLEL", DEFAULT_PARALLEL))
        self.idle_exit_s = idle_exit_s if idle_exit_s is not None else _env_number("MOE_TUI_IDLE_EXIT", DEFAULT_IDLE_EXIT_S)
        self.poll_s = poll_s
        self.ingester = Ingester(ws)
        self.children: dict[str, subprocess.Popen] = {}
        self._stop = False

    def serve(self) -> int:
        lock = FileLock(self.ws.daemon_lock)
        if not lock.acquire(blocking=False):
            log.info("another daemon already serves %s", self.ws.root)
            return 0
        me = ProcessIdentity.current()
        atomic_write_json(self.ws.daemon_pid, {**me.record(), "started_at": time.time(), "workspace": str(self.ws.root)})
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.info("daemon %d serving %s (parallel=%d, idle exit %.0fs)", me.pid, self.ws.root, self.parallel, self.idle_exit_s)
        idle_since = time.monotonic()
        try:
            while not self._stop:
                self.step()
                if self._has_work():
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self.idle_exit_s:
                    log.info("idle for %.0fs; exiting", self.idle_exit_s)
                    break
                time.sleep(self.poll_s)
        finally:
            self.ws.daemon_pid.unlink(missing_ok=True)
            lock.release()
        return 0

    def step(self) -> None:
        """One pass: ingest, reap, launch."""
        report = self.ingester.run_pass()
        for w in report.warnings:
            log.warning("%s", w)
        for run_id, proc in list(self.children.items()):
            if proc.poll() is not None:  # reap the launcher so it does not linger as a zombie
                del self.children[run_id]
                self.ingester.run_pass(only=[run_id])
        self.launch_ready()

    def _has_work(self) -> bool:
        with self.ws.store.read() as s:
            n = s.exec(select(func.count()).select_from(Run).where(
                (Run.status == "queued") | ((Run.status == "running") & (Run.backend == "local")))).one()
        return n > 0 or bool(self.children)

    def launch_ready(self) -> None:
        with self.ws.store.read() as s:
            running = s.exec(select(func.count()).select_from(Run).where(
                Run.status == "running", Run.backend == "local")).one()
            free = self.parallel - running
            if free <= 0:
                return
            queued = s.exec(select(Run.id).where(Run.status == "queued", Run.backend == "local")
                            .order_by(Run.priority.desc(), Run.id).limit(free)).all()
        for pk in queued:
            self.launch(pk)

    def launch(self, pk: int) -> None:
        # Claim the run in the database before starting anything, so no other
        # pass starts it twice; a crash after this is settled from the files.
        with self.ws.store.write() as s:
            run = s.get(Run, pk)
            if run is None or run.status != "queued":
                return
            rd = self.ws.run_dir(run.run_id)
            if rd.launch_json.exists():  # launched before, by a daemon that then died
                return
            run.status, run.started_at, run.rev = "running", time.time(), next_rev(s)
            argv = json.loads(run.argv)
        # Until the launcher exists, the daemon stands in for it: a reader sees a
        # live process, and if the daemon dies right here the run reads "lost".
        atomic_write_json(rd.launch_json, {"backend": "local", "launched_at": time.time(), "state": "launching",
                                           **ProcessIdentity.current().record("launcher_")})
        try:
            proc, record = local.launch(self.ws, rd, argv)
        except OSError as e:
            log.error("run %s: cannot start: %s", rd.run_id, e)
            with self.ws.store.write() as s:
                run = s.get(Run, pk)
                run.status, run.error, run.ended_at, run.rev = "failed", f"cannot start the job: {e}", time.time(), next_rev(s)
            return
        self.children[rd.run_id] = proc
        with self.ws.store.write() as s:
            run = s.get(Run, pk)
            run.launcher_pid, run.rev = proc.pid, next_rev(s)
        log.info("run %s started (launcher pid %d): engine %s", rd.run_id, proc.pid, " ".join(argv))

    def _on_stop(self, signum, frame) -> None:
        self._stop = True


# --------------------------------------------------------------------------- #
# Client side: is one running, start one, stop it.


def daemon_info(ws: Workspace) -> dict | None:
    """The running daemon's pid record, or None when no daemon holds the lock."""
    if not FileLock(ws.daemon_lock).is_locked_elsewhere():
        return None
    return read_json(ws.daemon_pid) or {"pid": None}


def ensure_daemon(ws: Workspace) -> bool:
    """Start a detached daemon if none runs; True if one was started."""
    if daemon_info(ws) is not None:
        return False
    with open(ws.daemon_log, "ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "app.queue.daemon", "--workspace", str(ws.root)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ws.root,
            start_new_session=True,
            close_fds=True,
        )
    return True


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
    """Queued runs, or local runs the daemon should be watching."""
    with ws.store.read() as s:
        return s.exec(select(Run.id).where(
            (Run.status == "queued") | ((Run.status == "running") & (Run.backend == "local"))).limit(1)).first() is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.queue.daemon")
    p.add_argument("--workspace", required=True)
    p.add_argument("--parallel", type=int)
    p.add_argument("--idle-exit", type=float)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    ws = Workspace.open(args.workspace)
    return Daemon(ws, parallel=args.parallel, idle_exit_s=args.idle_exit).serve()


if __name__ == "__main__":
    raise SystemExit(main())
