"""Naming a status or a kind: the one rule the TUI filter and ``moe-tui ls/export`` share.

A name may be cut short to any unambiguous beginning (``recompute-lo`` is recompute-logits,
``run`` is running), because the Kind column cuts long kinds ("recompute-lo…") and what a
person sees there should filter as that kind; a trailing "…" is dropped for the same reason.
A misspelt name is refused, since it would match nothing and look like an empty workspace.
"""

from __future__ import annotations

from app.store.models import STATUSES
from engine.config import JOBS


class UnknownName(ValueError):
    """A status or kind that names none, or several; the message is one line."""


def known_names(field: str) -> tuple[str, ...] | None:
    """Every value of ``field`` when it has a fixed set (status, kind), else None."""
    field = field.lower()
    if field == "status":
        return STATUSES
    if field == "kind":
        return tuple(sorted(JOBS))
    return None


def uncut(text: str) -> str:
    """A value copied from a table cell cut to its width ends in "…": what is before it is what was seen."""
    return text[:-1] if text.endswith("…") else text


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def resolve(field: str, text: str, label: str) -> str:
    """The one ``field`` value that ``text`` names (itself, or the one it begins).

    ``label`` is how the caller shows the text in an error (``kind 'x' at column 6`` in the
    filter, ``--kind 'x'`` on the command line), so both say the same thing their own way.
    """
    field = field.lower()
    known = known_names(field)
    if known is None:
        return text
    lit = text.lower()
    if lit in known:
        return lit
    prefix = uncut(lit)
    candidates = [k for k in known if prefix and k.startswith(prefix)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UnknownName(f"{label} could be {_either(candidates)}; type more of it")
    raise UnknownName(f"unknown {label}; one of: {', '.join(known)}")
