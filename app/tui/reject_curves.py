"""fit-reject's curves as the TUI draws them: error against the achieved rejection rate.

fit-reject logs one epoch row per target rate (engine/reject/report.per_rate_metrics):
``<split>/rejection_rate/<source>/<method>`` (the rate achieved) beside
``<split>/balanced_error/<source>/<method>`` and ``<split>/worst_error/<source>/<method>``.
The x of a curve is its own achieved rate, not the target: on a small split they differ by up
to 1/N, and the paper's curves are drawn over the achieved rate.
"""

from __future__ import annotations

import re
from typing import Iterable

REJECT_KIND = "fit-reject"
MEASURES = {"balanced_error": "balanced error", "worst_error": "worst-group error"}
_KEY = re.compile(r"^(?P<split>[^/]+)/(?P<measure>rejection_rate|balanced_error|worst_error)/"
                  r"(?P<source>.+)/(?P<method>[^/]+)$")


def parse(key: str) -> re.Match | None:
    return _KEY.match(key)


def error_keys(keys: Iterable[str]) -> list[str]:
    """The error curves among ``keys``, in the order given."""
    return [k for k in dict.fromkeys(keys) if (m := parse(k)) and m["measure"] in MEASURES]


def rate_key(error_key: str) -> str:
    """The achieved-rate key of an error curve: its x."""
    m = parse(error_key)
    return f"{m['split']}/rejection_rate/{m['source']}/{m['method']}"


def sources(keys: Iterable[str]) -> list[str]:
    """The posterior sources curves were logged for, in the order they were logged."""
    return list(dict.fromkeys(m["source"] for m in map(parse, keys) if m))


def against_rate(errors: list[tuple[int, float]], rates: list[tuple[int, float]]) -> list[tuple[float, float]]:
    """(achieved rate, error) points, paired by epoch (one epoch per target rate)."""
    x = dict(rates)
    return [(x[epoch], value) for epoch, value in sorted(errors) if epoch in x]
