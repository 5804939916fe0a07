"""Pipelines: named steps with dependencies, queued together.

A pipeline file (YAML or JSON) maps step names to engine arguments::

    name: chain
    steps:
      base:
        args: [train-expert, --preset, quick]
      tuned:
        after: [base]                      # starts when base succeeded
        args: [train-expert, --preset, quick, --name, "from {run:base}"]
        gpus: 0                            # optional: GPUs, backend, priority
        backend: local

``{run:STEP}`` in a step's arguments becomes the upstream run's directory
when the step starts (and adds the dependency if ``after`` omits it), so a
downstream job reads its inputs from upstream run directories. Every step is
validated before any is queued: a bad pipeline queues nothing.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import UserError
from app.queue.deps import check_acyclic, placeholders
from app.queue.submit import capture_repro, check_request, submit
from app.store.models import Run
from app.workspace import Workspace
from engine.core.config import load_config_file, split_trust
from engine.core.errors import ConfigError

# The product's named pipelines ship as files beside this module.
NAMED_DIR = Path(__file__).with_name("pipelines")
NAMED = tuple(sorted(p.stem for p in NAMED_DIR.glob("*.yaml")))


def named_pipeline_path(ref: str) -> Path | None:
    """The shipped file of a named pipeline (``lt``, ``mheight``, ``demo``), unless a file of that name is here."""
    return NAMED_DIR / f"{ref}.yaml" if ref in NAMED and not Path(ref).exists() else None


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    args: list[str] = Field(description="the engine job and its options, as for `moe-tui submit --`")
    after: list[str] = Field([], description="steps (or existing runs) this one starts after")
    gpus: int | None = Field(None, ge=0, description="GPUs the step asks for (default: 1 on a GPU machine, else 0)")
    backend: str | None = Field(None, description="local or slurm (default: the workspace's)")
    priority: int = Field(0, description="higher starts first")


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    steps: dict[str, Step]


def load_pipeline(ref: str) -> PipelineSpec:
    named = named_pipeline_path(ref)
    if named is None and not Path(ref).exists():
        raise UserError(f"no pipeline file {ref}; name a YAML or JSON file, or one of: {', '.join(NAMED)}")
    try:
        data = load_config_file(named or ref)
    except ConfigError as e:
        raise UserError(str(e).replace("config file", "pipeline file")) from None
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"pipeline file {ref}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if not spec.steps:
        raise UserError(f"pipeline file {ref} has no steps")
    return spec


def queue_pipeline(ws: Workspace, spec: PipelineSpec, backend: str | None = None) -> list[tuple[str, Run]]:
    """Queue every step in dependency order; returns (step, run) pairs."""
    edges = {name: list(dict.fromkeys([*st.after, *(p for p in placeholders(st.args) if p in spec.steps)]))
             for name, st in spec.steps.items()}
    # Links to runs outside the pipeline are checked (and must exist) at submit.
    internal = {n: [p for p in ps if p in spec.steps] for n, ps in edges.items()}
    order = check_acyclic(internal)
    for name, st in spec.steps.items():
        try:
            check_request(ws, st.args, backend=st.backend or backend, gpus=st.gpus)
            _, trust = split_trust(st.args)
            if trust:
                raise UserError(f"{trust[0]} cannot come from a pipeline file: trust is given only by typing it; "
                                f"queue this step with `moe-tui submit -- {shlex.join(st.args)}` and name that run in the steps' `after:`")
        except UserError as e:
            raise UserError(f"step '{name}': {e}") from None
    external = [p for ps in edges.values() for p in ps if p not in spec.steps]
    if external:
        from app.queue.submit import resolve_parents

        with ws.store.read() as s:
            resolve_parents(s, external)  # a missing run fails here, before anything is queued
    pipeline_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    repro = capture_repro()
    names: dict[str, str] = {}
    queued = []
    for name in order:
        st = spec.steps[name]
        run = submit(ws, st.args, name=f"{spec.name}/{name}", backend=st.backend or backend, priority=st.priority,
                     gpus=st.gpus, after=edges[name], pipeline_id=pipeline_id, repro=repro, names=names)
        names[name] = run.run_id
        queued.append((name, run))
    return queued
