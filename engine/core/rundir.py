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

import glob
import json
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from engine.core.errors import JobError, NoSpace, is_no_space
from engine.core.events import (
    LaunchRecord,
    RunRecord,
    StatusRecord,
    SubmitRecord,
    RecordError,
    parse_exit_code,
    parse_record,
    validate_record,
)
from engine.core.procs import process_start_ticks

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

LOW_SPACE_BYTES = 1 << 20  # below this much free, a library's failed write is taken for a full disk

_RUN_ID_RE = re.compile(r"^[0-9]{6}-[0-9]{6}-[0-9a-f]{4}$")


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


def _node_kind(mode: int) -> str | None:
    """What a file that is neither a regular file nor a directory is, in words; None otherwise."""
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return None


def _refuse_node(path, mode: int) -> None:
    if kind := _node_kind(mode):
        raise JobError(f"{path} is a {kind}, not a file; moe-tui never writes over one: remove it")


def _write_to(f: BinaryIO, data: bytes | str | Callable[[BinaryIO], Any]) -> None:
    if callable(data):
        data(f)
    else:
        f.write(data.encode() if isinstance(data, str) else data)


def ensure_inside(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Refuse ``path`` as a place to write unless writing it stays inside ``root``.

    A link on the way (``path`` itself or a folder above it) that resolves out of
    ``root``, or a FIFO, device or socket at ``path``, is a JobError naming it:
    opening it for append, or a folder beneath it for a checkpoint, would write
    somewhere nobody named. A link replaced by ``atomic_write`` is harmless, but
    the same name is appended to elsewhere, so the rule is one for every write.
    """
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise JobError(f"{path} is a link that leads out of {root} (to {real}); "
                       "moe-tui never writes through one: remove the link")
    try:
        _refuse_node(path, os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        pass


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], Any]) -> None:
    """Replace ``path`` so that readers see the old content or the new, never a mix.

    ``data`` is the content, or a function that writes it to a binary file
    (``torch.save``, ``PIL.Image.save``). The bytes go to a temporary file beside
    ``path`` (same filesystem, so the rename is atomic), are flushed to disk, and
    renamed over ``path``; if anything fails, the temporary file is removed.
    For files this tool names: a link at ``path`` is replaced, never followed, and
    a FIFO or device there is refused (renaming over /dev/null replaces the device
    node itself). A path a person named goes through ``write_named``.
    """
    path = Path(path)
    try:
        _refuse_node(path, os.lstat(path).st_mode)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        if is_no_space(e):  # no inode left
            raise NoSpace(path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            _write_to(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = out_of_space(tmp.parent, e)  # asked while the partial file still holds its blocks
        tmp.unlink(missing_ok=True)
        if full:
            raise NoSpace(path) from None
        raise
    remove_stale_temporaries(path)


def out_of_space(folder: Path, error: BaseException) -> bool:
    """Whether a failed write failed for want of space: ENOSPC or EDQUOT itself, or a library
    that turned it into its own error (torch.save: "unexpected pos ...") while the
    filesystem has almost nothing free."""
    if isinstance(error, OSError):
        return is_no_space(error)
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES


def remove_stale_temporaries(path: Path) -> None:
    """Remove ``.NAME.PID.*.tmp`` files of ``path`` that a killed writer left (SIGKILL during a
    checkpoint save); a live writer's are kept, since it is still writing them."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = leftover.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and process_start_ticks(int(pid)) is None:
            leftover.unlink(missing_ok=True)


def write_named(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], Any]) -> None:
    """Write a file a person named (``moe-tui export --out PATH``) as they would expect.

    A symlink is followed and its target replaced atomically (the link stays); a
    target that exists and is not a regular file (/dev/null, /dev/stdout, a FIFO)
    is written in place, since a rename would replace the node, not feed it.
    """
    try:
        kind = _node_kind(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        kind = None
    if kind is None:
        atomic_write(os.path.realpath(path), data)
        return
    with open(path, "wb") as f:  # follows the link /dev/stdout is; O_TRUNC does nothing to a device or FIFO
        _write_to(f, data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_record(path: str | os.PathLike, model, record: dict) -> None:
    """Write a record file (``atomic_write_json``) only if it fits its schema in ``engine.core.events``:
    a writer cannot leave what its reader would reject. A refusal is the writer's bug: TypeError."""
    try:
        validate_record(record, model)
    except RecordError as e:
        raise TypeError(f"{Path(path).name}: {e}") from None
    atomic_write_json(path, record)


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None if the file does not exist (no schema: the manager's own
    small files). ValueError if it is not JSON; RecordError (a ValueError) if it is not a readable file."""
    raw = _read_file(path)
    return None if raw is None else json.loads(raw)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file: a FIFO or a device in a run directory
    would block or feed a reader forever, so it is refused (``RecordError``) without reading it.
    FileNotFoundError as open() raises it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RecordError(f"{path}: not a regular file; remove it (the job writes a plain file)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_file(path: Path) -> bytes | None:
    """The bytes of a run file, None if it does not exist, or RecordError saying why it cannot be read."""
    try:
        with open_regular(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:  # permissions, a directory: the run is unreadable, with this cause
        raise RecordError(f"{path}: cannot read ({e.strerror or e})") from None


def read_record(path: Path, model) -> dict | None:
    """A record file validated against its schema (``engine.core.events``): the dict, None if the
    file does not exist, or ``RecordError`` with one line naming the file, the field and what is wrong."""
    raw = _read_file(path)
    return None if raw is None else parse_record(raw, model, str(path))




class RunDir:
    """Paths of one run directory, and its readers.

    The readers validate against the schema: a missing file is None, a file
    that does not fit raises ``RecordError`` (a ValueError) whose message is
    the one line to show.
    """

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

    def check_writable(self, runs_root: Path | None = None, only: Path | None = None) -> None:
        """JobError naming the first thing that would make a write to this run leave it.

        Every entry under the run directory (not following links) must stay inside it
        (``ensure_inside``): a ``stdout.log`` or ``checkpoints/`` linked elsewhere
        would have the job append or save there. ``runs_root``, the manager's
        ``runs/``: the run directory must then be a real directory in it, since a
        link would point the manager at another run or outside the workspace. A
        person's own ``engine ... --run-dir DIR`` may name a link: that is what they named.
        ``only``: check that one file of the run instead of every entry.
        """
        if runs_root is not None:
            if self.path.is_symlink():
                raise JobError(f"{self.path} is a link, not a run directory moe-tui made; "
                               "moe-tui never writes through one: remove the link")
            ensure_inside(self.path, runs_root)
        if only is not None:
            ensure_inside(only, self.path)
            return
        for folder, dirs, files in os.walk(self.path):
            for name in (*dirs, *files):
                ensure_inside(Path(folder, name), self.path)

    def read_run(self) -> dict | None:
        return read_record(self.run_json, RunRecord)

    def read_status(self) -> dict | None:
        return read_record(self.status, StatusRecord)

    def read_submit(self) -> dict | None:
        return read_record(self.submit_json, SubmitRecord)

    def read_launch(self) -> dict | None:
        return read_record(self.launch_json, LaunchRecord)

    def read_exit_code(self) -> int | None:
        raw = _read_file(self.exit_code_file)
        return None if raw is None else parse_exit_code(raw.decode("utf-8", "replace"), str(self.exit_code_file))

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



def iter_run_dirs(runs_root: Path) -> Iterator[RunDir]:
    """Run directories under ``runs_root`` (names that look like run ids), oldest first."""
    try:
        names = sorted(e.name for e in os.scandir(runs_root) if e.is_dir() and is_run_id(e.name))
    except FileNotFoundError:
        return
    for name in names:
        yield RunDir(Path(runs_root) / name)
