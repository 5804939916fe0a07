"""The typed schema of every record in a run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass

SCHEMA_VERSION = 1

# Final states a job writes itself; "lost" and "blocked" belong to the manager.
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


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
