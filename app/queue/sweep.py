"""Sweeps: axes of values -> one combination per run, its name and its group.

The one expander for every entry point: ``moe-tui submit --sweep key=v1,v2``
and the launch form's ``a | b`` fields both become axes here, so the same
sweep gives the same runs, names and cap wherever it was asked for. The form
separates values with ``|`` because its list fields already use commas
(``milestones = 60,80``); on the command line a ``|`` would need quoting.
"""

from __future__ import annotations

import itertools
import uuid

from app.errors import UserError

MAX_RUNS = 64  # runs one sweep may queue: a typo like 0|1|...|999 should not flood the queue
FORM_SEP = "|"

Axis = tuple[str, list[str]]
Combo = list[tuple[str, str]]


def parse_cli(items: list[str]) -> list[Axis]:
    """``["lr=0.1,0.05", "seed=0,1"]`` -> axes, in the order given."""
    axes: list[Axis] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise UserError(f"--sweep expects key=v1,v2,..., got {item!r}")
        if key in (k for k, _ in axes):
            raise UserError(f"--sweep names '{key}' twice; give all its values in one --sweep")
        axes.append((key, vals))
    return axes


def form_values(text: str) -> list[str]:
    """A launch-form field's values: ``"0 | 1"`` -> ``["0", "1"]``, anything else is one value."""
    return [v.strip() for v in text.split(FORM_SEP)] if FORM_SEP in text else [text]


def parse_form(fields: dict[str, str]) -> list[Axis]:
    """The changed fields of the launch form, in form order, as axes."""
    return [(name, form_values(text)) for name, text in fields.items()]


def count(axes: list[Axis]) -> int:
    n = 1
    for _, values in axes:
        n *= len(values)
    return n


def expand(axes: list[Axis]) -> list[Combo]:
    """Every combination as (key, value) pairs in grid order (the last key varies fastest).

    Keys are taken in alphabetical order, so a sweep gives the same runs and
    names whatever order its axes were typed in, on the command line or the form.
    """
    axes = sorted(axes, key=lambda a: a[0])
    n = count(axes)
    if n > MAX_RUNS:
        sizes = " x ".join(str(len(v)) for _, v in axes)
        raise UserError(f"this sweep makes {n} runs ({sizes}); at most {MAX_RUNS} per sweep: "
                        "split it into several sweeps or drop some values")
    keys = [k for k, _ in axes]
    return [list(zip(keys, combo)) for combo in itertools.product(*[v for _, v in axes])]


def label(combo: Combo) -> str:
    return " ".join(f"{k}={v}" for k, v in combo)


def run_name(base: str, combo: Combo) -> str:
    """``la`` + seed=1 -> ``la seed=1``: the base, then the swept values that tell the runs apart."""
    return f"{base} {label(combo)}" if combo else base


def new_group_id() -> str:
    """The id the runs of one sweep share (Compare groups by it)."""
    return f"sweep-{uuid.uuid4().hex[:8]}"
