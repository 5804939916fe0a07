"""The job side of a run directory: RunRecorder, the event log, the output tee."""

from __future__ import annotations

import json
import math
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.core.errors import Cancelled, JobError, NoSpace, is_no_space
from engine.core.events import (
    SCHEMA_VERSION,
    RecordError,
    RunRecord,
    StatusRecord,
    validate_event,
)
from engine.core.procs import (
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_CRASH,
    EXIT_NO_SPACE,
    EXIT_OK,
    ProcessIdentity,
)
from engine.core.rundir import RunDir, write_record


def git_state(path: Path) -> dict:
    """Commit and dirty flag of the git checkout holding ``path``, if any."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    porcelain = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(porcelain)}


def package_versions(names: tuple[str, ...] = ("moe-tui", "torch", "torchvision", "numpy")) -> dict:
    from importlib import metadata

    found = {"python": sys.version.split()[0]}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


class EventLog:
    """Append-only events.jsonl. One ``write`` per line, so a crash leaves at
    most one partial last line, which readers skip until it is complete.

    Every event goes through its schema first (``engine.core.events``), so a
    job cannot write a line the manager would reject: a job that tries fails
    with a TypeError naming the field and what is wrong. About 10 us an event (20 metrics), once an epoch.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, type: str, **fields: Any) -> dict:
        raw = {"v": SCHEMA_VERSION, "t": round(time.time(), 3), "type": type, **fields}
        try:
            event = validate_event(raw).model_dump(exclude_unset=True)
        except RecordError as e:  # the job's own bug, not bad input: a crash, with its traceback
            raise TypeError(f"{self.path.name}: {type} event: {e}") from None
        try:
            os.write(self._fd, (json.dumps(event, allow_nan=True) + "\n").encode())
            os.fsync(self._fd)  # per event (an epoch), cheap; survives a node crash
        except OSError as e:
            if is_no_space(e):
                raise NoSpace(self.path) from None
            raise
        return event

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Tee:
    """Duplicate a text stream into stdout.log (headless runs print to a terminal).

    The log is the record; the terminal is a courtesy. If the terminal goes
    away (a closed pipe, a dead SSH session under nohup), writing to it fails
    and the job carries on writing the log alone instead of crashing.
    """

    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, s: str) -> int:
        self._log.write(s)
        self._log.flush()
        if self._stream is not None:
            try:
                self._stream.write(s)
            except (OSError, ValueError):  # BrokenPipeError, or a closed file
                self._stream = None
        return len(s)

    def flush(self) -> None:
        self._log.flush()
        if self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._stream = None

    def __getattr__(self, name):
        return getattr(self._stream if self._stream is not None else self._log, name)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class RunRecorder:
    """Owns a run directory for the life of a job.

    ``with RunRecorder(...) as rec:`` writes run.json and a running status,
    tees output into stdout.log, turns SIGTERM/SIGINT into a cancel request
    checked at safe points (``rec.check_cancelled()``), and on exit writes the
    final status with a one-line cause.
    """

    def __init__(
        self,
        run_dir: RunDir,
        kind: str,
        config: dict,
        argv: list[str],
        name: str | None = None,
        total_epochs: int | None = None,
        primary_metric: str | None = None,
        metric_goals: dict[str, str] | None = None,
    ):
        self.run_dir = run_dir
        self.kind = kind
        self.config = config
        self.argv = argv
        self.name = name or kind
        self.total_epochs = total_epochs
        self.primary_metric = primary_metric
        self.metric_goals = metric_goals or {}
        self.exit_code = EXIT_OK
        self._stop_signal: int | None = None
        self._status: dict = {}
        self._events: EventLog | None = None
        self._saved_streams = None
        self._saved_handlers: dict = {}
        self._log = None

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> "RunRecorder":
        try:
            return self._start()
        except BaseException:
            # No run started: give the streams back, so the caller's one line reaches a person.
            self._restore_output()
            if self._events:
                self._events.close()
            raise

    def _start(self) -> "RunRecorder":
        rd = self.run_dir
        if rd.run_json.exists():
            raise JobError(f"{rd.path} already holds a run (run.json exists); start a new run instead")
        rd.checkpoints.mkdir(parents=True, exist_ok=True)
        rd.artifacts.mkdir(exist_ok=True)
        self._tee_output()
        me = ProcessIdentity.current()
        write_record(
            rd.run_json, RunRecord,
            {
                "v": SCHEMA_VERSION,
                "run_id": rd.run_id,
                "name": self.name,
                "kind": self.kind,
                "config": self.config,
                "argv": self.argv,
                "command": " ".join(_shell_quote(a) for a in ["engine", *self.argv]),
                "cwd": os.getcwd(),
                "git": git_state(Path(__file__).resolve().parent),
                "host": me.host,
                "versions": package_versions(),
                "created_at": time.time(),
                "total_epochs": self.total_epochs,
                "primary_metric": self.primary_metric,
                "metric_goals": self.metric_goals,
            },
        )
        self._events = EventLog(rd.events)
        self._set_status(state="running", started_at=time.time(), **me.record(), epoch=0,
                         total_epochs=self.total_epochs, exit_code=None, error=None, ended_at=None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        if exc is None:
            state, self.exit_code, error = "succeeded", EXIT_OK, None
        elif isinstance(exc, Cancelled):
            state, self.exit_code, error = "cancelled", EXIT_CANCELLED, str(exc) or "cancelled"
        elif is_no_space(exc):  # an OSError from a write outside atomic_write and EventLog names no cause yet
            cause = exc if isinstance(exc, NoSpace) else NoSpace(exc.filename or self.run_dir.path)
            state, self.exit_code, error = "failed", EXIT_NO_SPACE, str(cause)
        elif isinstance(exc, JobError):
            state, self.exit_code, error = "failed", EXIT_BAD_INPUT, str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            state, self.exit_code, error = "cancelled", EXIT_CANCELLED, "interrupted (Ctrl-C)"
        else:
            import traceback

            traceback.print_exception(exc_type, exc, tb)
            where = traceback.extract_tb(tb)[-1] if tb else None
            at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
            state, self.exit_code = "failed", EXIT_CRASH
            error = f"{exc_type.__name__}: {exc}{at}; traceback in {self.run_dir.stdout_log}"
        try:
            if error:
                print(f"{state}: {error}", file=sys.stderr)
            if self._events:
                self._events.emit("end", state=state)
                self._events.close()
            self._set_status(state=state, ended_at=time.time(), exit_code=self.exit_code, error=_one_line(error))
        except (NoSpace, OSError) as e:
            if not is_no_space(e):
                raise
            # The final status could not be written: the exit code is the record that
            # remains (the launcher writes it once it can), and the manager reads it as this.
            self.exit_code = EXIT_NO_SPACE
        self._restore_output()
        return exc is not None and (exc_type is KeyboardInterrupt or issubclass(exc_type, Exception))

    # -- what jobs call -----------------------------------------------------
    def event(self, type: str, **fields: Any) -> dict:
        assert self._events is not None, "use RunRecorder as a context manager"
        return self._events.emit(type, **fields)

    def log_epoch(self, epoch: int, metrics: dict[str, float], phase: str | None = None) -> None:
        """One epoch's metrics: an event for the store, a line for the log, progress in status."""
        self.event("epoch", epoch=operator.index(epoch), phase=phase, metrics=_metric_values(metrics))
        self._set_status(epoch=epoch)
        total = f"/{self.total_epochs}" if self.total_epochs else ""
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        print(f"epoch {epoch}{total}  {shown}", flush=True)

    def log_expert_load(self, epoch: int | None, experts: list[str], load: list[float],
                        top1_share: list[float] | None = None) -> None:
        """How a router spread one epoch's samples over its experts: the one ``expert_load`` event
        of every MoE job (train-expert's moe_head, train-gating, the m-height MoEs).

        ``load`` is the mean routing weight per expert (sums to 1); ``top1_share`` the share of
        samples whose largest weight is that expert's, where the job knows it.
        """
        fields = {"epoch": None if epoch is None else operator.index(epoch), "experts": list(experts),
                  "load": [_finite_or_none(v) for v in load]}
        if top1_share is not None:
            fields["top1_share"] = [_finite_or_none(v) for v in top1_share]
        self.event("expert_load", **fields)  # the schema checks the lengths

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Metrics that belong to the run rather than an epoch (final test scores)."""
        self.event("summary", metrics=_metric_values(metrics))
        print("final  " + "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()), flush=True)

    def set_total_epochs(self, total: int) -> None:
        self.total_epochs = total
        self._set_status(total_epochs=total)

    def check_cancelled(self) -> None:
        """Call at safe points (between batches): raises Cancelled after SIGTERM/SIGINT."""
        if self._stop_signal is not None:
            raise Cancelled(f"cancelled by {signal.Signals(self._stop_signal).name}")

    @property
    def cancel_requested(self) -> bool:
        return self._stop_signal is not None

    # -- internals ----------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second signal: stop now
            raise Cancelled(f"cancelled by a second {signal.Signals(signum).name}")
        self._stop_signal = signum

    def _set_status(self, **fields: Any) -> None:
        # A copy first: a status the schema refuses leaves the last good one in place for __exit__.
        status = {**self._status, **fields, "v": SCHEMA_VERSION, "run_id": self.run_dir.run_id, "updated_at": time.time()}
        write_record(self.run_dir.status, StatusRecord, status)
        self._status = status

    def _tee_output(self) -> None:
        log_path = self.run_dir.stdout_log
        if _same_file(1, log_path):
            return  # a launcher already sends our output there
        self._log = open(log_path, "a", buffering=1, encoding="utf-8")
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self._log)
        sys.stderr = _Tee(sys.stderr, self._log)

    def _restore_output(self) -> None:
        if self._saved_streams:
            sys.stdout, sys.stderr = self._saved_streams
            self._saved_streams = None
        if self._log:
            try:
                self._log.close()
            except OSError:  # a full disk: the last buffered lines are lost, the exit code is not
                pass
            self._log = None


def _finite_or_none(v) -> float | None:
    """A metric as the schema stores it: NaN and +-inf (a diverged run) have no value, null."""
    v = float(v)
    return v if math.isfinite(v) else None


def _metric_values(metrics: dict) -> dict[str, float | None]:
    return {k: None if v is None else _finite_or_none(v) for k, v in metrics.items()}


def _one_line(msg: str | None) -> str | None:
    if msg is None:
        return None
    return " ".join(msg.split())[:500]


def _fmt(v: float) -> str:
    if v is None or v != v:
        return "nan"
    if abs(v) >= 1000:
        return f"{v:.0f}"
    return f"{v:.4g}"


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)

