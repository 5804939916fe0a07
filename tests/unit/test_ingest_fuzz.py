"""Property-based fuzz of ingest (issue #17): random and mutated events.jsonl lines and record files.

Whatever the run directories hold, ``run_pass()`` never raises, every well-formed epoch line is in
SQLite exactly once (one Metric row per (run, epoch, key)), a second pass and a pass after more lines
are appended index nothing twice, and a fully well-formed run is indexed whatever its neighbours hold.
Each example builds a fresh workspace of its own.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from app.ingest import Ingester
from app.store import Metric, Run
from app.workspace import Workspace

INT64_MAX = 2**63 - 1
TERMINAL = ("succeeded", "failed", "cancelled")  # finished: a later pass does not read the run again

finite = st.floats(allow_nan=False, allow_infinity=False)
keys = st.text(min_size=1, max_size=8)
epochs = st.one_of(st.integers(0, 50), st.integers(0, INT64_MAX))


# --------------------------------------------------------------------------- events.jsonl lines

@st.composite
def epoch_event(draw, min_metrics: int = 0) -> dict:
    ev = {"type": "epoch", "epoch": draw(epochs),
          "metrics": draw(st.dictionaries(keys, finite | st.integers(-10**6, 10**6), min_size=min_metrics, max_size=4))}
    if draw(st.booleans()):
        ev["v"] = 1
    if draw(st.booleans()):
        ev["t"] = draw(finite)
    if draw(st.booleans()):
        ev["step"] = draw(st.integers(-(2**63), INT64_MAX))
    if draw(st.booleans()):
        ev["extra"] = draw(st.text(max_size=5))  # jobs may add their own fields
    return ev


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return False


# JSON of a wrong shape: each breaks one rule of EpochEvent's schema.
WRONG_SHAPE = [
    {"v": 1, "type": "epoch", "epoch": "x", "metrics": {"a": 1}},
    {"v": None, "type": "epoch", "epoch": 1, "metrics": {"a": 1}},
    {"v": True, "type": "epoch", "epoch": 1, "metrics": {"a": 1}},
    {"v": 2, "type": "epoch", "epoch": 1, "metrics": {"a": 1}},
    {"v": 0, "type": "epoch", "epoch": 1, "metrics": {"a": 1}},
    {"v": 1, "type": "epoch", "epoch": 1, "metrics": [1, 2]},
    {"v": 1, "type": "epoch", "epoch": 2**63, "metrics": {"a": 1}},
    {"v": 1, "type": "epoch", "epoch": 2**70, "metrics": {"a": 1}},
    {"v": 1, "type": "epoch", "epoch": -1, "metrics": {"a": 1}},
    {"v": 1, "type": "epoch", "epoch": 1.0, "metrics": {"a": 1}},
    {"v": 1, "type": "epoch", "epoch": True, "metrics": {"a": 1}},
    {"v": 1, "type": "epoch", "metrics": {"a": 1}},
    {"v": 1, "type": "epoch", "epoch": 1, "metrics": {"a": "x"}},
    {"v": 1, "type": "epoch", "epoch": 1, "metrics": {"a": True}},
    {"v": 1, "type": "epoch", "epoch": 1, "metrics": {"a": [1]}},
    {"v": 1, "type": "epoch", "epoch": 1, "step": 2**63, "metrics": {"a": 1}},
    {"v": 1, "type": "epoch", "epoch": 1, "t": "now", "metrics": {"a": 1}},
    {"v": 1, "type": 5, "epoch": 1, "metrics": {"a": 1}},
    {"v": 1, "epoch": 1, "metrics": {"a": 1}},
    {"v": 1, "type": "summary", "metrics": {"a": "x"}},
    {"v": 1, "type": "expert_load", "epoch": 1, "experts": ["a", "b"], "load": [0.5]},
    {"v": 1, "type": "expert_load", "epoch": 2**63, "experts": ["a"], "load": [0.5]},
    [1, 2], 5, "epoch", None, [],
]
BAD_VALUES = ["x", None, True, 1.5, 2**63, -1, [1], {"a": 1}]


@st.composite
def mutated_epoch_event(draw) -> dict:
    """A well-formed epoch event with one field replaced by a value its schema refuses."""
    ev = draw(epoch_event())
    field = draw(st.sampled_from(["epoch", "metrics", "v", "type", "step", "t"]))
    bad = {"epoch": ["x", None, 1.5, True, 2**63, -1],
           "metrics": [[1, 2], "x", 5, {"a": "x"}, {"a": None, "b": "y"}],
           "v": [None, "1", 2, 99, True, 1.0],
           "type": [None, 5, ["epoch"]],
           "step": ["x", 1.5, 2**63, -(2**63) - 1],
           "t": ["x", True, [0]]}[field]
    ev[field] = draw(st.sampled_from(bad))
    return ev


garbage_line = st.one_of(
    st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=30),  # invalid UTF-8 included
    st.sampled_from(WRONG_SHAPE).map(lambda o: json.dumps(o).encode()),
    mutated_epoch_event().map(lambda o: json.dumps(o).encode()),
    st.sampled_from([b"", b"   ", b"\t", b"{", b"}", b'{"v": 1', b"\xff\xfe", b"\x00", b"NaN", b"null"]),
).map(lambda b: b.replace(b"\n", b" ")).filter(
    # never a JSON object, or one of the shapes above: none of them is a well-formed event with rows
    lambda b: not _is_json_object(b) or json.loads(b) in WRONG_SHAPE or b'"extra"' in b or b'"metrics"' in b)

# ("good", event) or ("bad", bytes); duplicate good epochs are dropped in ``_events`` (epochs are unique)
line = st.one_of(st.tuples(st.just("good"), epoch_event()), st.tuples(st.just("bad"), garbage_line))


@st.composite
def truncated_tail(draw) -> bytes:
    """A final line without its newline: a strict prefix of an event (never complete JSON) or garbage."""
    full = json.dumps(draw(epoch_event())).encode()
    return draw(st.one_of(st.integers(1, len(full) - 1).map(lambda n: full[:n]),
                          st.sampled_from([b"{", b'{"v": 1, "type": "epo', b"\xff"])))


# --------------------------------------------------------------------------- record files

def _valid(name: str, run_id: str, draw) -> dict:
    if name == "run.json":
        rec = {"v": 1, "run_id": run_id, "kind": "train-expert", "name": draw(st.text(max_size=5)),
               "created_at": 1.0e9, "primary_metric": "val/acc"}
        if draw(st.booleans()):
            rec["total_epochs"] = draw(st.integers(0, INT64_MAX))
        return rec
    if name == "status.json":
        return {"v": 1, "run_id": run_id, "state": draw(st.sampled_from(["running", *TERMINAL])),
                "epoch": draw(st.integers(0, 10))}
    return {"v": 1, "run_id": run_id, "kind": "train-expert", "priority": draw(st.integers(-5, 5))}


WRONG_TYPES = {"run.json": {"kind": 5, "run_id": None, "total_epochs": 2**63, "argv": "x", "git": [1],
                            "created_at": "yesterday", "metric_goals": {"a": "up"}},
               "status.json": {"state": "bogus", "epoch": "x", "pid": 2**63, "started_at": True, "exit_code": 1.5},
               "submit.json": {"kind": None, "priority": "high", "gpus": -1, "after": "x", "backend": 3}}


@st.composite
def record_file(draw, name: str, run_id: str) -> tuple[str, bytes | None]:
    """(what it is, the file's bytes or None for no file): valid, or one of the ways it can be wrong."""
    how = draw(st.sampled_from(["missing", "valid", "valid", "wrong_type", "newer_v", "v_null", "list",
                                "random", "truncated", "empty"]))
    rec = _valid(name, run_id, draw)
    if how == "missing":
        return how, None
    if how == "wrong_type":
        field, value = draw(st.sampled_from(sorted(WRONG_TYPES[name].items())))
        rec[field] = value
    elif how == "newer_v":
        rec["v"] = draw(st.integers(2, 2**70))
    elif how == "v_null":
        rec["v"] = None
    elif how == "list":
        return how, json.dumps([rec]).encode()
    elif how == "random":
        return how, draw(st.binary(max_size=40).filter(lambda b: not _is_json_object(b)))
    elif how == "empty":
        return how, b""
    text = json.dumps(rec, indent=2).encode()
    if how == "truncated":
        return how, text[: draw(st.integers(1, len(text) - 1))]
    return how, text


@st.composite
def run_files(draw, run_id: str, always_good: bool = False) -> dict:
    if always_good:
        files = {n: ("valid", json.dumps(_valid(n, run_id, draw)).encode()) for n in ("run.json", "status.json")}
        files["submit.json"] = ("missing", None)
        lines = draw(st.lists(st.tuples(st.just("good"), epoch_event(min_metrics=1)), min_size=1, max_size=8))
        return {"files": files, "lines": lines, "tail": None,
                "more": draw(st.lists(st.tuples(st.just("good"), epoch_event()), max_size=3))}
    return {"files": {n: draw(record_file(n, run_id)) for n in ("run.json", "status.json", "submit.json")},
            "lines": draw(st.lists(line, max_size=10)),
            "tail": draw(st.none() | truncated_tail()),
            "more": draw(st.lists(line, max_size=4))}


@st.composite
def workspaces(draw) -> dict:
    n = draw(st.integers(1, 3))
    good = draw(st.integers(0, n))  # where the always well-formed run sits among its neighbours
    runs = {}
    for i in range(n + 1):
        rid = f"260101-000000-{i:04x}"
        runs[rid] = draw(run_files(rid, always_good=i == good))
    return {"runs": runs, "good": f"260101-000000-{good:04x}"}


# --------------------------------------------------------------------------- the property

def _events(lines, seen: set) -> tuple[bytes, Counter]:
    """The bytes of ``lines`` and the Metric rows their well-formed epoch lines must give."""
    out, rows = b"", Counter()
    for kind, item in lines:
        if kind == "good":
            if item["epoch"] in seen:
                continue  # epochs are unique in a run
            seen.add(item["epoch"])
            out += json.dumps(item).encode() + b"\n"
            rows.update((item["epoch"], k, float(v)) for k, v in item["metrics"].items())
        else:
            out += item + b"\n"
    return out, rows


def _stored(ws) -> dict[str, Counter]:
    with ws.store.read() as s:
        got = s.exec(select(Run.run_id, Metric.epoch, Metric.key, Metric.value).join(Run, Run.id == Metric.run)).all()
        statuses = dict(s.exec(select(Run.run_id, Run.status)).all())
    by_run: dict[str, Counter] = {}
    for rid, epoch, key, value in got:
        by_run.setdefault(rid, Counter())[(epoch, key, value)] += 1
    return by_run, statuses


def _has_row(files: dict) -> bool:
    """A run is listed once run.json or submit.json exists, or a record file is unreadable."""
    return (files["run.json"][1] is not None or files["submit.json"][1] is not None
            or files["status.json"][0] not in ("missing", "valid"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=workspaces())
def test_ingest_never_raises_loses_or_duplicates_a_line(spec):
    with tempfile.TemporaryDirectory() as root:
        ws = Workspace.open(root)
        try:
            expected, seen = {}, {}
            for rid, run in spec["runs"].items():
                rd = ws.runs / rid
                rd.mkdir()
                for name, (_, raw) in run["files"].items():
                    if raw is not None:
                        (rd / name).write_bytes(raw)
                seen[rid] = set()
                data, rows = _events(run["lines"], seen[rid])
                (rd / "events.jsonl").write_bytes(data + (run["tail"] or b""))
                expected[rid] = rows if _has_row(run["files"]) else Counter()

            ing = Ingester(ws)
            ing.run_pass()
            stored, statuses = _stored(ws)
            for rid in spec["runs"]:
                assert stored.get(rid, Counter()) == expected[rid], rid
            good = spec["good"]
            assert expected[good]  # its lines give rows, and every one of them is stored
            assert stored.get(good, Counter()) == expected[good]

            ing.run_pass()
            Ingester(ws).run_pass()  # a second ingester, as `moe-tui ls` beside the daemon
            assert _stored(ws)[0] == stored

            # More lines: the partial last line becomes a complete (bad) line; a finished run is not read again.
            for rid, run in spec["runs"].items():
                data, rows = _events(run["more"], seen[rid])
                with open(ws.runs / rid / "events.jsonl", "ab") as f:
                    f.write(b"\n" + data)
                if _has_row(run["files"]) and statuses.get(rid) not in TERMINAL:
                    expected[rid] += rows
            Ingester(ws).run_pass()
            ing.run_pass()
            stored, _ = _stored(ws)
            for rid in spec["runs"]:
                assert stored.get(rid, Counter()) == expected[rid], rid
        finally:
            ws.store.close()
