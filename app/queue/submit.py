"""Put runs on the queue: validate, capture what ran, write submit.json, add the rows.

submit.json holds everything the queue knows about a run (dependencies,
GPUs, sweep group, backend), so ``moe-tui reindex`` rebuilds the queue from
the run directories alone.
"""

from __future__ import annotations

import itertools
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, select

from app.errors import UserError
from app.queries import find_run
from app.queue.deps import placeholders, rewrite_placeholders
from app.queue import sweep
from app.queue.settings import BACKENDS, load_settings
from app.queue.slots import discover_gpus
from app.store.models import Run, RunDependency, next_rev
from app.workspace import Workspace
from engine.core.config import parse_argv
from engine.core.errors import ConfigError
from engine.core.events import SCHEMA_VERSION
from engine.core.recorder import git_state
from engine.core.rundir import RunDir, atomic_write, atomic_write_json

GIT_DIFF_ARTIFACT = "git.diff"


@dataclass
class Repro:
    """What is needed to run it again, captured once per command (a sweep shares it)."""

    git: dict
    diff: str | None
    command: str
    python: str
    packages: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict:
        return {"git": self.git, "command": self.command, "python": self.python, "packages": self.packages,
                "diff_artifact": f"artifacts/{GIT_DIFF_ARTIFACT}" if self.diff else None}


def capture_repro(command: list[str] | None = None) -> Repro:
    """Git commit, dirty flag and diff of the code the job will run, the command, the packages."""
    from importlib import metadata

    import engine.core.rundir

    src = Path(engine.core.rundir.__file__).resolve().parent  # where RunRecorder looks too
    git = git_state(src)
    diff = None
    if git.get("dirty"):
        try:
            out = subprocess.run(["git", "-C", str(src), "diff", "HEAD"], capture_output=True, text=True, timeout=30)
            diff = out.stdout if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            diff = None
    packages = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name] = dist.version
    cmd = shlex.join(command if command is not None else ["moe-tui", *sys.argv[1:]])
    return Repro(git, diff, cmd, sys.version.split()[0], dict(sorted(packages.items(), key=lambda kv: kv[0].lower())))


def resolve_parents(s: Session, refs: list[str], names: dict[str, str] | None = None) -> dict[str, str]:
    """REF -> run_id for --after and ``{run:REF}``; UserError for a run that does not exist."""
    out = {}
    for ref in refs:
        if names and ref in names:
            out[ref] = names[ref]
        else:
            try:
                out[ref] = find_run(s, ref).run_id
            except UserError as e:
                raise UserError(f"dependency: {e}") from None
    return out


def default_gpus(backend: str) -> int:
    """A local run on a GPU machine gets one GPU unless it says otherwise."""
    return 1 if backend == "local" and discover_gpus() else 0


def check_gpus(gpus: int, backend: str) -> None:
    if gpus < 0:
        raise UserError(f"--gpus {gpus}: give 0 (CPU) or more")
    if backend != "local" or gpus == 0:
        return
    have = discover_gpus()
    if gpus > len(have):
        listed = ", ".join(str(g.index) for g in have) or "none"
        raise UserError(f"the run asks for {gpus} GPU(s) but this machine has {len(have)} (GPUs: {listed}); "
                        "ask for fewer with --gpus, or use --backend slurm")


def validate(argv: list[str]):
    try:
        spec = parse_argv(argv)
    except ConfigError as e:
        raise UserError(str(e)) from None
    if spec.run_dir or spec.workspace:
        raise UserError("leave out --run-dir and --workspace: moe-tui places queued runs in the workspace's runs/")
    return spec


def check_request(ws: Workspace, argv: list[str], backend: str | None = None, gpus: int | None = None,
                  slurm: list[str] | tuple[str, ...] = (), slurm_base: dict | None = None):
    """Everything ``submit`` checks before it writes anything: (spec, backend, gpus, slurm settings),
    or the UserError. A pipeline calls it for every step first, so a bad step queues nothing."""
    backend = backend or load_settings(ws.root).queue.default_backend
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    gpus = default_gpus(backend) if gpus is None else gpus
    check_gpus(gpus, backend)
    slurm_overrides = parse_slurm_overrides(slurm, backend, slurm_base)
    return validate(argv), backend, gpus, slurm_overrides


def submit(
    ws: Workspace,
    argv: list[str],
    name: str | None = None,
    backend: str | None = None,
    priority: int = 0,
    gpus: int | None = None,
    after: list[str] | tuple[str, ...] = (),
    group_id: str | None = None,
    pipeline_id: str | None = None,
    retry_of: str | None = None,
    repro: Repro | None = None,
    names: dict[str, str] | None = None,
    slurm: list[str] | tuple[str, ...] = (),
    slurm_base: dict | None = None,
) -> Run:
    """Queue ``engine <argv>`` after the runs in ``after``; the job's own parser validates it now.

    ``names`` maps pipeline step names to run ids for ``--after``/``{run:NAME}``.
    ``slurm_base``: per-run [slurm] settings (a retried run's), which ``slurm`` items change.
    """
    spec, backend, gpus, slurm_overrides = check_request(ws, argv, backend, gpus, slurm, slurm_base)
    repro = repro or capture_repro()

    with ws.store.read() as s:
        refs = list(dict.fromkeys([*after, *placeholders(spec.argv)]))
        parents = resolve_parents(s, refs, names)
    job_argv = rewrite_placeholders(spec.argv, parents)

    rd = RunDir.create(ws.runs)
    now = time.time()
    record = {
        "v": SCHEMA_VERSION,
        "run_id": rd.run_id,
        "name": name or spec.name or spec.config.run_name(),
        "kind": spec.kind,
        "argv": job_argv,
        "command": shlex.join(["engine", *job_argv]),
        "config": spec.config.model_dump(mode="json"),
        "backend": backend,
        "priority": priority,
        "gpus": gpus,
        "after": sorted(set(parents.values())),
        "group_id": group_id,
        "pipeline_id": pipeline_id,
        "retry_of": retry_of,
        "created_at": now,
        "total_epochs": spec.config.total_epochs(),
        "primary_metric": spec.config.primary_metric,
        "repro": repro.record(),
        "slurm": slurm_overrides,
    }
    try:
        if repro.diff:
            rd.artifacts.mkdir(exist_ok=True)
            atomic_write(rd.artifacts / GIT_DIFF_ARTIFACT, repro.diff.encode())
        # The file first: if the database is lost, reindex finds the queued run here.
        atomic_write_json(rd.submit_json, record)
    except BaseException:
        shutil.rmtree(rd.path, ignore_errors=True)  # made just now and not yet a run: no half-made one stays
        raise
    with ws.store.write() as s:
        # A daemon's ingest pass may have found submit.json and added the row
        # already (it runs between our file write and this transaction): same
        # values either way, so take its row.
        existing = s.exec(select(Run).where(Run.run_id == rd.run_id)).first()
        run = Run(
            run_id=rd.run_id,
            name=record["name"],
            kind=spec.kind,
            status="queued",
            backend=backend,
            config=json.dumps(record["config"], sort_keys=True),
            argv=json.dumps(job_argv),
            command=record["command"],
            run_dir=ws.relative(rd.path),
            created_at=now,
            priority=priority,
            gpus=gpus,
            group_id=group_id,
            pipeline_id=pipeline_id,
            retry_of=retry_of,
            git_commit=repro.git.get("commit"),
            git_dirty=repro.git.get("dirty"),
            total_epochs=record["total_epochs"],
            primary_metric=record["primary_metric"],
            rev=next_rev(s),
        )
        if existing is not None:
            for key, value in run.model_dump(exclude={"id"}).items():
                setattr(existing, key, value)
            run = existing
        s.add(run)
        s.flush()
        for parent_id in record["after"]:
            parent = find_run(s, parent_id)
            if s.get(RunDependency, (run.id, parent.id)) is None:
                s.add(RunDependency(run=run.id, parent=parent.id))
    return run


def parse_slurm_overrides(items, backend: str, base: dict | None = None) -> dict:
    """``["time=0:05:00", "partition=gpu"]`` -> validated per-run [slurm] settings.

    ``base``: the settings of the run being retried, which ``items`` change.
    """
    if backend == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--backend slurm needs Slurm's sbatch on PATH; install the Slurm client or use --backend local")
    if not items:
        return dict(base or {})
    if backend != "slurm":
        raise UserError("--slurm settings only apply to --backend slurm")
    from pydantic import ValidationError

    from app.queue.settings import SlurmSettings, error_text

    values: dict = dict(base or {})
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in SlurmSettings.model_fields:
            raise UserError(f"--slurm expects KEY=VALUE with KEY one of {', '.join(SlurmSettings.model_fields)}; got {item!r}")
        if not value.strip():
            raise UserError(f"--slurm {key}= has no value; give one ({key}=...) or leave it out for moe-tui.toml's")
        values[key] = value.split(",") if key == "extra" else value
    try:
        SlurmSettings.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--slurm {err['loc'][0]}: {error_text(err)}") from None
    return values


# --------------------------------------------------------------------------- #
# Sweeps


def sweep_base(name: str | None, argv: list[str]) -> str:
    """What a sweep's run names start with: the name given, else the first run's own name."""
    if name:
        return name
    spec = validate(argv)
    return spec.name or spec.config.run_name()


def submit_sweep(ws: Workspace, argv: list[str], sweeps: list[str], name: str | None = None, **kw) -> list[Run]:
    """One run per combination, ``--set key=value`` appended, all sharing a group id.

    Every combination is validated before any is queued, so a bad value
    queues nothing.
    """
    combos = sweep.expand(sweep.parse_cli(sweeps))
    argvs = [[*argv, *itertools.chain.from_iterable(("--set", f"{k}={v}") for k, v in combo)] for combo in combos]
    for a in argvs:
        validate(a)
    base = sweep_base(name, argvs[0])
    group = sweep.new_group_id()
    repro = kw.pop("repro", None) or capture_repro()
    return [submit(ws, a, name=sweep.run_name(base, combo), group_id=group, repro=repro, **kw)
            for combo, a in zip(combos, argvs)]
