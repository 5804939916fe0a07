"""What a person says about a run (tags, notes, the deletion mark), kept in its directory.

The database holds them too, for queries; ``annotations.json`` in the run
directory is what makes them survive the database: ``moe-tui reindex`` reads
it back. Only the manager writes it, atomically; jobs never touch it. It is
the manager's file, not the job's, so its schema lives here rather than in
``engine.core.events`` (the job side of the run-directory contract).
"""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.errors import UserError
from engine.core.rundir import RunDir, atomic_write_json

ANNOTATIONS = "annotations.json"
VERSION = 1


class Annotations(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    v: int = VERSION
    tags: list[str] = Field(default_factory=list)
    notes: str = ""
    deleted_at: float | None = None  # set just before the directory is removed: a run marked so is never indexed again

    @field_validator("tags")
    @classmethod
    def _clean_tags(cls, tags: list[str]) -> list[str]:
        return sorted({t.strip().lower() for t in tags if t.strip()})


def read(rd: RunDir) -> tuple[Annotations | None, str | None]:
    """The run's annotations (None without a file) and, for a file that does not fit, what is wrong."""
    path = rd.path / ANNOTATIONS
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{path}: cannot be read ({e.strerror}); its tags and notes are not restored"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"{path}: not JSON ({e}); its tags and notes are not restored: fix or delete the file"
    if isinstance(data, dict) and isinstance(data.get("v"), int) and data["v"] > VERSION:
        return None, f"{path}: version {data['v']} is newer than this moe-tui ({VERSION}); upgrade moe-tui"
    try:
        return Annotations.model_validate(data), None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"])) or "file"
        return None, f"{path}: {where}: {err['msg']}; its tags and notes are not restored: fix or delete the file"


def write(rd: RunDir, ann: Annotations) -> None:
    """Replace the run's annotations.json atomically. ``rd`` comes from
    ``Workspace.writable_run_dir``, which refuses a run whose writes would leave it."""
    if not rd.path.is_dir():
        raise UserError(f"{rd.path} is not a run directory; cannot annotate it")
    atomic_write_json(rd.path / ANNOTATIONS, ann.model_dump())


def update(rd: RunDir, **fields) -> Annotations:
    """Read, change ``fields``, write back: tags, notes or the deletion mark."""
    current, _ = read(rd)  # a broken file is replaced by what the person says now
    ann = (current or Annotations()).model_copy(update=fields)
    ann = Annotations.model_validate(ann.model_dump())  # re-run the tag cleaning
    write(rd, ann)
    return ann


def mark_deleted(rd: RunDir) -> None:
    update(rd, deleted_at=time.time())
