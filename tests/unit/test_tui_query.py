"""The Runs filter language: what matches, and the one-line errors for bad queries."""

from __future__ import annotations

import textwrap

import pytest

from app.store.models import STATUSES
from app.tui.data import RunRow, parse_tags
from app.tui.cells import cut
from app.tui.query import QueryError, compile_query
from app.tui.screens.runs import KIND_WIDTH
from engine.core.config import JOBS


def row(pk: int, status="succeeded", kind="train-expert", name="ce-resnet32-digits", loss="ce", seed=0,
        best=None, tags=(), epoch=3) -> RunRow:
    return RunRow(
        pk=pk, run_id=f"241124-0000{pk:02d}-abcd", name=name, kind=kind, status=status, backend="local",
        epoch=epoch, total_epochs=3, metric_key="val/balanced_acc",
        metric_best=(best or {}).get("val/balanced_acc"), created_at=0.0, started_at=None, ended_at=None,
        error=None, command="engine train-expert", config={"loss": loss, "seed": seed, "arch": "resnet32"},
        best=best or {}, final=best or {}, tags=tuple(tags),
    )


RUNS = [
    row(1, status="running", loss="ce", best={"val/balanced_acc": 0.30}, tags=("baseline",)),
    row(2, status="succeeded", loss="logit_adjust", best={"val/balanced_acc": 0.55}),
    row(3, status="failed", loss="balanced_softmax", seed=1, best={}, epoch=1),
    row(4, status="running", kind="gating", name="gate-dense", loss="ce", best={"val/balanced_acc": 0.45},
        tags=("baseline", "sweep")),
]


def matching(query: str) -> list[int]:
    pred = compile_query(query)
    return [r.pk for r in RUNS if pred(r)]


@pytest.mark.parametrize("query, expected", [
    ("", [1, 2, 3, 4]),
    ("status=running and kind=train-expert", [1]),
    ("status = running", [1, 4]),
    ("loss in (ce, logit_adjust)", [1, 2, 4]),
    ("best.val/balanced_acc > 0.4", [2, 4]),
    ("best.val/balanced_acc <= 0.45", [1, 4]),
    ("tag:baseline", [1, 4]),
    ("not tag:baseline", [2, 3]),
    ("tag:sweep or status=failed", [3, 4]),
    ("(status=failed or status=succeeded) and seed=1", [3]),
    ("status=running or status=failed and loss=ce", [1, 4]),  # and binds tighter
    ("name~GATE", [4]),
    ("gate", [4]),
    ("config.loss != ce", [2, 3]),
    # none tests whether a run has the field: run 3 logged no balanced accuracy
    ("best.val/balanced_acc != none", [1, 2, 4]),
    ("best.val/balanced_acc = none", [3]),
    ("best.val/balanced_acc != 0.3", [2, 4]),  # a missing value is not "not 0.3", as SQL's NULL
    ("epoch < 2", [3]),
    ("loss='logit_adjust'", [2]),
    ("best.val/missing > 0", []),
    ("name > gate", [4]),  # text fields still compare as text
    ("name < gate", [1, 2, 3]),
])
def test_queries_select_the_right_runs(query, expected):
    assert matching(query) == expected


@pytest.mark.parametrize("query, message", [
    ("status=", "'status =' needs a value at the end"),
    # A filter that stops short or leaves a quote open says so, not "got the end ... at the end".
    ("status=running and", "the filter ends early: 'and' at column 16 needs a condition after it"),
    ("not", "the filter ends early: 'not' at column 1 needs a condition after it"),
    ("loss in (ce,", "the list of 'loss in' at column 9 is not closed; end it with ')'"),
    ('name="resnet 32', 'the quote " at column 6 is not closed; end the value with "'),
    ("name='resnet", "the quote ' at column 6 is not closed"),
    # A numeric field compared with a word compared text and matched nothing, silently.
    ("epoch >= ten", "'ten' at column 10 is not a number; epoch holds numbers"),
    ("best.val/balanced_acc > high", "'high' at column 25 is not a number"),
    ("lr < fast", "'fast' at column 6 is not a number; lr holds numbers"),
    ("seed in (0, one)", "'one' at column 13 is not a number"),
    ("loss in ce", "'loss in' needs a list in parentheses at column 9"),
    ("loss in ()", "'loss in ()' at column 9 is empty"),
    ("loss in (ce logit_adjust)", "expected ',' or ')' at column 13"),
    ("(status=running", "missing ')' at the end to close the '(' at column 1"),
    ("status=running)", "unexpected ')' at column 15"),
    ("status=running kind=gating", "unexpected 'kind' at column 16; join conditions with 'and' or 'or'"),
    ("and status=running", "'and' at column 1 needs a condition before it"),
    ("tag:", "'tag:' at column 1 needs a tag name"),
    ("status=running && kind=x", "unexpected '&&' at column 16; join conditions with 'and' or 'or'"),
    ("status=running and !", "unexpected character '!' at column 20"),
    # A misspelt status or kind matched nothing, silently, like an empty workspace.
    ("status=runing", "unknown status 'runing' at column 8; did you mean running? `moe-tui ls --help` lists"),
    ("kind != train_expert", "unknown kind 'train_expert' at column 9; did you mean train-expert? `engine --help`"),
    ("status in (failed, lots)", "unknown status 'lots' at column 20"),
])
def test_bad_queries_say_what_and_where(query, message):
    with pytest.raises(QueryError) as err:
        compile_query(query)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_status_and_kind_may_still_be_searched_in_part():
    assert matching("status~run") == [1, 4] and matching("kind~train") == [1, 2, 3]
    assert matching("status=RUNNING") == [1, 4]


def test_status_and_kind_take_any_unambiguous_beginning():
    assert matching("kind=train-exp") == [1, 2, 3] and matching("kind != TRAIN-E") == [4]
    assert matching("status=run") == [1, 4] and matching("status in (fail, succ)") == [2, 3]
    # What a cut cell shows, "…" and all; and as a bare word, a search for what is before it.
    assert matching("kind=train-exp…") == [1, 2, 3] and matching("gate-de…") == [4]
    assert matching("name~gate-d…") == [4]


@pytest.mark.parametrize("query, message", [
    ("kind=train-", "kind 'train-' at column 6 could be train-expert or train-gating; type more of it"),
    ("kind=mheight-", "could be mheight-evaluate, mheight-finetune, mheight-generate or 2 more; type more of it"),
    ("kind=…", "unknown kind '…' at column 6"),
    ('kind=""', "unknown kind '' at column 6"),
])
def test_an_ambiguous_or_empty_beginning_is_an_error(query, message):
    with pytest.raises(QueryError) as err:
        compile_query(query)
    assert message in str(err.value) and "\n" not in str(err.value)


NAMES = {"status": STATUSES, "kind": sorted(JOBS)}


def wrap(text: str) -> list[str]:
    """The lines of the error under the filter box: 78 columns (80 less its padding), broken at
    spaces only, as Textual does (textwrap's default also breaks after a hyphen)."""
    return textwrap.wrap(text, 78, break_on_hyphens=False)


def _typos(name: str) -> list[str]:
    """A letter dropped, two swapped, '-' typed as '_': what a hurried hand does to a name."""
    out = [name[:i] + name[i + 1:] for i in range(1, len(name))]
    out += [name[:i] + name[i + 1] + name[i] + name[i + 2:] for i in range(1, len(name) - 1)]
    return out + [name.replace("-", "_")]


@pytest.mark.parametrize("field", ["status", "kind"])
def test_errors_fit_under_the_filter_box_and_name_the_likely_value(field):
    """An unknown kind listed all eleven: 220 characters, four lines under the box at 80 columns.
    Now it names the closest one to three, and where the whole list is."""
    for name in NAMES[field]:
        for typo in _typos(name):
            try:  # the error's column as far right as a real filter puts it
                compile_query(f"status=running and epoch >= 10 and {field}={typo}")
            except QueryError as err:
                lines = wrap(f"filter: {err}")
                assert len(lines) <= 2, lines
                assert name in str(err) or "could be" in str(err), str(err)
            else:  # a letter dropped at the end is a beginning of the name
                assert compile_query(f"{field}={typo}")(row(1, status=name, kind=name)), typo
    # Every beginning that fits several: the longest (kind=m, six kinds) is still two lines.
    for name in NAMES[field]:
        for end in range(1, len(name)):
            try:
                compile_query(f"status=running and epoch >= 10 and {field}={name[:end]}")
            except QueryError as err:
                assert len(wrap(f"filter: {err}")) <= 2, str(err)


def test_a_name_with_nothing_close_says_where_the_list_is():
    with pytest.raises(QueryError) as err:
        compile_query("kind=foo")
    assert str(err.value) == "unknown kind 'foo' at column 6; `engine --help` lists every kind"
    with pytest.raises(QueryError) as err:
        compile_query("kind=gating")  # contained in two kinds, near neither
    assert "did you mean train-gating or evaluate-gating?" in str(err.value)


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_the_kind_column_shows_what_the_filter_takes(kind):
    """The Kind column cuts the longest kinds ("recompute-lo…"); typed back into the filter, with
    or without the "…", that text once was an unknown kind."""
    shown = cut(kind, KIND_WIDTH)
    for text in (shown, shown.removesuffix("…")):
        pred = compile_query(f"kind={text}")
        assert pred(row(1, kind=kind)) and not pred(row(2, kind="gating")), text


def test_tags_are_normalised():
    assert parse_tags(" Baseline, sweep-1 ,baseline  lr") == ("baseline", "lr", "sweep-1")
    assert parse_tags("") == ()
