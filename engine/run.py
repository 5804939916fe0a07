"""The run-directory contract: the only interface between a job and the manager.

A job writes nothing but its run directory:

    runs/<run_id>/
        run.json       what ran: kind, resolved config, command, git, host, versions
        events.jsonl   append-only, one JSON object per line, flushed per event
        status.json    replaced atomically: state, pid, times, exit code, error
        stdout.log     everything the job printed
        checkpoints/   model state
        artifacts/     tables, plots, anything a person looks at afterwards

The manager adds three files of its own, never touched by the job:
``submit.json`` (the queued request), ``launch.json`` (who started it, where)
and ``exit_code`` (written by the launcher when the process ends). Together
they let the database be rebuilt from the directories alone.

Torch-free and stdlib-only: the manager imports this module to read runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1

RUN_JSON = "run.json"
EVENTS = "events.jsonl"
STATUS = "status.json"
STDOUT = "stdout.log"
SUBMIT = "submit.json"
LAUNCH = "launch.json"
EXIT_CODE = "exit_code"
CHECKPOINTS = "checkpoints"
ARTIFACTS = "artifacts"

RUNS_DIRNAME = "runs"
WORKSPACE_ENV = "MOE_TUI_WORKSPACE"

# Final states a job writes itself; "lost" and "blocked" belong to the manager.
TERMINAL_STATES = ("succeeded", "failed", "cancelled")

# Exit codes of the engine CLI, so the manager can tell bad input from a crash.
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 128 + signal.SIGTERM

_RUN_ID_RE = re.compile(r"^[0-9]{6}-[0-9]{6}-[0-9a-f]{4}$")


class JobError(Exception):
    """A failure with a one-line cause a person can act on (bad input, missing file).

    The message ends up in status.json, in the run table and on stderr, so it
    must say what was wrong and what to do about it.
    """


class Cancelled(Exception):
    """Raised at a safe point after SIGTERM/SIGINT asked the job to stop."""


# --------------------------------------------------------------------------- #
# Workspace and ids


def resolve_workspace(explicit: str | os.PathLike | None = None) -> Path:
    """The workspace: ``--workspace``, else ``$MOE_TUI_WORKSPACE``, else the cwd."""
    chosen = explicit or os.environ.get(WORKSPACE_ENV) or os.getcwd()
    return Path(chosen).expanduser().absolute()


def new_run_id(now: float | None = None, seq: int = 0) -> str:
    """``YYMMDD-HHMMSS-mmms``: sorts by creation time, readable, unique.

    ``mmm`` is the millisecond in hex (000-3e7), so runs created in the same
    second still sort in creation order; ``s`` (0-f) tells apart runs of the
    same millisecond. ``RunDir.create`` makes it unique with ``mkdir``.
    """
    now = time.time() if now is None else now
    stamp = time.strftime("%y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{int(now % 1 * 1000):03x}{seq:x}"


def is_run_id(name: str) -> bool:
    return bool(_RUN_ID_RE.match(name))


# --------------------------------------------------------------------------- #
# Atomic files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` so readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None if the file does not exist."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- #
# Process identity: a pid alone is reused by the kernel, pid + start time is not.


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    state, start = fields[0], fields[19]
    if state in ("Z", "X"):
        return None
    return int(start)


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_ticks: int | None
    host: str
    boot_id: str | None

    @classmethod
    def current(cls) -> "ProcessIdentity":
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity":
        return cls(pid, process_start_ticks(pid), socket.gethostname(), boot_id())

    @classmethod
    def from_record(cls, rec: dict, prefix: str = "") -> "ProcessIdentity | None":
        pid = rec.get(f"{prefix}pid")
        if not pid:
            return None
        return cls(int(pid), rec.get(f"{prefix}pid_start"), rec.get("host", ""), rec.get("boot_id"))

    def record(self, prefix: str = "") -> dict:
        return {
            f"{prefix}pid": self.pid,
            f"{prefix}pid_start": self.start_ticks,
            "host": self.host,
            "boot_id": self.boot_id,
        }

    def is_local(self) -> bool:
        return self.host == socket.gethostname() and self.boot_id == boot_id()

    def alive(self) -> bool | None:
        """True/False on this host and boot; None when it cannot be told from here."""
        if self.host != socket.gethostname():
            return None
        if self.boot_id != boot_id():
            return False  # rebooted since: every process of that boot is gone
        return self.start_ticks is not None and process_start_ticks(self.pid) == self.start_ticks


def describe_exit(code: int) -> str:
    """``-9`` -> "killed by SIGKILL", ``3`` -> "exited with code 3"."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or killed by hand)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        return f"killed by {signal.Signals(code - 128).name}"
    return f"exited with code {code}"


# --------------------------------------------------------------------------- #
# Reading a run directory


class RunDir:
    """Paths of one run directory, and readers that never raise on a missing file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def run_id(self) -> str:
        return self.path.name

    run_json = property(lambda self: self.path / RUN_JSON)
    events = property(lambda self: self.path / EVENTS)
    status = property(lambda self: self.path / STATUS)
    stdout_log = property(lambda self: self.path / STDOUT)
    submit_json = property(lambda self: self.path / SUBMIT)
    launch_json = property(lambda self: self.path / LAUNCH)
    exit_code_file = property(lambda self: self.path / EXIT_CODE)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    artifacts = property(lambda self: self.path / ARTIFACTS)

    @classmethod
    def create(cls, runs_root: Path, run_id: str | None = None) -> "RunDir":
        """Make a new, empty run directory under ``runs_root`` with a fresh id."""
        runs_root = Path(runs_root)
        runs_root.mkdir(parents=True, exist_ok=True)
        if run_id:
            try:
                (runs_root / run_id).mkdir()
            except FileExistsError:
                raise JobError(f"run directory {runs_root / run_id} already exists; pick another id") from None
            return cls(runs_root / run_id)
        # mkdir is the arbiter between processes; within a millisecond the
        # sequence digit goes up, so creation order stays name order.
        for _ in range(100):
            now = time.time()
            for seq in range(16):
                rid = new_run_id(now, seq)
                try:
                    (runs_root / rid).mkdir()
                except FileExistsError:
                    continue
                return cls(runs_root / rid)
            time.sleep(0.001)
        raise JobError(f"could not create a fresh run directory under {runs_root}")

    def read_run(self) -> dict | None:
        return read_json(self.run_json)

    def read_status(self) -> dict | None:
        return read_json(self.status)

    def read_submit(self) -> dict | None:
        return read_json(self.submit_json)

    def read_launch(self) -> dict | None:
        return read_json(self.launch_json)

    def read_exit_code(self) -> int | None:
        try:
            return int(self.exit_code_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def tail_log(self, max_bytes: int = 4096) -> str:
        """The end of stdout.log, for error messages."""
        try:
            with open(self.stdout_log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def last_log_line(self) -> str:
        lines = [ln.strip() for ln in self.tail_log().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else ""


@dataclass
class EventLine:
    lineno: int  # 1-based line number in events.jsonl
    event: dict | None  # None when the line is malformed
    error: str | None = None


def parse_event_lines(chunk: bytes, first_lineno: int) -> tuple[list[EventLine], int]:
    """Parse complete lines of ``chunk``; return them and the bytes consumed.

    A partial last line (no newline yet) is not consumed: the writer is still
    writing it, and it is read again on the next pass once it is complete.
    """
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], 0
    lines = []
    for i, raw in enumerate(chunk[: end + 1].split(b"\n")[:-1]):
        lineno = first_lineno + i
        if not raw.strip():
            lines.append(EventLine(lineno, None, "empty line"))
            continue
        try:
            ev = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            lines.append(EventLine(lineno, None, f"malformed JSON ({e})"))
            continue
        if not isinstance(ev, dict) or "type" not in ev:
            lines.append(EventLine(lineno, None, "not an event object (no 'type')"))
            continue
        if ev.get("v", 1) > SCHEMA_VERSION:
            lines.append(EventLine(lineno, None, f"event schema v{ev.get('v')} is newer than this reader (v{SCHEMA_VERSION}); upgrade moe-tui"))
            continue
        lines.append(EventLine(lineno, ev))
    return lines, end + 1


# --------------------------------------------------------------------------- #
# Writing a run directory (the job side)


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
    most one partial last line, which readers skip until it is complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, type: str, **fields: Any) -> dict:
        event = {"v": SCHEMA_VERSION, "t": round(time.time(), 3), "type": type, **fields}
        os.write(self._fd, (json.dumps(event, allow_nan=True) + "\n").encode())
        os.fsync(self._fd)  # per event (an epoch), cheap; survives a node crash
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
        rd = self.run_dir
        if rd.run_json.exists():
            raise JobError(f"{rd.path} already holds a run (run.json exists); start a new run instead")
        rd.checkpoints.mkdir(parents=True, exist_ok=True)
        rd.artifacts.mkdir(exist_ok=True)
        self._tee_output()
        me = ProcessIdentity.current()
        atomic_write_json(
            rd.run_json,
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
        if error:
            print(f"{state}: {error}", file=sys.stderr)
        if self._events:
            self._events.emit("end", state=state)
            self._events.close()
        self._set_status(state=state, ended_at=time.time(), exit_code=self.exit_code, error=_one_line(error))
        self._restore_output()
        return exc is not None and (exc_type is KeyboardInterrupt or issubclass(exc_type, Exception))

    # -- what jobs call -----------------------------------------------------
    def event(self, type: str, **fields: Any) -> dict:
        assert self._events is not None, "use RunRecorder as a context manager"
        return self._events.emit(type, **fields)

    def log_epoch(self, epoch: int, metrics: dict[str, float], phase: str | None = None) -> None:
        """One epoch's metrics: an event for the store, a line for the log, progress in status."""
        clean = {k: (None if v != v else float(v)) for k, v in metrics.items()}  # NaN -> null
        self.event("epoch", epoch=epoch, phase=phase, metrics=clean)
        self._set_status(epoch=epoch)
        total = f"/{self.total_epochs}" if self.total_epochs else ""
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        print(f"epoch {epoch}{total}  {shown}", flush=True)

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Metrics that belong to the run rather than an epoch (final test scores)."""
        clean = {k: (None if v != v else float(v)) for k, v in metrics.items()}
        self.event("summary", metrics=clean)
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
        self._status.update(fields, v=SCHEMA_VERSION, run_id=self.run_dir.run_id, updated_at=time.time())
        atomic_write_json(self.run_dir.status, self._status)

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
            self._log.close()
            self._log = None


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


def iter_run_dirs(runs_root: Path) -> Iterator[RunDir]:
    """Run directories under ``runs_root`` (names that look like run ids), oldest first."""
    try:
        names = sorted(e.name for e in os.scandir(runs_root) if e.is_dir() and is_run_id(e.name))
    except FileNotFoundError:
        return
    for name in names:
        yield RunDir(Path(runs_root) / name)
