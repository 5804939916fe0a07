"""The typed schema of every record in a run directory: the run contract.

Every event a job appends to ``events.jsonl`` and every record file of a run
(``run.json``, ``status.json``; the manager's ``submit.json``, ``launch.json``
and ``exit_code``) has a pydantic model here. Writers go through it
(``validate_event``, ``validate_record``: a job cannot write what a reader
would reject; the recorder turns a refusal into a TypeError, the job's bug),
readers validate against it (``parse_event_lines``, ``parse_record``). A bad line or file costs one line of explanation -- file,
line, field, what is wrong -- and that item, never the reader.

Types are strict where the manager relies on them: an integer is a JSON
integer (not ``1.0``, ``"1"`` or ``true``) within SQLite's 64-bit range, a
metric is a JSON number or null. Classes allow extra fields (jobs add their
own), so a new field needs no new version; ``v`` changes only when a reader
of this version would misread the record. ``v`` missing means 1; a ``v``
newer than ``SCHEMA_VERSION`` is reported, never guessed at.

Non-finite numbers: a metric of NaN or +-inf (a diverged loss) is legitimate
but has no value to plot or rank; writers store it as null and readers read
NaN/Infinity (older files) as null, so the store gets no row for it, the same
as an epoch that did not log that key. The same holds for the entries of an
expert-load vector.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, model_validator

from engine.core.errors import JobError

SCHEMA_VERSION = 1

# Final states a job writes itself; "lost" and "blocked" belong to the manager.
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
JOB_STATES = ("running", *TERMINAL_STATES)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # SQLite's INTEGER


def _none_if_not_finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v}")
    return v


Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
Count = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
Seconds = Annotated[StrictFloat, AfterValidator(_finite)]  # unix time or a duration
# A metric (or a load share): a number, or null for "no value" (NaN, +-inf: a diverged run).
Value = Annotated[StrictFloat | None, AfterValidator(_none_if_not_finite)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    v: StrictInt = SCHEMA_VERSION


# --------------------------------------------------------------------------- #
# events.jsonl


class Event(_Record):
    """Any event: its time and type. Types this reader does not know are kept as this and ignored."""

    t: Seconds = 0.0
    type: StrictStr


class EpochEvent(Event):
    """One epoch's metrics (``RunRecorder.log_epoch``); the store's per-epoch rows."""

    type: Literal["epoch"]
    epoch: Count
    phase: StrictStr | None = None
    step: Int64 | None = None
    metrics: dict[StrictStr, Value] = {}


class SummaryEvent(Event):
    """Metrics of the whole run (final test scores): rows with epoch NULL."""

    type: Literal["summary"]
    metrics: dict[StrictStr, Value] = {}


class ExpertLoadEvent(Event):
    """How a router spread one epoch's samples over its experts (``RunRecorder.log_expert_load``)."""

    type: Literal["expert_load"]
    epoch: Count | None  # None: an evaluation after training
    experts: list[StrictStr]
    load: list[Value]  # mean routing weight per expert
    top1_share: list[Value] | None = None  # share of samples whose largest weight is that expert's
    split: StrictStr | None = None

    @model_validator(mode="after")
    def _same_lengths(self) -> "ExpertLoadEvent":
        if len(self.load) != len(self.experts):
            raise ValueError(f"load: {len(self.load)} values for {len(self.experts)} experts")
        if self.top1_share is not None and len(self.top1_share) != len(self.experts):
            raise ValueError(f"top1_share: {len(self.top1_share)} values for {len(self.experts)} experts")
        return self


class EndEvent(Event):
    type: Literal["end"]
    state: Literal[TERMINAL_STATES]


class PhaseEvent(Event):
    """A stage change (decoupling's stages)."""

    type: Literal["phase"]
    epoch: Count
    phase: StrictStr


class ResumedEvent(Event):
    type: Literal["resumed"]
    source: StrictStr
    epoch: Count


class CheckEvent(Event):
    """One check of verify-logits."""

    type: Literal["check"]
    name: StrictStr
    ok: StrictBool
    detail: StrictStr = ""


class VerdictEvent(Event):
    """The gate against averaging, in words."""

    type: Literal["verdict"]
    split: StrictStr
    text: StrictStr


EVENT_TYPES: dict[str, type[Event]] = {
    m.model_fields["type"].annotation.__args__[0]: m
    for m in (EpochEvent, SummaryEvent, ExpertLoadEvent, EndEvent, PhaseEvent, ResumedEvent, CheckEvent, VerdictEvent)
}


# --------------------------------------------------------------------------- #
# Record files


class GitState(_Record):
    commit: StrictStr | None = None
    dirty: StrictBool | None = None


class RunRecord(_Record):
    """run.json: what ran (written once by the job at start)."""

    run_id: StrictStr
    name: StrictStr = ""
    kind: StrictStr
    config: dict[StrictStr, Any] = {}
    argv: list[StrictStr] = []
    command: StrictStr = ""
    cwd: StrictStr | None = None
    git: GitState = GitState()
    host: StrictStr | None = None
    versions: dict[StrictStr, StrictStr] = {}
    created_at: Seconds | None = None
    total_epochs: Count | None = None
    primary_metric: StrictStr | None = None
    metric_goals: dict[StrictStr, Literal["max", "min"]] = {}


class StatusRecord(_Record):
    """status.json: the job's state, replaced atomically as it changes."""

    run_id: StrictStr | None = None
    state: Literal[JOB_STATES]
    pid: Int64 | None = None
    pid_start: Int64 | None = None
    host: StrictStr | None = None
    boot_id: StrictStr | None = None
    started_at: Seconds | None = None
    ended_at: Seconds | None = None
    updated_at: Seconds | None = None
    epoch: Count = 0
    total_epochs: Count | None = None
    exit_code: Int64 | None = None
    error: StrictStr | None = None


class SubmitRecord(_Record):
    """submit.json: the queued request (the manager's, written before the database row)."""

    run_id: StrictStr | None = None
    name: StrictStr = ""
    kind: StrictStr
    argv: list[StrictStr] = []
    command: StrictStr = ""
    config: dict[StrictStr, Any] = {}
    backend: StrictStr = "local"
    priority: Int64 = 0
    gpus: Count = 0
    after: list[StrictStr] = []
    group_id: StrictStr | None = None
    pipeline_id: StrictStr | None = None
    retry_of: StrictStr | None = None
    created_at: Seconds | None = None
    total_epochs: Count | None = None
    primary_metric: StrictStr | None = None


class LaunchRecord(_Record):
    """launch.json: who started the job and where, or why it could not be started (the manager's)."""

    backend: StrictStr | None = None
    state: Literal["launching", "failed"] | None = None
    launched_at: Seconds | None = None
    launcher_pid: Int64 | None = None
    launcher_pid_start: Int64 | None = None
    host: StrictStr | None = None
    boot_id: StrictStr | None = None
    slots: StrictStr | None = None
    job_id: StrictStr | None = None
    error: StrictStr | None = None
    failed_at: Seconds | None = None


# --------------------------------------------------------------------------- #
# Validation with one-line causes


class RecordError(JobError, ValueError):
    """A line or file that does not fit its schema; the message is the one line to show.

    A JobError: a job that reads another run's files (train-gating its experts', evaluate-gating
    its training run's) and meets a bad one fails as bad input, with this line as the cause.
    """


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_EXPECTED = {
    "int_type": "expected an integer", "int_parsing": "expected an integer", "int_from_float": "expected an integer",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "string_type": "expected a string", "bool_type": "expected true or false",
    "dict_type": "expected an object", "list_type": "expected a list", "model_type": "expected an object",
}


def _problem(err: dict) -> str:
    kind, value = err["type"], err.get("input")
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {_shown(value)}"
    if kind in ("greater_than_equal", "less_than_equal") and isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return f"{_shown(value)} is outside SQLite's 64-bit integer range"
        return f"{_shown(value)} is {'below' if kind == 'greater_than_equal' else 'above'} " \
               f"{err['ctx'].get('ge', err['ctx'].get('le'))}"
    if kind == "literal_error":
        return f"{_shown(value)} is not one of {err['ctx']['expected']}"
    if kind == "missing":
        return "missing"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    return err["msg"][:1].lower() + err["msg"][1:]


def _one_line(exc: ValidationError) -> str:
    errs = exc.errors(include_url=False)
    first = errs[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return (f"{where}: " if where else "") + _problem(first) + more


def _check_version(obj: dict) -> None:
    v = obj.get("v", 1)
    if type(v) is not int:
        raise RecordError(f"v: expected an integer schema version, got {_shown(v)}")
    if v > SCHEMA_VERSION:
        raise RecordError(f"schema v{v} is newer than this reader (v{SCHEMA_VERSION}); upgrade moe-tui")
    if v < 1:
        raise RecordError(f"v: expected a schema version of 1 or more, got {v}")


def validate_event(obj: Any) -> Event:
    """The event model of a decoded JSON line; RecordError (field: what is wrong) if it does not fit."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {_shown(obj)}")
    if not isinstance(obj.get("type"), str):
        raise RecordError("type: missing" if "type" not in obj else f"type: expected a string, got {_shown(obj['type'])}")
    _check_version(obj)
    try:
        return EVENT_TYPES.get(obj["type"], Event).model_validate(obj)
    except ValidationError as e:
        raise RecordError(_one_line(e)) from None


def validate_record(obj: Any, model: type[_Record]) -> _Record:
    """The model of a decoded record file; RecordError (field: what is wrong) if it does not fit."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {_shown(obj)}")
    _check_version(obj)
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise RecordError(_one_line(e)) from None


def as_dict(model: BaseModel) -> dict:
    """A validated record as the plain dict readers use: the fields the file had, in their checked form."""
    return model.model_dump(exclude_unset=True)


def parse_record(raw: bytes, model: type[_Record], name: str) -> dict:
    """A record file's bytes, validated: a dict, or RecordError ``<name>: <field>: <what is wrong>``."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        what = "empty file" if not raw.strip() else f"malformed JSON ({e})"
        raise RecordError(f"{name}: {what}") from None
    try:
        return as_dict(validate_record(obj, model))
    except RecordError as e:
        raise RecordError(f"{name}: {e}") from None


def parse_exit_code(text: str, name: str = "exit_code") -> int:
    """The launcher's exit_code file: one integer (negative: killed by that signal)."""
    try:
        code = int(text.strip())
    except ValueError:
        raise RecordError(f"{name}: expected an integer, got {_shown(text.strip()[:40])}") from None
    if not -255 <= code <= 255:
        raise RecordError(f"{name}: {code} is not an exit status (-255..255)")
    return code


@dataclass
class EventLine:
    lineno: int  # 1-based line number in events.jsonl
    event: dict | None  # the validated event as a plain dict; None when the line does not fit
    error: str | None = None  # one line: "<field>: <what is wrong>"


def parse_event_lines(chunk: bytes, first_lineno: int) -> tuple[list[EventLine], int]:
    """Parse and validate the complete lines of ``chunk``; return them and the bytes consumed.

    A partial last line (no newline yet) is not consumed: the writer is still
    writing it, and it is read again on the next pass once it is complete.
    A line that does not fit the schema comes back with ``event`` None and
    its ``error``; the lines after it are unaffected.
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
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            lines.append(EventLine(lineno, None, f"malformed JSON ({e})"))
            continue
        try:
            lines.append(EventLine(lineno, as_dict(validate_event(obj))))
        except RecordError as e:
            lines.append(EventLine(lineno, None, str(e)))
    return lines, end + 1
