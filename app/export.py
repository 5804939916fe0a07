"""CSV export: one row per run (wide), or one row per metric value (``--history``).

Wide columns: run_id, name, kind, status, error (why it failed, or why its files
are unreadable), created_at, duration_s, git_commit,
then ``config.<field>`` for every config field of the exported runs, then
``final.<metric>`` (last value) and ``best.<metric>`` (best by the metric's
goal) for every metric they logged.

Text that a spreadsheet would run as a formula (a run named ``=HYPERLINK(...)``) is written
with a leading ``'`` unless ``raw``; numbers are written as they are.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Iterable, TextIO

from sqlmodel import Session, col, select

from app.errors import UserError
from app.queries import duration_s, summaries
from app.store.models import Metric, Run
from engine.core.rundir import write_named

BASE_COLUMNS = ["run_id", "name", "kind", "status", "error", "created_at", "duration_s", "git_commit"]
# A spreadsheet reads a cell starting with one of these as a formula, which can fetch a URL with the
# sheet's data in it or run a command (=cmd|' /C calc'!A0). OWASP's rule for CSV injection: text
# starting so gets a leading ' (shown, never run). A number (-0.5) is no formula and stays a number.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value):
    """A cell's value as a spreadsheet shows it and never runs it."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else ""


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else ("" if value is None else value)


def wide_rows(s: Session, runs: list[Run]) -> tuple[list[str], list[dict]]:
    summ = summaries(s, [r.id for r in runs])
    rows, config_cols, metric_keys = [], set(), set()
    for r in runs:
        row = {
            "run_id": r.run_id, "name": r.name, "kind": r.kind, "status": r.status, "error": r.error or "",
            "created_at": _iso(r.created_at),
            "duration_s": "" if duration_s(r) is None else round(duration_s(r), 3),
            "git_commit": r.git_commit or "",
        }
        cfg: dict = {}
        _flatten("config", json.loads(r.config or "{}"), cfg)
        config_cols.update(cfg)
        row.update(cfg)
        for key, m in summ.get(r.id, {}).items():
            metric_keys.add(key)
            row[f"final.{key}"] = m.last
            row[f"best.{key}"] = m.best
        rows.append(row)
    keys = sorted(metric_keys)
    columns = BASE_COLUMNS + sorted(config_cols) + [f"final.{k}" for k in keys] + [f"best.{k}" for k in keys]
    return columns, rows


def history_rows(s: Session, runs: list[Run]) -> Iterable[dict]:
    ids = {r.id: r.run_id for r in runs}
    for pk in ids:
        q = select(Metric).where(Metric.run == pk).order_by(col(Metric.epoch).is_(None), Metric.epoch, Metric.key, Metric.id)
        for m in s.exec(q):
            yield {"run_id": ids[pk], "epoch": "" if m.epoch is None else m.epoch, "key": m.key, "value": m.value}


def write_csv(columns: list[str], rows: Iterable[dict], out: TextIO, raw: bool = False) -> int:
    # Rows end in CRLF (RFC 4180): with "\n" the csv module leaves a field holding a CR unquoted,
    # and a run name with a CR in it broke the file for every reader.
    w = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()  # config., final., best. or a fixed name: never a formula
    n = 0
    for row in rows:
        w.writerow(row if raw else {k: neutralise(v) for k, v in row.items()})
        n += 1
    return n


def export(s: Session, runs: list[Run], out_path: str, history: bool = False, raw: bool = False) -> int:
    """Write the CSV to ``out_path`` (``-``: stdout). A file appears whole or not at all.
    ``raw``: text that starts like a formula is written as it is (see ``neutralise``)."""
    if history:
        columns, rows = ["run_id", "epoch", "key", "value"], history_rows(s, runs)
    else:
        columns, rows = wide_rows(s, runs)
    if out_path == "-":
        return write_csv(columns, rows, sys.stdout, raw)
    target = Path(out_path)
    if target.is_dir():
        raise UserError(f"--out {target} is a directory; give a file name such as {target / 'runs.csv'}")
    written = []

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        written.append(write_csv(columns, rows, text, raw))
        text.flush()
        text.detach()  # leave the file to write_named, which syncs and closes it

    try:
        write_named(target, write)
    except OSError as e:
        raise UserError(f"cannot write {target}: {e.strerror}; choose another --out") from None
    return written[0]

