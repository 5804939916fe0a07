"""What the TUI reads, shaped for display; called from thread workers only.

Returns plain dataclasses, never ORM objects, so nothing crosses threads
attached to a session.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from sqlmodel import col, func, select

from app.errors import UserError
from app.queries import slot_label
from app.store.models import LAUNCHED, Metric, MetricSummary, Run
from app.workspace import Workspace

LOG_TAIL = 64 << 10  # stdout.log bytes read per poll, and shown at first
PREVIEW_BYTES = 64 << 10  # artifact preview size
INGEST_EVERY_S = 1.0  # when no daemon runs, the TUI tails run directories itself
# Config fields shown in the Runs table's "config" column, in this order, when a run has them.
KEY_CONFIG = ("loss", "arch", "model", "routing", "gating")


def parse_tags(text: str) -> tuple[str, ...]:
    """``"Baseline, seed-sweep ,baseline"`` -> ``("baseline", "seed-sweep")``: lower-case, unique, sorted."""
    return tuple(sorted({t.strip().lower() for t in text.replace(" ", ",").split(",") if t.strip()}))


@dataclass(frozen=True)
class RunRow:
    pk: int
    run_id: str
    name: str
    kind: str
    status: str
    backend: str
    epoch: int
    total_epochs: int | None
    metric_key: str | None
    metric_best: float | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    error: str | None
    command: str
    config: dict = field(compare=False)
    best: dict[str, float] = field(default_factory=dict, compare=False)  # metric key -> best value
    final: dict[str, float] = field(default_factory=dict, compare=False)  # metric key -> last value
    tags: tuple[str, ...] = ()
    notes: str = ""
    priority: int = 0
    gpus: int = 0
    slots: str | None = None  # "gpu:0,1" or "cpu:3" while (and after) the daemon ran it locally
    slurm_job_id: str | None = None
    group_id: str | None = None  # runs of one sweep share it
    retry_of: str | None = None
    # "max" or "min": how the engine ranked metric_key for this run (MetricSummary.goal, from the
    # job's declared metric_goals or the key's name), so sorting puts its best runs first either way.
    metric_goal: str = "max"

    @property
    def where(self) -> str:
        """The slot a run holds (or held): GPUs, a CPU slot, or its Slurm job (and Slurm's state while it has it)."""
        return slot_label(self.status, self.slurm_job_id, self.slots, self.gpus)

    @property
    def key_config(self) -> str:
        """The settings that tell runs of a kind apart at a glance (loss/arch, model...)."""
        return "/".join(str(self.config[k]) for k in KEY_CONFIG if self.config.get(k) not in (None, ""))

    @property
    def progress(self) -> str:
        if self.total_epochs:
            return f"{self.epoch}/{self.total_epochs}"
        return str(self.epoch) if self.epoch else ""

    def duration(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or (now or time.time() if self.status == "running" else None)
        return None if end is None else max(0.0, end - self.started_at)


@dataclass(frozen=True)
class Linked:
    """A run related to another (lineage), or waited for (queue)."""

    pk: int
    run_id: str
    name: str
    kind: str
    status: str
    how: str  # "after" (a RunDependency), "{run:}" (a placeholder in the argv), "after+{run:}", "retry of", "retried by"


@dataclass(frozen=True)
class SlotUse:
    """One slot of this machine (a GPU or a CPU slot) and the runs on it."""

    slot: str  # "gpu 0 (NVIDIA H100, 81559 MiB)" or "cpu 2"
    capacity: int  # runs it can hold
    runs: tuple[tuple[int, str, str], ...]  # (pk, run_id, name) of each occupant


@dataclass(frozen=True)
class QueuedRun:
    pk: int
    run_id: str
    name: str
    kind: str
    status: str  # queued or blocked
    priority: int
    gpus: int
    backend: str
    position: int | None  # 1 = starts next; None for a blocked run
    waits_for: tuple[str, ...]  # parents that have not succeeded yet, "run_id (status)"
    error: str | None


@dataclass(frozen=True)
class QueueState:
    paused: bool
    daemon_pid: int | None
    limits: str  # "slots 2 GPU x 1 + 4 CPU, cap 3": GPUs x runs per GPU, CPU slots, cap on running runs
    slots: tuple[SlotUse, ...]
    elsewhere: tuple[tuple[int, str, str, str], ...]  # launched runs on no local slot: (pk, run_id, name, where)
    queued: tuple[QueuedRun, ...]


@dataclass(frozen=True)
class MetricPoint:
    id: int
    epoch: int | None
    key: str
    value: float


class TuiData:
    def __init__(self, ws: Workspace):
        self.ws = ws
        self._last_ingest = 0.0
        self._daemon_error: str | None = None

    def refresh_files(self) -> list[str]:
        """Ingest run directories if no daemon does it; returns new warnings."""
        from app.ingest import Ingester
        from app.queue.daemon import daemon_info

        now = time.monotonic()
        if now - self._last_ingest < INGEST_EVERY_S or daemon_info(self.ws) is not None:
            return []
        self._last_ingest = now
        warnings = Ingester(self.ws).run_pass().warnings
        from app.queue.daemon import ensure_daemon, needs_daemon

        if needs_daemon(self.ws):  # queued work and no daemon (it crashed, or idled out)
            try:
                ensure_daemon(self.ws)
                self._daemon_error = None
            except UserError as e:  # e.g. a broken moe-tui.toml: say it once, not every pass
                if str(e) != self._daemon_error:
                    warnings.append(str(e))
                self._daemon_error = str(e)
        return warnings

    def runs_since(self, rev: int) -> tuple[list[RunRow], int]:
        """Runs changed after ``rev`` and the newest rev seen.

        Reads plain columns, not ORM objects: at thousands of runs the object
        hydration, not SQLite, is what a person would wait for.
        """
        cols = (Run.id, Run.run_id, Run.name, Run.kind, Run.status, Run.backend, Run.epoch, Run.total_epochs,
                Run.primary_metric, Run.created_at, Run.started_at, Run.ended_at, Run.error, Run.command,
                Run.config, Run.tags, Run.notes, Run.priority, Run.gpus, Run.slots, Run.slurm_job_id, Run.group_id,
                Run.retry_of, Run.rev)
        best: dict[int, dict[str, float]] = {}
        final: dict[int, dict[str, float]] = {}
        goals: dict[int, dict[str, str]] = {}
        with self.ws.store.read() as s:
            runs = s.exec(select(*cols).where(Run.rev > rev).order_by(Run.rev)).all()
            pks = [r[0] for r in runs]
            for i in range(0, len(pks), 500):  # stay under SQLite's bound-parameter limit
                q = select(MetricSummary.run, MetricSummary.key, MetricSummary.best, MetricSummary.last,
                           MetricSummary.goal).where(col(MetricSummary.run).in_(pks[i : i + 500]))
                for pk, key, b, last, goal in s.exec(q):
                    goals.setdefault(pk, {})[key] = goal
                    if b is not None:
                        best.setdefault(pk, {})[key] = b
                    if last is not None:
                        final.setdefault(pk, {})[key] = last
        rows = []
        for (pk, run_id, name, kind, status, backend, epoch, total, primary, created, started, ended, error,
             command, config, tags, notes, priority, gpus, slots, slurm_job_id, group_id, retry_of, _rev) in runs:
            b = best.get(pk, {})
            rows.append(RunRow(
                pk=pk, run_id=run_id, name=name, kind=kind, status=status, backend=backend, epoch=epoch,
                total_epochs=total, metric_key=primary, metric_best=b.get(primary or ""), created_at=created,
                started_at=started, ended_at=ended, error=error, command=command, config=json.loads(config or "{}"),
                best=b, final=final.get(pk, {}), tags=parse_tags(tags), notes=notes, priority=priority, gpus=gpus,
                slots=slots, slurm_job_id=slurm_job_id, group_id=group_id, retry_of=retry_of,
                metric_goal=goals.get(pk, {}).get(primary or "", "max"),
            ))
        return rows, max([rev] + [r[-1] for r in runs])

    def run_count(self) -> int:
        with self.ws.store.read() as s:
            return s.exec(select(func.count()).select_from(Run)).one()

    def deleted_since(self, known: set[int]) -> set[int]:
        """Which of the runs the TUI shows no longer exist (after a reindex or a delete)."""
        if not known:
            return set()
        with self.ws.store.read() as s:
            present = set(s.exec(select(Run.id).where(col(Run.id).in_(list(known)))).all())
        return known - present

    def metrics_since(self, run_pk: int, after_id: int) -> list[MetricPoint]:
        """Metric rows of a run newer than ``after_id`` (plain columns: no ORM objects to build)."""
        q = (select(Metric.id, Metric.epoch, Metric.key, Metric.value)
             .where(Metric.run == run_pk, Metric.id > after_id).order_by(Metric.id))
        with self.ws.store.read() as s:
            return [MetricPoint(*row) for row in s.exec(q)]

    # -- writes: short writer sessions that bump rev so every client's poll sees them

    def set_tags(self, run_pk: int, tags: tuple[str, ...]) -> None:
        from app.queue.control import annotate

        annotate(self.ws, self._run_id(run_pk), tags=tags)

    def set_notes(self, run_pk: int, notes: str) -> None:
        from app.queue.control import annotate

        annotate(self.ws, self._run_id(run_pk), notes=notes)

    def delete_run(self, run_pk: int) -> str:
        from app.queue.control import delete

        return delete(self.ws, self._run_id(run_pk))

    def _run_id(self, run_pk: int) -> str:
        with self.ws.store.read() as s:
            run = s.get(Run, run_pk)
        if run is None:
            raise UserError("that run no longer exists (deleted elsewhere, or the database was rebuilt)")
        return run.run_id

    # -- lineage and queue

    def lineage(self, run_pk: int) -> tuple[list[Linked], list[Linked]]:
        """(runs that fed this one, runs that consume it): RunDependency edges and
        ``{run:ID}`` placeholders in the argv, plus the run it retries and its retries."""
        from app.queue.deps import placeholders
        from app.store.models import RunDependency

        cols = (Run.id, Run.run_id, Run.name, Run.kind, Run.status)
        with self.ws.store.read() as s:
            run = s.exec(select(Run.run_id, Run.argv, Run.retry_of).where(Run.id == run_pk)).first()
            if run is None:
                raise UserError("that run no longer exists")
            run_id, argv, retry_of = run
            feeds: dict[int, tuple[tuple, set[str]]] = {}
            for row in s.exec(select(*cols).join(RunDependency, RunDependency.parent == Run.id)
                              .where(RunDependency.run == run_pk)):
                feeds.setdefault(row[0], (row, set()))[1].add("after")
            refs = placeholders(json.loads(argv or "[]"))
            if refs:
                for row in s.exec(select(*cols).where(col(Run.run_id).in_(refs))):
                    feeds.setdefault(row[0], (row, set()))[1].add("{run:}")
            if retry_of:
                for row in s.exec(select(*cols).where(Run.run_id == retry_of)):
                    feeds.setdefault(row[0], (row, set()))[1].add("retry of")
            consumers: dict[int, tuple[tuple, set[str]]] = {}
            for row in s.exec(select(*cols).join(RunDependency, RunDependency.run == Run.id)
                              .where(RunDependency.parent == run_pk)):
                consumers.setdefault(row[0], (row, set()))[1].add("after")
            # argv holds ``{run:<run_id>}`` verbatim until launch, so a LIKE finds the consumers.
            for row in s.exec(select(*cols).where(col(Run.argv).contains("{run:" + run_id + "}"))):
                consumers.setdefault(row[0], (row, set()))[1].add("{run:}")
            for row in s.exec(select(*cols).where(Run.retry_of == run_id)):
                consumers.setdefault(row[0], (row, set()))[1].add("retried by")

        def linked(found):
            return [Linked(*row, how="+".join(sorted(how))) for row, how in sorted(found.values(), key=lambda v: v[0][1])]

        return linked(feeds), linked(consumers)

    def queue_state(self) -> QueueState:
        """Slots and their occupants, and the waiting runs in the order the daemon would start them."""
        from app.queue.control import is_paused
        from app.queue.daemon import daemon_info
        from app.queue.deps import parents_of
        from app.queue.order import start_key
        from app.queue.settings import load_settings
        from app.queue.slots import Occupancy, discover_gpus
        from app.store.models import BLOCKED

        q = load_settings(self.ws.root).queue
        gpus = discover_gpus()
        info = daemon_info(self.ws)
        with self.ws.store.read() as s:
            running = s.exec(select(Run.id, Run.run_id, Run.name, Run.slots, Run.backend, Run.slurm_job_id, Run.status)
                             .where(col(Run.status).in_(LAUNCHED))).all()
            waiting = s.exec(select(Run).where(col(Run.status).in_(("queued", BLOCKED)))).all()
            parents = parents_of(s, [r.id for r in waiting])
            # Plain tuples: nothing ORM leaves this session.
            waiting = [(r.id, r.run_id, r.name, r.kind, r.status, r.priority, r.gpus, r.backend, r.error,
                        tuple(f"{p.run_id} ({p.status})" for p in parents[r.id] if p.status != "succeeded"))
                       for r in waiting]
        on_slot: dict[str, list[tuple[int, str, str]]] = {}
        elsewhere = []
        for pk, run_id, name, slots, backend, job, status in running:
            occ = Occupancy()
            if not job:
                occ.take(slots)
            keys = [f"gpu {i}" for i in occ.gpu] + [f"cpu {i}" for i in occ.cpu]
            for k in keys:
                on_slot.setdefault(k, []).append((pk, run_id, name))
            if not keys:  # a Slurm job says what Slurm does with it: "slurm:123 PENDING (Priority)"
                elsewhere.append((pk, run_id, name, slot_label(status, job, slots, 0) if job else backend))
        slots = [SlotUse(f"gpu {g.index}" + (f" ({g.name}, {g.memory_mib} MiB)" if g.name else ""), q.runs_per_gpu,
                         tuple(on_slot.pop(f"gpu {g.index}", []))) for g in gpus]
        slots += [SlotUse(f"cpu {i}", 1, tuple(on_slot.pop(f"cpu {i}", []))) for i in range(q.cpu_slots)]
        # Runs on slots the settings no longer list (cpu_slots lowered while they ran) still show.
        slots += [SlotUse(k, 0, tuple(v)) for k, v in sorted(on_slot.items())]
        # The daemon's start order (app/queue/order.py); blocked runs, which it will not start, last.
        waiting.sort(key=lambda w: (w[4] == BLOCKED, *start_key(w[5], w[0])))
        queued, position = [], 0
        for pk, run_id, name, kind, status, priority, g, backend, error, waits in waiting:
            if status != BLOCKED:
                position += 1
            queued.append(QueuedRun(pk, run_id, name, kind, status, priority, g, backend,
                                    position if status != BLOCKED else None, waits, error))
        limits = f"slots {len(gpus)} GPU x {q.runs_per_gpu} + {q.cpu_slots} CPU" + (f", cap {q.max_running}" if q.max_running else "")
        return QueueState(is_paused(self.ws), (info or {}).get("pid"), limits, tuple(slots), tuple(elsewhere),
                          tuple(queued))

    # -- run directory reads (bounded)

    def read_log(self, run_id: str, offset: int | None) -> tuple[str, int]:
        """New text of stdout.log after ``offset`` (None: start with its last LOG_TAIL bytes)."""
        path = self.ws.run_dir(run_id).stdout_log
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if offset is None or offset > size:  # first read, or the log was replaced
                    offset = max(0, size - LOG_TAIL)
                f.seek(offset)
                data = f.read(LOG_TAIL)
        except FileNotFoundError:
            return "", offset or 0
        end = data.rfind(b"\n") + 1  # whole lines only; the rest comes next time
        return data[:end].decode("utf-8", "replace"), offset + end

    def artifacts(self, run_id: str) -> list[tuple[str, int]]:
        """(path relative to artifacts/, size in bytes) of every artifact file."""
        root = self.ws.run_dir(run_id).artifacts
        if not root.is_dir():
            return []
        return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())

    def artifact_text(self, run_id: str, rel: str) -> str:
        """The start of a text artifact (JSON pretty-printed), for the preview pane."""
        root = self.ws.run_dir(run_id).artifacts.resolve()
        path = (root / rel).resolve()
        if root not in path.parents:
            raise UserError(f"{rel} is outside the run's artifacts/")
        with open(path, "rb") as f:
            data = f.read(PREVIEW_BYTES)
        if b"\0" in data:
            return f"{rel}: binary file, {path.stat().st_size} bytes"
        text = data.decode("utf-8", "replace")
        if path.suffix == ".json" and len(data) < PREVIEW_BYTES:
            try:
                text = json.dumps(json.loads(text), indent=2)
            except ValueError:
                pass
        return text

    # -- compare and export

    def series(self, run_pks: list[int], keys: list[str]) -> dict[int, dict[str, list[tuple[int, float]]]]:
        """Per run and key, the (epoch, value) points, through the (run, key, epoch) index."""
        out: dict[int, dict[str, list[tuple[int, float]]]] = {pk: {k: [] for k in keys} for pk in run_pks}
        with self.ws.store.read() as s:
            for pk in run_pks:
                q = (select(Metric.key, Metric.epoch, Metric.value)
                     .where(Metric.run == pk, col(Metric.key).in_(keys), col(Metric.epoch).is_not(None))
                     .order_by(Metric.key, Metric.epoch))
                for key, epoch, value in s.exec(q):
                    out[pk][key].append((epoch, value))
        return out

    def export_csv(self, run_pks: list[int], out_path: str, history: bool = False) -> int:
        """The same CSV as ``moe-tui export``, for these runs (oldest first)."""
        from app.export import export

        with self.ws.store.read() as s:
            runs = list(s.exec(select(Run).where(col(Run.id).in_(run_pks)).order_by(Run.id)).all())
            return export(s, runs, out_path, history=history)
