"""Names, tags, notes, commands, errors and config values that look like markup are shown as typed.

They went into Static, DataTable and dialogs as markup: notes "[/]" ended the TUI with a
MarkupError (again each time the cursor reached the run), "[b]" in a tag turned the rest of the
line bold, and "status=[/b" still ended it after the filter error was escaped with
textual.markup.escape (Textual's parser takes any "[", the escape only Rich's tags).
"""

from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable, Input, Static

from app.queue.control import pause
from app.queue.submit import submit
from app.store.models import Run, next_rev
from app.tui.app import MoeTuiApp
from app.tui.screens.dialogs import Confirm
from app.tui.screens.launch import LaunchScreen
from app.tui.screens.queue import QueueScreen
from app.tui.screens.run import RunScreen
from tests.helpers import TINY
from tests.tui_support import answer_prompt, open_launch_form, screen_text, settle

# Each would end the TUI or restyle a line if read as markup; the last ones get past an escape
# written for Rich's markup (an upper-case tag, "$", an unclosed closing tag, a final backslash).
PARENT = dict(
    name="[/]p [b]bold",
    tags="[b]tag,[/]",
    notes="[/] see [link=x]this[/link] [B]up[/B] \\",
    error="ValueError: [/red] at [$accent] C:\\",
    command="engine train-expert --name '[/]' --data [/b",
    config=json.dumps({"loss": "[b]ce", "arch": "[/]", "data": "runs/[i]x\\"}),
)
CHILD_NAME = "[link=x]child[/link]"


def text(widget: Static) -> str:
    return str(widget.render())


def styles(widget: Static) -> set[str]:
    return {str(span.style) for span in widget.render().spans}


def column(table: DataTable, key: str) -> list[str]:
    return [str(table.get_cell_at((r, table.get_column_index(key)))) for r in range(table.row_count)]


@pytest.fixture
def markup_runs(ws, monkeypatch):
    """A queued parent with every text field set to markup-like text, and a child waiting for it."""
    monkeypatch.setenv("MOE_TUI_GPUS", "none")
    from app.queue.slots import discover_gpus

    discover_gpus.cache_clear()
    pause(ws)  # both stay queued
    parent = submit(ws, TINY, name="parent")
    child = submit(ws, TINY, name=CHILD_NAME, after=[parent.run_id])
    with ws.store.write() as s:
        row = s.get(Run, parent.id)
        for key, value in PARENT.items():
            setattr(row, key, value)
        row.rev = next_rev(s)
        s.add(row)
    yield ws, parent.run_id, child.run_id
    discover_gpus.cache_clear()


async def cursor_to(app, pilot, run_id: str) -> None:
    table = app.screen.query_one("#runs", DataTable)
    pk = next(pk for pk, r in app.runs.items() if r.run_id == run_id)
    table.move_cursor(row=table.get_row_index(str(pk)), animate=False)
    await pilot.pause()


async def test_markup_in_run_fields_is_shown_as_typed(markup_runs):
    ws, parent, child = markup_runs
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await settle(app, pilot, 0.5)
        runs = app.screen.query_one("#runs", DataTable)
        assert set(column(runs, "name")) == {"[/]p [b]bold", "[link=x]child[/li…"}
        assert "[/],[b]tag" in column(runs, "tags") and "[b]ce/[/]" in column(runs, "config")

        await cursor_to(app, pilot, parent)
        detail = app.screen.query_one("#run-detail", Static)
        for value in (PARENT["name"], PARENT["command"], "tags: [/], [b]tag", "notes: " + PARENT["notes"], PARENT["error"]):
            assert value in text(detail), value
        assert styles(detail) == {"b", "red"}  # the run id and the error; nothing from the values
        assert "notes: [/] see [link=x]this[/link] [B]up[/B]" in " ".join(screen_text(app).split())

        await pilot.press("enter")
        await settle(app, pilot, 0.5)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        info = screen.query_one("#run-info", Static)
        for value in (PARENT["name"], PARENT["command"], PARENT["error"]):
            assert value in text(info), value
        assert styles(info) == {"b", "red"}
        await pilot.press("2")
        await settle(app, pilot, 0.5)
        config = dict(zip(column(screen.query_one("#config-table", DataTable), "setting"),
                          column(screen.query_one("#config-table", DataTable), "value")))
        assert (config["loss"], config["arch"], config["data"]) == ("[b]ce", "[/]", "runs/[i]x\\")
        await pilot.press("5")
        await settle(app, pilot, 0.8)
        lineage = screen.query_one("#lineage-table", DataTable)
        assert column(lineage, "name") == ["[link=x]ch…"]
        assert f"[b]{child}[/b]" not in text(screen.query_one("#lineage-detail", Static))
        assert f"feeds (after): {child}  {CHILD_NAME}  train-expert" in text(screen.query_one("#lineage-detail", Static))

        await pilot.press("enter")  # the child's own screen, whose lineage names the parent
        await settle(app, pilot, 0.5)
        await pilot.press("5")
        await settle(app, pilot, 0.8)
        assert PARENT["name"] in text(app.screen.query_one("#lineage-detail", Static))
        await pilot.press("escape", "escape")
        await settle(app, pilot)

        await pilot.press("g")  # the Queue screen: names in the table and the line below it
        await settle(app, pilot, 0.5)
        assert isinstance(app.screen, QueueScreen)
        queued = app.screen.query_one("#queued", DataTable)
        assert "[/]p [b]bold" in column(queued, "name")
        queued.move_cursor(row=column(queued, "run_id").index(parent), animate=False)
        await pilot.pause()
        line = app.screen.query_one("#queue-detail", Static)
        assert PARENT["name"] in text(line) and PARENT["error"] in text(line)
        await pilot.press("escape")
        await settle(app, pilot)

        await cursor_to(app, pilot, parent)
        await pilot.press("C")  # the confirmation names the run
        await settle(app, pilot)
        assert isinstance(app.screen, Confirm)
        assert f"({PARENT['name']}, queued)?" in text(app.screen.query_one("#question", Static))
        await pilot.press("n")
        await settle(app, pilot)

        for run_id in (parent, child):  # Compare: names head the columns, config values fill them
            await cursor_to(app, pilot, run_id)
            await pilot.press("space")
        await pilot.press("c")
        await settle(app, pilot, 0.5)
        table = app.screen.query_one("#compare-table", DataTable)
        assert f"[/]p [b]bold {parent[-4:]}" in [str(c.label) for c in table.columns.values()]
        rows = {str(row[0]): {str(v) for v in row[1:]} for row in map(table.get_row_at, range(table.row_count))}
        assert rows["loss"] == {"[b]ce", "ce"} and "[/]" in rows["arch"]
        await pilot.press("escape")
        await settle(app, pilot)

        error = app.screen.query_one("#filter-error", Static)
        for typed in ("status=[/b", "kind=[B]x", "kind=[[/]"):
            await pilot.press("slash", "ctrl+u", *typed, "enter")
            await settle(app, pilot)
            assert f"'{typed.partition('=')[2]}'" in text(error), (typed, text(error))
        assert app.is_running


async def test_launch_form_errors_quote_values_as_typed(ws):
    """The "cannot submit" line quotes a field or an --after ref; "[/b" in one ended the TUI."""
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_launch_form(app, pilot)
        error = form.query_one("#form-error", Static)
        form.query_one("#field-loss", Input).value = "[/b"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert "cannot submit:" in text(error) and "'[/b'" in text(error), text(error)
        form.query_one("#field-loss", Input).value = "ce"
        form.query_one("#after", Input).value = "[/]x"  # refused in the worker that queues the runs
        await pilot.pause()
        await pilot.press("ctrl+s")
        await settle(app, pilot, 0.5)
        assert "cannot submit:" in text(error) and "'[/]x'" in text(error), text(error)
        assert isinstance(app.screen, LaunchScreen) and app.is_running


async def test_notes_typed_with_n_and_an_export_path_are_shown_as_typed(ws):
    """The reported case, by keys: notes "[/]" ended the TUI from #run-detail; and the toast
    after an export quotes the path typed, which Textual's notify parses as markup by default."""
    from benchmarks.bench_tui import seed_runs

    seed_runs(ws, runs=3, epochs=2)
    (ws.root / "[").mkdir()
    out = ws.root / "[" / "]x.csv"  # the path reads "[/]x.csv"
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:  # toasts drawn, as in a terminal
        await settle(app, pilot)
        await answer_prompt(app, pilot, "n", "[/] retry with [b]lr[/b] 0.05")
        await pilot.press("down", "up")  # the cursor leaves the run and comes back to it
        await settle(app, pilot)
        assert "notes: [/] retry with [b]lr[/b] 0.05" in text(app.screen.query_one("#run-detail", Static))
        await answer_prompt(app, pilot, "x", str(out))
        assert out.exists() and app.is_running
        assert f"wrote 3 runs to {out}" in [n.message for n in app._notifications]
        toasts = [str(toast.render()) for toast in app.screen.query("Toast")]
        assert any("[/]x.csv" in toast for toast in toasts), toasts


def test_control_characters_never_reach_the_terminal():
    """An ESC in a run's text would start an escape sequence in the user's terminal
    (here: set the window title, then turn everything after it red)."""
    from app.tui.markup import cell, markup

    hostile = "run\x1b]0;owned\x07 \x1b[31mred\x9b2J\ttab"
    for shown_text in (cell(hostile).plain, markup("[b]$v[/b]", v=hostile).plain):
        assert not any(ch in shown_text for ch in "\x1b\x07\x9b"), repr(shown_text)
        assert shown_text == "run\ufffd]0;owned\ufffd \ufffd[31mred\ufffd2J\ttab"
