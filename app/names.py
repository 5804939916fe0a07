"""Naming a status or a kind: the one rule the TUI filter and ``moe-tui ls/export`` share.

A name may be cut short to any unambiguous beginning (``recompute-lo`` is recompute-logits,
``run`` is running), because the Kind column cuts long kinds ("recompute-lo…") and what a
person sees there should filter as that kind; a trailing "…" is dropped for the same reason.
A misspelt name is refused, since it would match nothing and look like an empty workspace.

Errors name the one to three closest names, not all of them: a list of every kind wrapped over
four lines under an 80-column filter box. They say where the whole list is instead.
"""

from __future__ import annotations

from difflib import SequenceMatcher

from app.store.models import STATUSES
from engine.core.config import JOBS

# Where a person finds every name of a field; the error points there rather than listing them.
_WHOLE_LIST = {"status": "`moe-tui ls --help`", "kind": "`engine --help`"}


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


def _either(names: list[str], most: int = 3) -> str:
    """Names as "a, b or c"; past ``most`` of them "a, b, c or 2 more", which keeps an error
    about the five mheight- kinds within two lines under the 80-column filter box."""
    if len(names) > most:
        return f"{', '.join(names[:most])} or {len(names) - most} more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def closest(text: str, known: tuple[str, ...], n: int = 3) -> list[str]:
    """The names a typo most likely meant: the spellings nearest to it (runing: running), then
    names that contain it (gating: evaluate-gating, train-gating).

    Only spellings about as near as the nearest count: difflib's cutoff alone offered
    mheight-generate and mheight-finetune beside mheight-evaluate for "mheight-evalute".
    """
    score = {k: SequenceMatcher(None, text, k).ratio() for k in known}
    floor = max(0.6, max(score.values(), default=0.0) - 0.1)
    near = sorted((k for k in known if score[k] >= floor), key=lambda k: -score[k])
    inside = [k for k in known if text and text in k and k not in near]
    return (near + inside)[:n]


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
    near = closest(prefix, known)
    guess = f"did you mean {_either(near)}? " if near else ""
    raise UnknownName(f"unknown {label}; {guess}{_WHOLE_LIST[field]} lists every {field}")
