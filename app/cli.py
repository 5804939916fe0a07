"""``moe-tui``: the manager's command line. With no command it opens the TUI.

Commands import what they need when they run, so ``moe-tui ls`` starts fast
and nothing here pulls in torch or Textual.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.controls import escaped
from app.errors import UserError, disk_full, disk_full_message
from engine.core.errors import JobError

cli = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Queue, watch and compare Mixture-of-Experts runs. With no command, open the TUI.",
)
daemon_cli = typer.Typer(help="The queue daemon of this workspace (started on demand).")
cli.add_typer(daemon_cli, name="daemon")

WorkspaceOpt = Annotated[
    Optional[str],
    typer.Option("--workspace", "-w", help="workspace directory [default: $MOE_TUI_WORKSPACE or the current directory]"),
]
_global_workspace: str | None = None

# Written out, not built from app.store.models.STATUSES: importing the store here would slow every
# command's start (tests/test_cli.py checks the two agree). The error for an unknown status sends
# people here, so this help is where the whole list lives.
StatusOpt = Annotated[Optional[str], typer.Option(
    help="only runs with this status: queued, pending, running, succeeded, failed, cancelled, lost, "
         "blocked or unreadable (a run file that does not fit its schema; the note says which); any "
         "unambiguous beginning will do (run: running)")]
KindOpt = Annotated[Optional[str], typer.Option(
    help="only runs of this job kind (`engine --help` lists them); any unambiguous beginning will do "
         "(recompute-lo: recompute-logits)")]


def _workspace(explicit: str | None):
    from app.workspace import Workspace

    return Workspace.open(explicit or _global_workspace)


def _refresh(ws) -> None:
    """What every reading command does first: ingest, and restart the daemon if work is waiting."""
    from app.ingest import Ingester
    from app.queue.daemon import ensure_daemon, needs_daemon

    for w in Ingester(ws).run_pass().warnings:
        print(escaped(f"warning: {w}"), file=sys.stderr)
    if needs_daemon(ws):
        ensure_daemon(ws)


@cli.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    no_mouse: Annotated[bool, typer.Option("--no-mouse", help="do not capture the mouse (keeps terminal selection)")] = False,
) -> None:
    global _global_workspace
    _global_workspace = workspace
    if ctx.invoked_subcommand is None:
        from app.tui.app import run_tui

        ws = _workspace(None)
        run_tui(ws, mouse=not no_mouse)


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    args: Annotated[Optional[list[str]], typer.Argument(help="the engine job and its options, after --")] = None,
    name: Annotated[Optional[str], typer.Option(help="a name for the run")] = None,
    priority: Annotated[int, typer.Option(help="higher starts first")] = 0,
    backend: Annotated[Optional[str], typer.Option(help="where to run: local or slurm [default: moe-tui.toml's, else local]")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs the run needs [default: 1 on a GPU machine, else 0]")] = None,
    after: Annotated[Optional[list[str]], typer.Option("--after", help="start only after this run succeeded; repeatable")] = None,
    sweep: Annotated[Optional[list[str]], typer.Option("--sweep", help="key=v1,v2: one run per combination; repeatable")] = None,
    slurm: Annotated[Optional[list[str]], typer.Option("--slurm", help="KEY=VALUE: a [slurm] setting for this run (time=0:30:00); repeatable")] = None,
    workspace: WorkspaceOpt = None,
) -> int:
    """Queue an engine job: moe-tui submit -- train-expert --loss ce --preset quick"""
    from app.queue.daemon import ensure_daemon
    from app.queue.submit import submit as do_submit
    from app.queue.submit import submit_sweep

    if not args:
        raise UserError("say what to run after --, e.g. moe-tui submit -- train-expert --loss ce --preset quick")
    ws = _workspace(workspace)
    kw = dict(backend=backend, priority=priority, gpus=gpus, after=list(after or []), slurm=list(slurm or []))
    runs = submit_sweep(ws, list(args), list(sweep), name=name, **kw) if sweep else [do_submit(ws, list(args), name=name, **kw)]
    started = ensure_daemon(ws)
    for run in runs:
        print(escaped(f"queued {run.run_id}  {run.name}  ({run.command})"))
    if sweep:
        print(f"sweep group {runs[0].group_id}: {len(runs)} runs")
    if started:
        print("started the queue daemon")
    return 0


@cli.command()
def pipeline(
    spec: Annotated[str, typer.Argument(help="a pipeline file (YAML or JSON), or a named pipeline: lt, mheight, demo")],
    backend: Annotated[Optional[str], typer.Option(help="backend of steps that do not name one")] = None,
    print_: Annotated[bool, typer.Option("--print", help="print the pipeline file (to copy and edit) instead of queueing it")] = False,
    workspace: WorkspaceOpt = None,
) -> int:
    """Queue a pipeline: steps with dependencies, downstream steps reading upstream run directories."""
    from app.queue.daemon import ensure_daemon
    from app.queue.pipeline import load_pipeline, named_pipeline_path, queue_pipeline

    if print_:
        spec_path = named_pipeline_path(spec) or Path(spec)
        load_pipeline(spec)  # a broken file is reported, not printed
        sys.stdout.write(spec_path.read_text())
        return 0
    ws = _workspace(workspace)
    queued = queue_pipeline(ws, load_pipeline(spec), backend=backend)
    ensure_daemon(ws)
    width = max(len(n) for n, _ in queued)
    for step, run in queued:
        print(escaped(f"queued {run.run_id}  {step:<{width}}  {run.command}"))
    print(escaped(f"pipeline {queued[0][1].pipeline_id}: {len(queued)} runs"))
    return 0


@cli.command()
def cancel(
    runs: Annotated[list[str], typer.Argument(help="runs to cancel (id, unique prefix, or name)")],
    workspace: WorkspaceOpt = None,
) -> int:
    """Cancel runs: queued ones at once; running ones get SIGTERM, then SIGKILL after the grace period."""
    from app.queue.control import cancel as do_cancel
    from app.queue.daemon import ensure_daemon

    ws = _workspace(workspace)
    for ref in runs:
        run = do_cancel(ws, ref)
        print(f"{run.run_id}  " + ("cancelled" if run.status == "cancelled" else "cancel requested (the daemon stops it)"))
    ensure_daemon(ws)
    return 0


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def retry(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="a finished run (id, unique prefix, or name)")],
    resume: Annotated[bool, typer.Option("--resume", help="continue from the old run's checkpoints/last.pth")] = False,
    slurm: Annotated[Optional[list[str]], typer.Option("--slurm", help="KEY=VALUE: change one of the run's [slurm] settings (time=4:00:00); repeatable")] = None,
    workspace: WorkspaceOpt = None,
) -> int:
    """Queue a new run with the same config and Slurm settings; runs blocked on the old one wait for the new one.

    Trust is not carried over: a run given --trust-pickle is retried with `moe-tui retry RUN --trust-pickle`."""
    from app.queue.control import retry as do_retry
    from app.queue.daemon import ensure_daemon

    ws = _workspace(workspace)
    _refresh(ws)
    new = do_retry(ws, run, resume_from_last=resume, slurm=list(slurm or []), trust=list(ctx.args))
    ensure_daemon(ws)
    print(escaped(f"queued {new.run_id}  {new.name}  (retry of {new.retry_of})"))
    return 0


@cli.command()
def pause(workspace: WorkspaceOpt = None) -> int:
    """Stop starting queued runs (running ones carry on)."""
    from app.queue.control import pause as do_pause

    print("queue paused" if do_pause(_workspace(workspace)) else "queue was already paused")
    return 0


@cli.command("resume")
def resume_(workspace: WorkspaceOpt = None) -> int:
    """Start queued runs again after `moe-tui pause`."""
    from app.queue.control import resume as do_resume
    from app.queue.daemon import ensure_daemon

    ws = _workspace(workspace)
    print("queue resumed" if do_resume(ws) else "queue was not paused")
    ensure_daemon(ws)
    return 0


@cli.command("ls")
def ls_(
    status: StatusOpt = None,
    kind: KindOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", help="the newest N runs")] = None,
    workspace: WorkspaceOpt = None,
) -> int:
    """List runs, oldest first, with progress and the key metric."""
    from app.queries import duration_s, fmt_duration, list_runs, slot_label, summaries
    from app.store.models import LAUNCHED

    ws = _workspace(workspace)
    _refresh(ws)
    with ws.store.read() as s:
        runs = list_runs(s, status=status, kind=kind, limit=limit)
        summ = summaries(s, [r.id for r in runs])
    if not runs:
        print(f"no runs in {ws.root}; queue one with: moe-tui submit -- train-expert --preset quick")
        return 0
    rows = [("ID", "STATUS", "KIND", "NAME", "EPOCH", "KEY METRIC (best)", "TIME", "NOTE")]
    for r in runs:
        m = summ.get(r.id, {}).get(r.primary_metric or "")
        metric = f"{r.primary_metric} {m.best:.4f}" if m and m.best is not None else ""
        epoch = f"{r.epoch}/{r.total_epochs}" if r.total_epochs else (str(r.epoch) if r.epoch else "")
        # A launched Slurm run says where Slurm has it: "slurm:123 PENDING (Priority)".
        note = escaped(r.error or (slot_label(r.status, r.slurm_job_id, r.slots, r.gpus) if r.slurm_job_id and r.status in LAUNCHED else ""))[:60]
        rows.append(tuple(map(escaped, (r.run_id, r.status, r.kind, r.name, epoch, metric, fmt_duration(duration_s(r)), note))))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1]).rstrip())
    return 0


@cli.command()
def show(run: Annotated[str, typer.Argument(help="run id (or a unique prefix, or name)")], workspace: WorkspaceOpt = None) -> int:
    """Everything about one run: status, config, metrics, files."""
    from app.queries import duration_s, find_run, fmt_duration, slot_label, summaries
    from app.store.models import IngestState

    ws = _workspace(workspace)
    _refresh(ws)
    with ws.store.read() as s:
        r = find_run(s, run)
        summ = summaries(s, [r.id]).get(r.id, {})
        state = s.get(IngestState, r.id)
    rd = ws.run_dir(r.run_id)
    print(escaped(f"run       {r.run_id}  {r.name}"))
    print(f"status    {r.status}" + (f" (exit code {r.exit_code})" if r.exit_code not in (None, 0) else ""))
    if r.error:
        print(escaped(f"error     {r.error}"))
    print(escaped(f"kind      {r.kind}   backend {r.backend}   host {r.host or '-'}"))
    from app.queue.deps import parents_of

    with ws.store.read() as s:
        parents = [p.run_id for p in parents_of(s, [r.id])[r.id]]
    where = slot_label(r.status, r.slurm_job_id, r.slots, r.gpus) or "-"
    print(escaped(f"queue     priority {r.priority}   gpus {r.gpus}   slot {where}   after {', '.join(parents) or '-'}"))
    if r.group_id or r.pipeline_id or r.retry_of:
        print(f"group     sweep {r.group_id or '-'}   pipeline {r.pipeline_id or '-'}   retry of {r.retry_of or '-'}")
    print(f"progress  epoch {r.epoch}/{r.total_epochs or '?'}   time {fmt_duration(duration_s(r)) or '-'}")
    print(escaped(f"command   {r.command}"))
    print(escaped(f"git       {r.git_commit or '-'}" + (" (dirty)" if r.git_dirty else "")))
    print(escaped(f"dir       {rd.path}"))
    if state and state.warning:
        print(escaped(f"warning   {state.warning}"))
    print("config")
    config = {escaped(k): escaped(v) for k, v in json.loads(r.config or "{}").items()}
    width = max(map(len, config), default=0)  # columns line up whatever the longest name
    for k, v in sorted(config.items()):
        print(f"  {k:<{width}}  {v}")
    if summ:
        summ = {escaped(k): m for k, m in summ.items()}
        width = max(16, *map(len, summ))
        print(f"{'metrics':<{width + 2}} {'final':>12} {'best':>12}  best epoch")
        for k in sorted(summ):
            m = summ[k]
            be = "" if m.best_epoch is None else str(m.best_epoch)
            print(f"  {k:<{width}} {m.last:>12.5g} {m.best:>12.5g}  {be}".rstrip())
    tail = rd.tail_log(2000).splitlines()[-5:]
    if tail:
        print("log (last lines of stdout.log)")
        for line in tail:
            print(escaped(f"  {line}"))
    return 0


@cli.command("export")
def export_(
    out: Annotated[str, typer.Option("--out", "-o", help="CSV file to write, or - for stdout")],
    history: Annotated[bool, typer.Option(help="per-epoch long form: run_id, epoch, key, value")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="write text starting with = + - @ tab or CR as it is, "
                                      "not with the leading ' that keeps a spreadsheet from running it as a formula")] = False,
    status: StatusOpt = None,
    kind: KindOpt = None,
    workspace: WorkspaceOpt = None,
) -> int:
    """Export runs to CSV: one row per run, config and final/best metrics as columns.

    Text a spreadsheet would run as a formula (a name or value starting with = + - @ tab or CR) gets a leading ' (OWASP's rule against CSV injection); numbers stay numbers (-0.5). --raw writes it as it is."""
    from app.export import export
    from app.queries import list_runs

    ws = _workspace(workspace)
    _refresh(ws)
    with ws.store.read() as s:
        runs = list_runs(s, status=status, kind=kind)
        n = export(s, runs, out, history=history, raw=raw)
    if out != "-":
        print(f"wrote {n} rows to {out}", file=sys.stderr)
    return 0


@cli.command()
def wait(
    runs: Annotated[Optional[list[str]], typer.Argument(help="runs to wait for [default: every queued or running run]")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="give up after this many seconds")] = None,
    workspace: WorkspaceOpt = None,
) -> int:
    """Wait until runs finish, printing each change; exit 0 only if all succeeded."""
    from sqlmodel import col, select

    from app.queries import find_run
    from app.store.models import ACTIVE, Run

    ws = _workspace(workspace)
    _refresh(ws)
    with ws.store.read() as s:
        if runs:
            pks = [find_run(s, ref).id for ref in runs]
        else:
            pks = list(s.exec(select(Run.id).where(col(Run.status).in_(ACTIVE))).all())
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[int, tuple] = {}
    while True:
        with ws.store.read() as s:
            rows = s.exec(select(Run).where(col(Run.id).in_(pks))).all()
        for r in rows:
            now = (r.status, r.epoch)
            if seen.get(r.id) != now:
                seen[r.id] = now
                epoch = f" epoch {r.epoch}/{r.total_epochs}" if r.total_epochs else ""
                print(escaped(f"{r.run_id}  {r.status}{epoch}" + (f"  {r.error}" if r.error else "")), flush=True)
        if all(r.status not in ACTIVE for r in rows):
            return 0 if all(r.status == "succeeded" for r in rows) else 1
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"runs still active after {timeout:.0f}s")
        time.sleep(1.0)
        _refresh(ws)


@cli.command()
def tag(
    run: Annotated[str, typer.Argument(help="the run: id, unique id prefix, or unique name")],
    tags: Annotated[str, typer.Argument(help="its tags, comma-separated (replaces the old ones; '' clears them)")],
    workspace: WorkspaceOpt = None,
) -> int:
    """Set a run's tags (kept in its directory too, so reindex restores them)."""
    from app.queue.control import annotate

    ws = _workspace(workspace)
    _refresh(ws)
    r = annotate(ws, run, tags=tags.split(","))
    print(escaped(f"{r.run_id}  tags: {r.tags or '-'}"))
    return 0


@cli.command()
def note(
    run: Annotated[str, typer.Argument(help="the run: id, unique id prefix, or unique name")],
    text: Annotated[str, typer.Argument(help="the note (replaces the old one; '' clears it)")],
    workspace: WorkspaceOpt = None,
) -> int:
    """Set a run's note (kept in its directory too, so reindex restores it)."""
    from app.queue.control import annotate

    ws = _workspace(workspace)
    _refresh(ws)
    r = annotate(ws, run, notes=text)
    print(escaped(f"{r.run_id}  note: {r.notes or '-'}"))
    return 0


@cli.command()
def rm(
    runs: Annotated[list[str], typer.Argument(help="runs to delete: id, unique id prefix, or unique name")],
    workspace: WorkspaceOpt = None,
) -> int:
    """Delete finished runs: their directories and their rows (metrics, tags and notes go too)."""
    from app.queue.control import delete

    ws = _workspace(workspace)
    _refresh(ws)
    for ref in runs:
        print(f"deleted {delete(ws, ref)}")
    return 0


@cli.command()
def reindex(workspace: WorkspaceOpt = None) -> int:
    """Rebuild experiments.db from the run directories alone (tags and notes included)."""
    from app.queue.daemon import ensure_daemon, needs_daemon, stop_daemon
    from app.reindex import rebuild

    ws = _workspace(workspace)
    stopped = stop_daemon(ws)  # no launches from a half-known queue; jobs keep running without it
    if "store" in ws.__dict__:
        ws.store.close()
        del ws.__dict__["store"]
    report, moved = rebuild(ws)
    if moved:
        print(escaped(moved), file=sys.stderr)
    for w in report.warnings:
        print(escaped(f"warning: {w}"), file=sys.stderr)
    with ws.store.read() as s:
        from sqlmodel import func, select

        from app.store.models import Metric, Run

        n_runs = s.exec(select(func.count()).select_from(Run)).one()
        n_metrics = s.exec(select(func.count()).select_from(Metric)).one()
    print(f"reindexed {n_runs} runs, {n_metrics} metric rows from {ws.runs}")
    if stopped or needs_daemon(ws):
        if needs_daemon(ws):
            ensure_daemon(ws)
    return 0


@cli.command()
def ingest(workspace: WorkspaceOpt = None) -> int:
    """Run one ingest pass now (the daemon and every command do this on their own)."""
    from app.ingest import Ingester

    ws = _workspace(workspace)
    report = Ingester(ws).run_pass()
    for w in report.warnings:
        print(escaped(f"warning: {w}"), file=sys.stderr)
    print(f"{report.runs_updated} runs updated, {report.metrics_added} metric rows added")
    return 0


@daemon_cli.command("start")
def daemon_start(workspace: WorkspaceOpt = None) -> int:
    """Start the daemon if none runs."""
    from app.queue.daemon import daemon_info, ensure_daemon

    ws = _workspace(workspace)
    started = ensure_daemon(ws)  # returns once the daemon holds its lock and has written its pid
    info = daemon_info(ws)
    print(("started" if started else "already running") + f": pid {info.get('pid') if info else '?'}")
    return 0


@daemon_cli.command("stop")
def daemon_stop(workspace: WorkspaceOpt = None) -> int:
    """Stop the daemon; running jobs carry on and are picked up by the next one."""
    from app.queue.daemon import stop_daemon

    pid = stop_daemon(_workspace(workspace))
    print("no daemon running" if pid is None else f"stopped daemon (pid {pid})")
    return 0


@daemon_cli.command("status")
def daemon_status(workspace: WorkspaceOpt = None) -> int:
    """Say whether a daemon serves this workspace."""
    from app.queue.control import is_paused
    from app.queue.daemon import daemon_info
    from app.queue.settings import load_settings
    from app.queue.slots import discover_gpus

    ws = _workspace(workspace)
    q = load_settings(ws.root).queue
    gpus = discover_gpus()
    print(f"slots     {len(gpus)} GPU(s) x {q.runs_per_gpu} run(s), {q.cpu_slots} CPU slot(s), "
          f"cap {q.max_running or 'none'}" + ("; queue PAUSED (moe-tui resume)" if is_paused(ws) else ""))
    info = daemon_info(ws)
    if info is None:
        print(f"no daemon serving {ws.root}")
        return 3
    started = info.get("started_at")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    print(f"daemon pid {info.get('pid')} serving {ws.root} since {since}; log: {ws.daemon_log}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        from typer import (
            TyperException as ClickException,  # typer >= 0.29 vendors click
        )
    except ImportError:  # older typer runs on click itself
        from click import ClickException

    try:
        rv = cli(args=argv, prog_name="moe-tui", standalone_mode=False)
    except (UserError, JobError) as e:  # JobError: a write the contract refused (a link out, a full disk)
        print(escaped(f"error: {e}"), file=sys.stderr)
        return 2
    except ClickException as e:
        ctx = getattr(e, "ctx", None)
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        print(escaped(f"error: {e.format_message()}{hint}"), file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except Exception as e:
        if not disk_full(e):
            raise
        print(f"error: {disk_full_message(e)}, then run the command again", file=sys.stderr)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
