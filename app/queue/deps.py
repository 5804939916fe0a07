"""Dependencies between runs: readiness, blocking, cycles, and run placeholders.

A run with parents starts only when every parent succeeded. When a parent
ends any other way the run becomes ``blocked`` (not started, not failed:
nothing of it ran); retrying the parent re-points the run at the retry and
queues it again.

Downstream runs name their inputs with ``{run:REF}`` in their arguments,
e.g. ``--experts {run:ce},{run:ls}``. At submit time REF (a name in the same
pipeline, or any run id/name) becomes the parent's run id; at launch the
placeholder becomes that run's directory, so the job reads its upstream
checkpoints and artifacts by path and needs no database.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from sqlmodel import Session, col, select

from app.errors import UserError
from app.store.models import FINISHED, Run, RunDependency, next_rev

PLACEHOLDER = re.compile(r"\{run:([^{}]+)\}")


def placeholders(argv: list[str]) -> list[str]:
    """The REFs of every ``{run:REF}`` in ``argv``, in order."""
    return [m.group(1) for a in argv for m in PLACEHOLDER.finditer(a)]


def rewrite_placeholders(argv: list[str], mapping: dict[str, str]) -> list[str]:
    """Replace each ``{run:REF}`` by ``{run:mapping[REF]}`` (REFs not in the mapping stay)."""
    return [PLACEHOLDER.sub(lambda m: "{run:" + mapping.get(m.group(1), m.group(1)) + "}", a) for a in argv]


def resolve_placeholders(argv: list[str], runs_root: Path) -> list[str]:
    """``{run:<run_id>}`` -> the absolute run directory (at launch)."""
    return [PLACEHOLDER.sub(lambda m: str(Path(runs_root) / m.group(1)), a) for a in argv]


def check_acyclic(edges: dict[str, list[str]]) -> list[str]:
    """A topological order of ``edges`` (step -> steps it runs after), or UserError naming a cycle."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = path[path.index(n):] + [n]
            raise UserError(f"the dependencies form a cycle: {' -> '.join(cycle)}; remove one of these --after links")
        state[n] = 1
        path.append(n)
        for p in edges.get(n, []):
            if p not in edges:
                raise UserError(f"step '{n}' runs after '{p}', which is not a step of this pipeline")
            visit(p)
        path.pop()
        state[n] = 2
        order.append(n)

    for n in edges:
        visit(n)
    return order


def parents_of(s: Session, pks: list[int]) -> dict[int, list[Run]]:
    """Each run's parent rows."""
    out: dict[int, list[Run]] = defaultdict(list)
    if not pks:
        return out
    rows = s.exec(select(RunDependency.run, Run).join(Run, Run.id == RunDependency.parent)
                  .where(col(RunDependency.run).in_(pks))).all()
    for child, parent in rows:
        out[child].append(parent)
    return out


def settle_dependencies(s: Session, dry_run: bool = False) -> tuple[list[int], list[int]]:
    """Block queued runs whose parents ended badly; return (ready, to block) queued-run ids.

    Call inside a writer transaction, or with ``dry_run`` in a reader (the
    daemon's common case: nothing to block, no write lock taken).
    Ready runs: all parents succeeded.
    """
    waiting = s.exec(select(Run.id).where(Run.status == "queued",
                                          col(Run.id).in_(select(RunDependency.run)))).all()
    parents = parents_of(s, list(waiting))
    ready, blocked = [], []
    for pk in waiting:
        bad = [p for p in parents[pk] if (p.status in FINISHED and p.status != "succeeded") or p.status == "blocked"]
        if bad and dry_run:
            blocked.append(pk)
        elif bad:
            run = s.get(Run, pk)
            run.status = "blocked"
            run.error = blocked_cause(bad[0])
            run.rev = next_rev(s)
            s.add(run)
            blocked.append(pk)
        elif all(p.status == "succeeded" for p in parents[pk]):
            ready.append(pk)
    return ready, blocked


def blocked_cause(parent: Run, how: str | None = None, via: str = "") -> str:
    """Why a run is blocked, naming the parent, and how to go on; ``via``: what reported it (Slurm)."""
    return (f"dependency {parent.run_id} ({parent.name}) {how or parent.status}{via}; "
            f"`moe-tui retry {parent.run_id}` re-queues this run")


def unmet(s: Session, pk: int) -> bool:
    """True while some parent of ``pk`` has not succeeded."""
    return any(p.status != "succeeded" for p in parents_of(s, [pk])[pk])
