"""Queue actions in the TUI: cancel, retry, priority from the Runs table; the Queue
screen (slots, start order, pause/resume); the Run screen's Lineage tab; the
launch form's dependencies, GPUs and sweep groups.

Real workspaces: runs are queued through app.queue.submit with the tests' TINY
arguments (the job's own parser validates them); the queue is paused where
the test needs runs to stay queued, and a real daemon runs a real job where a
slot must be occupied.
"""

from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable, Input, Static

from app.queue.control import cancel, is_paused, pause, resume
from app.queue.deps import settle_dependencies
from app.queue.submit import submit
from app.store.models import Run, RunDependency
from app.tui.app import MoeTuiApp
from app.tui.screens.compare import group_by_config
from app.tui.screens.dialogs import Confirm
from app.tui.screens.help import HelpScreen
from app.tui.screens.launch import LaunchScreen
from app.tui.screens.queue import QueueScreen
from app.tui.screens.run import RunScreen
from tests.helpers import TINY, tiny, wait_for
from tests.tui_support import open_launch_form, screen_text, settle


def column(table: DataTable, key: str) -> list[str]:
    return [str(table.get_cell_at((r, table.get_column_index(key)))) for r in range(table.row_count)]


def runs_by_id(ws) -> dict[str, Run]:
    with ws.store.read() as s:
        return {r.run_id: r for r in s.exec(Run.__table__.select()).all()}


def db_run(ws, run_id: str) -> Run:
    return runs_by_id(ws)[run_id]


async def cursor_to(app, pilot, run_id: str) -> None:
    """Put the Runs table's cursor on ``run_id``."""
    table = app.screen.query_one("#runs", DataTable)
    pk = next(pk for pk, r in app.runs.items() if r.run_id == run_id)
    table.move_cursor(row=table.get_row_index(str(pk)), animate=False)
    await pilot.pause()


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


@pytest.fixture
def paused_ws(ws, monkeypatch):
    """A workspace whose queue starts nothing: runs stay queued while the test acts on them."""
    monkeypatch.setenv("MOE_TUI_GPUS", "none")
    from app.queue.slots import discover_gpus

    discover_gpus.cache_clear()
    pause(ws)
    yield ws
    discover_gpus.cache_clear()


async def test_priority_cancel_and_retry_from_the_runs_table(paused_ws):
    ws = paused_ws
    a = submit(paused_ws, TINY, name="a")
    b = submit(paused_ws, TINY, name="b")
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, 0.5)
        table = app.screen.query_one("#runs", DataTable)
        assert table.row_count == 2
        # The Slot column says what a waiting run asks for.
        assert set(column(table, "slot")) == {"cpu"}

        await cursor_to(app, pilot, a.run_id)
        await pilot.press("plus", "plus", "minus")
        await settle(app, pilot, 0.5)
        assert db_run(ws, a.run_id).priority == 1
        submitted = json.loads((ws.runs / a.run_id / "submit.json").read_text())
        assert submitted["priority"] == 1  # a rebuilt database keeps it
        assert app.runs[next(pk for pk, r in app.runs.items() if r.run_id == a.run_id)].priority == 1

        # Cancel asks first; "n" leaves the run alone.
        await cursor_to(app, pilot, b.run_id)
        await pilot.press("C")
        await settle(app, pilot)
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")
        await settle(app, pilot)
        assert db_run(ws, b.run_id).status == "queued"
        await pilot.press("C")
        await settle(app, pilot)
        await pilot.press("y")
        await settle(app, pilot, 0.8)
        assert db_run(ws, b.run_id).status == "cancelled"  # never started: cancelled at once
        assert "cancelled" in column(table, "status")

        # Cancelling it again, or raising a finished run's priority: a one-line error, no crash.
        await pilot.press("C")
        await settle(app, pilot)
        assert not isinstance(app.screen, Confirm)
        await pilot.press("plus")
        await settle(app, pilot, 0.5)
        assert any("only a queued or blocked run's priority can change" in m for m in notifications(app))

        # Retry: a new queued run with the same arguments, pointing back at the old one.
        await pilot.press("r")
        await settle(app, pilot, 0.8)
        runs = runs_by_id(ws)
        (new,) = [r for r in runs.values() if r.retry_of == b.run_id]
        assert new.status == "queued" and json.loads(new.argv) == json.loads(db_run(ws, b.run_id).argv)
        assert table.row_count == 3
        # Retry with resume: b was cancelled before it started, so there is no last.pth to go on from.
        await cursor_to(app, pilot, b.run_id)
        await pilot.press("R")
        await settle(app, pilot, 0.5)
        assert any("the run saved no checkpoint" in m for m in notifications(app))
        assert len(runs_by_id(ws)) == 3
        # A running/queued run cannot be retried.
        await cursor_to(app, pilot, a.run_id)
        await pilot.press("r")
        await settle(app, pilot, 0.5)
        assert any("only a finished run can be retried" in m for m in notifications(app))


async def test_blocked_runs_show_and_retry_requeues_them(paused_ws):
    ws = paused_ws
    parent = submit(ws, TINY, name="parent")
    child = submit(ws, TINY, name="child", after=[parent.run_id])
    cancel(ws, parent.run_id)
    with ws.store.write() as s:  # what the daemon's next pass does
        settle_dependencies(s)
    assert db_run(ws, child.run_id).status == "blocked"
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, 0.5)
        table = app.screen.query_one("#runs", DataTable)
        cell = table.get_cell(str(child.id), "status")
        assert str(cell) == "blocked" and "reverse" in str(cell.style)  # stands out from queued
        await cursor_to(app, pilot, child.run_id)
        assert "retry" in str(app.screen.query_one("#run-detail", Static).render())  # the reason, with the fix
        await cursor_to(app, pilot, parent.run_id)
        await pilot.press("r")
        await settle(app, pilot, 0.8)
        await settle(app, pilot, 0.5)
        assert str(table.get_cell(str(child.id), "status")) == "queued"
    runs = runs_by_id(ws)
    (retry,) = [r for r in runs.values() if r.retry_of == parent.run_id]
    with ws.store.read() as s:
        deps = s.exec(RunDependency.__table__.select().where(RunDependency.run == child.id)).all()
    assert [d.parent for d in deps] == [retry.id]  # the child now waits for the retry


async def test_queue_screen_start_order_priority_and_pause(paused_ws):
    ws = paused_ws
    low = submit(ws, TINY, name="low")
    high = submit(ws, TINY, name="high", priority=5)
    waits = submit(ws, TINY, name="waits", after=[low.run_id])
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("g")
        await settle(app, pilot, 0.5)
        screen = app.screen
        assert isinstance(screen, QueueScreen)
        table = screen.query_one("#queued", DataTable)
        # Highest priority first, then oldest; the dependent run names what it waits for.
        assert column(table, "run_id") == [high.run_id, low.run_id, waits.run_id]
        assert column(table, "pos") == ["1", "2", "3"]
        assert column(table, "waits")[2] == low.run_id
        info = str(screen.query_one("#queue-info", Static).render())
        assert "PAUSED" in info and "slots 0 GPU x 1 + 1 CPU" in info
        slots = screen.query_one("#slots", DataTable)
        assert column(slots, "slot")[0] == "cpu 0" and set(column(slots, "runs")) == {"free"}

        # Raise "low" above "high": the order follows.
        table.move_cursor(row=1, animate=False)
        await pilot.press(*["plus"] * 6)
        await settle(app, pilot, 1.2)
        assert db_run(ws, low.run_id).priority == 6
        assert column(table, "run_id")[0] == low.run_id
        assert table.cursor_row == 0  # the cursor follows the run it was on

        # enter opens the run; every queue action is in the help screen.
        await pilot.press("enter")
        await settle(app, pilot, 0.5)
        assert isinstance(app.screen, RunScreen) and app.screen.row.run_id == low.run_id
        await pilot.press("escape")
        await pilot.press("question_mark")
        await settle(app, pilot)
        assert isinstance(app.screen, HelpScreen)
        keys = app.screen.query_one(DataTable)
        actions = [str(keys.get_cell_at((r, 1))) for r in range(keys.row_count)]
        for needed in ("Pause/resume", "Raise priority", "Lower priority", "Cancel run", "Open"):
            assert needed in actions, needed
        await pilot.press("escape")
        await settle(app, pilot)

        # Last, as resuming lets the daemon start runs: p resumes, p pauses again.
        await pilot.press("p")
        await settle(app, pilot, 0.8)
        assert not is_paused(ws)
        assert "queue running" in str(screen.query_one("#queue-info", Static).render())
        await pilot.press("p")
        await settle(app, pilot, 0.8)
        assert is_paused(ws)
        assert "PAUSED" in str(screen.query_one("#queue-info", Static).render())


async def test_queue_screen_shows_the_run_on_its_slot(ws, monkeypatch):
    """A real daemon starts a real run: the Queue screen shows it on its CPU slot, Runs in the Slot column."""
    monkeypatch.setenv("MOE_TUI_GPUS", "none")
    from app.queue.daemon import ensure_daemon
    from app.queue.slots import discover_gpus

    discover_gpus.cache_clear()
    run = submit(ws, tiny(epochs="20"), name="on-a-slot")  # 20 epochs: it stays running a while
    ensure_daemon(ws)
    wait_for(lambda: db_run(ws, run.run_id).status != "queued", timeout=60, what="the daemon to start the run")
    assert db_run(ws, run.run_id).slots == "cpu:0"
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, 0.5)
        table = app.screen.query_one("#runs", DataTable)
        assert column(table, "slot") == ["cpu:0"]
        await pilot.press("g")
        await settle(app, pilot, 0.5)
        slots = app.screen.query_one("#slots", DataTable)
        assert column(slots, "slot")[0] == "cpu 0" and column(slots, "used")[0] == "1/1"
        assert column(slots, "runs")[0] == f"{run.run_id} on-a-slot"
        # Cancel from the Queue screen does not apply to a running run's row (it is not queued): use Runs.
        await pilot.press("escape")
        await settle(app, pilot)
        await pilot.press("C")
        await settle(app, pilot)
        await pilot.press("y")
        await settle(app, pilot, 0.5)
        assert db_run(ws, run.run_id).cancel_requested_at is not None
    wait_for(lambda: db_run(ws, run.run_id).status == "cancelled", timeout=60, what="the daemon to stop the run")
    discover_gpus.cache_clear()


async def open_lineage(app, pilot, run_id: str) -> DataTable:
    """Open the run's screen from the runs table and its Lineage tab."""
    await cursor_to(app, pilot, run_id)
    await pilot.press("enter")
    await settle(app, pilot, 0.5)
    await pilot.press("5")
    await settle(app, pilot, 0.8)
    return app.screen.query_one("#lineage-table", DataTable)


async def test_lineage_tab_shows_parents_and_consumers(paused_ws):
    ws = paused_ws
    expert = submit(ws, TINY, name="expert")
    after = submit(ws, TINY, name="after-it", after=[expert.run_id])
    gating = submit(ws, ["train-gating", "--preset", "quick", "--logits-dir", f"{{run:{expert.run_id}}}"], name="gating")
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, 0.5)
        lineage = await open_lineage(app, pilot, expert.run_id)
        rows = list(zip(column(lineage, "dir"), column(lineage, "how"), column(lineage, "run_id")))
        # The placeholder made a dependency too (submit resolves {run:} into an edge).
        assert sorted(rows) == sorted([("feeds", "after", after.run_id),
                                       ("feeds", "after+{run:}", gating.run_id)])
        lineage.move_cursor(row=[r[2] for r in rows].index(gating.run_id), animate=False)
        await pilot.pause()
        await pilot.press("enter")
        await settle(app, pilot, 0.5)
        screen = app.screen
        assert isinstance(screen, RunScreen) and screen.row.run_id == gating.run_id
        await pilot.press("5")
        await settle(app, pilot, 0.8)
        back = screen.query_one("#lineage-table", DataTable)
        assert list(zip(column(back, "dir"), column(back, "run_id"))) == [("fed by", expert.run_id)]
        assert "5 Lineage" in screen_text(app)


async def test_cut_names_and_kinds_end_in_an_ellipsis_at_80_columns(paused_ws):
    """Kinds were cut at 12 characters with nothing to show it (mheight-fine, recompute-lo), names
    at 12 in Lineage and 14 on Queue, and Waits for lost the last character of the id."""
    ws = paused_ws
    expert = submit(ws, TINY, name="expert-with-a-long-name")
    logits = submit(ws, ["recompute-logits", "--experts", f"{{run:{expert.run_id}}}"], name="logits-of-the-expert")
    mh = submit(ws, ["mheight-train", "--preset", "quick", "--data", f"{{run:{expert.run_id}}}"], name="mh")
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, 0.5)
        runs = app.screen.query_one("#runs", DataTable)
        kinds = dict(zip(column(runs, "run_id"), column(runs, "kind")))
        assert kinds == {expert.run_id: "train-expert", logits.run_id: "recompute-lo…", mh.run_id: "mheight-train"}
        assert "recompute-lo… " in screen_text(app)

        lineage = await open_lineage(app, pilot, expert.run_id)
        row = column(lineage, "run_id").index(logits.run_id)
        assert (column(lineage, "name")[row], column(lineage, "kind")[row]) == ("logits-of-…", "recompute-l…")
        lineage.move_cursor(row=row, animate=False)
        await pilot.pause()
        detail = str(app.screen.query_one("#lineage-detail", Static).render())
        assert "logits-of-the-expert" in detail and "recompute-logits" in detail  # the line below: whole
        shot = screen_text(app)
        assert "logits-of-…  recompute-l…" in shot, shot

        await pilot.press("escape", "g")
        await settle(app, pilot, 0.5)
        queued = app.screen.query_one("#queued", DataTable)
        by_id = {r: (n, w) for r, n, w in zip(column(queued, "run_id"), column(queued, "name"), column(queued, "waits"))}
        assert by_id[expert.run_id] == ("expert-with-…", "")
        assert by_id[logits.run_id] == ("logits-of-th…", expert.run_id)  # the parent's id whole
        shot = screen_text(app)
        assert f"{logits.run_id}  {expert.run_id}" in shot, shot


async def test_launch_form_dependencies_gpus_and_sweep_group(paused_ws):
    ws = paused_ws
    parent = submit(ws, TINY, name="parent")
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_launch_form(app, pilot)
        after = form.query_one("#after", Input)
        after.value = "no-such-run"
        await settle(app, pilot)
        error = form.query_one("#after-error", Static)
        assert error.display and "dependency: no run 'no-such-run'" in str(error.render())
        await pilot.press("ctrl+s")
        await settle(app, pilot, 0.5)
        assert isinstance(app.screen, LaunchScreen)
        assert "dependency: no run 'no-such-run'" in str(form.query_one("#form-error", Static).render())

        after.value = parent.name
        await settle(app, pilot)
        assert not error.display
        # More GPUs than this machine has: the form says so and queues nothing.
        form.query_one("#gpus", Input).value = "2"
        await pilot.press("ctrl+s")
        await settle(app, pilot, 0.5)
        assert "asks for 2 GPU(s) but this machine has 0" in str(form.query_one("#form-error", Static).render())
        assert len(runs_by_id(ws)) == 1

        form.query_one("#gpus", Input).value = "0"
        form.query_one("#field-seed", Input).value = "0|1"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await settle(app, pilot, 0.8)
        assert not isinstance(app.screen, LaunchScreen)
    runs = [r for r in runs_by_id(ws).values() if r.run_id != parent.run_id]
    assert len(runs) == 2
    assert len({r.group_id for r in runs}) == 1 and runs[0].group_id.startswith("sweep-")
    assert {json.loads(r.config)["seed"] for r in runs} == {0, 1}
    with ws.store.read() as s:
        parents = {d.parent for d in s.exec(RunDependency.__table__.select()).all()}
    assert parents == {parent.id}
    record = json.loads((ws.runs / runs[0].run_id / "submit.json").read_text())
    assert record["after"] == [parent.run_id] and record["gpus"] == 0 and record["group_id"] == runs[0].group_id
    assert record["repro"]["command"].startswith("moe-tui submit --backend local --priority 0 --gpus 0 --after=parent")


async def test_after_a_launch_the_cursor_is_on_the_new_run(paused_ws):
    """The cursor stayed on the run it was on before the launch, so a tag or a cancel right
    after it acted on that run, not on the one just queued."""
    ws = paused_ws
    old = [submit(ws, TINY, name=f"old-{i}") for i in range(3)]
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await cursor_to(app, pilot, old[0].run_id)  # the oldest: the last row
        await pilot.press("l")
        await settle(app, pilot)
        form = app.screen
        assert isinstance(form, LaunchScreen)
        form.query_one("#run-name", Input).value = "just-launched"
        form.query_one("#gpus", Input).value = "0"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await settle(app, pilot, 0.8)
        screen = app.screen
        assert not isinstance(screen, LaunchScreen)
        assert screen.selected_run() is not None and screen.selected_run().name == "just-launched"
        assert screen.query_one("#runs", DataTable).cursor_row == 0  # newest first
        assert "just-launched" in str(screen.query_one("#run-detail", Static).render())


def test_compare_groups_runs_of_a_sweep_together():
    from dataclasses import replace

    from tests.unit.test_tui_query import row

    runs = [replace(row(1, seed=0, best={"val/balanced_acc": 0.2}), group_id="sweep-a"),
            replace(row(2, seed=1, best={"val/balanced_acc": 0.4}), group_id="sweep-a"),
            replace(row(3, seed=0, best={"val/balanced_acc": 0.5}), group_id="sweep-b"),
            row(4, seed=2, best={"val/balanced_acc": 0.6})]
    groups = group_by_config(runs)
    # Same config everywhere: one group per sweep, and the run outside any sweep alone.
    assert [(g.sweep, [r.pk for r in g.runs]) for g in groups] == [("sweep-a", [1, 2]), ("sweep-b", [3]), (None, [4])]


async def test_queue_actions_are_in_the_palette(paused_ws):
    ws = paused_ws
    run = submit(ws, TINY, name="x")
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, 0.5)
        await pilot.press("ctrl+p")
        await settle(app, pilot)
        await pilot.press(*"raise priority")
        await settle(app, pilot, 0.5)
        await pilot.press("enter")
        await settle(app, pilot, 0.8)
        assert db_run(ws, run.run_id).priority == 1
        await pilot.press("ctrl+p")
        await settle(app, pilot)
        await pilot.press(*"queue (")
        await settle(app, pilot, 0.5)
        await pilot.press("enter")
        await settle(app, pilot, 0.5)
        assert isinstance(app.screen, QueueScreen)
