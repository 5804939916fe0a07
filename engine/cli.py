"""``engine``: run one job headless, into a run directory.

    engine train-expert --loss ce --preset quick
    engine train-expert --help

The run appears in ``moe-tui`` like any queued run: the manager reads the run
directory, never the process. Torch is imported only once a job starts.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time

from engine.core.config import JOBS, JobSpec, parse_argv
from engine.core.errors import ConfigError, JobError, NoSpace
from engine.core.events import SCHEMA_VERSION
from engine.core.procs import EXIT_BAD_INPUT, EXIT_NO_SPACE
from engine.core.recorder import RunRecorder
from engine.core.rundir import (
    RUNS_DIRNAME,
    WORKSPACE_ENV,
    RunDir,
    atomic_write_json,
    resolve_workspace,
)

USAGE = """usage: engine JOB [options]    (engine JOB --help lists a job's settings)

jobs:
{jobs}
"""


def _usage() -> str:
    width = max(map(len, JOBS))
    return USAGE.format(jobs="\n".join(f"  {k:<{width}}  {cls.help}" for k, cls in sorted(JOBS.items())))


def _fail_unstarted(run_dir: str, argv: list[str], error: str) -> None:
    """A manager-made run whose arguments are bad still ends with a status and a cause."""
    rd = RunDir(run_dir)
    # A run.json is another job's run (--run-dir named a used directory): its status is not ours to write.
    if rd.path.is_dir() and not rd.status.exists() and not rd.run_json.exists():
        now = time.time()
        atomic_write_json(rd.status, {"v": SCHEMA_VERSION, "run_id": rd.run_id, "state": "failed",
                                      "started_at": now, "ended_at": now, "exit_code": EXIT_BAD_INPUT,
                                      "error": error, "argv": argv})


def _make_run_dir(spec: JobSpec) -> RunDir:
    if spec.run_dir:
        rd = RunDir(spec.run_dir)
        if not rd.path.is_dir():
            raise JobError(f"--run-dir {rd.path} does not exist; leave it out to create a fresh run directory")
        rd.check_writable()  # before the first append: a stdout.log or checkpoints/ linked out of it
        return rd
    root = resolve_workspace(spec.workspace) / RUNS_DIRNAME
    try:
        return RunDir.create(root)
    except OSError as e:
        raise JobError(f"cannot create a run directory in {root} ({e.strerror}); "
                       "pass --workspace DIR or set MOE_TUI_WORKSPACE to a writable place") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else EXIT_BAD_INPUT
    if argv[0] == "mheight":  # `engine mheight VERB`: see engine/mheight/cli.py
        from engine.mheight.cli import main as mheight_main

        return mheight_main(argv[1:], main)
    try:
        spec = parse_argv(argv)
        rd = _make_run_dir(spec)
    except (ConfigError, JobError) as e:
        print(f"error: {e}", file=sys.stderr)
        run_dir = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--run-dir"), None)
        if run_dir:
            _fail_unstarted(run_dir, argv, str(e))
        return EXIT_BAD_INPUT

    cfg = spec.config
    job = importlib.import_module(type(cfg).job)
    print(f"run {rd.run_id}: {rd.path}", file=sys.stderr, flush=True)
    try:
        return _record(spec, cfg, job, rd)
    except JobError as e:  # from starting the record (run.json, status.json): the job never ran
        print(f"error: {e}", file=sys.stderr)
        try:
            _fail_unstarted(str(rd.path), argv, str(e))
        except JobError:  # a full disk: the exit code is the record
            pass
        return EXIT_NO_SPACE if isinstance(e, NoSpace) else EXIT_BAD_INPUT


def _record(spec, cfg, job, rd: RunDir) -> int:
    """Run the job inside its recorder; the recorder turns every failure of the job into a status."""
    with _workspace_env(spec.workspace), RunRecorder(
        rd,
        kind=spec.kind,
        config=cfg.model_dump(mode="json"),
        argv=spec.argv,
        name=spec.name or cfg.run_name(),
        total_epochs=cfg.total_epochs(),
        primary_metric=cfg.primary_metric,
        metric_goals=cfg.metric_goals,
    ) as rec:
        job.run(spec, rec)
    return rec.exit_code


@contextlib.contextmanager
def _workspace_env(workspace: str | None):
    """While the job runs, $MOE_TUI_WORKSPACE names an explicit --workspace, as a queued job's
    launcher sets it: the job looks up run ids there (``--logits-dir RUN_ID``). Restored after,
    for callers of ``main`` in their own process."""
    if not workspace:
        yield
        return
    before = os.environ.get(WORKSPACE_ENV)
    os.environ[WORKSPACE_ENV] = str(resolve_workspace(workspace))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(WORKSPACE_ENV, None)
        else:
            os.environ[WORKSPACE_ENV] = before


if __name__ == "__main__":
    raise SystemExit(main())
