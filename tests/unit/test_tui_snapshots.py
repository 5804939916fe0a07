"""Snapshots of the main screens at 80 x 24, as the text a person sees.

The workspace is the benchmark's deterministic seed (fixed ids, times and
values), so the screens are the same on every machine. After an intended
change of the look, refresh them with:

    UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/unit/test_tui_snapshots.py

and read the diff of tests/unit/snapshots/ before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from app.tui.app import MoeTuiApp
from app.tui.screens.compare import CompareScreen
from app.tui.screens.help import HelpScreen
from app.tui.screens.run import RunScreen
from benchmarks.bench_tui import seed_runs
from tests.tui_support import screen_text, settle

SNAPSHOTS = Path(__file__).with_name("snapshots")
SIZE = (80, 24)


@pytest.fixture
def seeded(ws):
    seed_runs(ws, runs=12, epochs=8)
    with ws.store.write() as s:  # a running run's duration grows with the clock: end them
        s.connection().execute(text("UPDATE run SET status='cancelled', ended_at=started_at+42 WHERE status='running'"))
    return ws


def footer_line(shot: str) -> str:
    """The footer's key hints: the last line, left of the command palette's `^p Commands`."""
    return shot.rstrip("\n").splitlines()[-1].split("\u258f")[0]


def missing_hints(app, shot: str) -> list[str]:
    """The footer hints of the screen's bindings that do not show whole at this size."""
    line = footer_line(shot)
    screen = app.screen.over if isinstance(app.screen, HelpScreen) else app.screen  # a modal shows the footer below it
    shown = {ab.binding.description for ab in screen.active_bindings.values() if ab.binding.show}
    return sorted(d for d in shown if f" {d} " not in f" {line} ")


def check(app, name: str) -> None:
    shot = screen_text(app).replace(str(app.ws.root), "<workspace>")
    assert not missing_hints(app, shot), f"{name}: footer hints cut or dropped at {SIZE}: {missing_hints(app, shot)}"
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS") or not path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(shot)
        if not os.environ.get("UPDATE_SNAPSHOTS"):
            pytest.fail(f"wrote the new snapshot {path}; check it and run again")
    assert shot == path.read_text(), f"screen differs from {path} (UPDATE_SNAPSHOTS=1 to accept a change)"


async def test_runs_screen(seeded):
    app = MoeTuiApp(seeded, poll_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("down", "space", "down", "space")
        await settle(app, pilot)
        check(app, "runs")


async def test_runs_screen_with_a_bad_filter(seeded):
    app = MoeTuiApp(seeded, poll_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("slash", *"loss in (ce", "enter")
        await settle(app, pilot)
        check(app, "runs_bad_filter")


async def test_run_screen(seeded):
    app = MoeTuiApp(seeded, poll_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await app.push_screen(RunScreen(min(app.runs)))
        await settle(app, pilot, 0.8)
        check(app, "run")


async def test_compare_screen(seeded):
    app = MoeTuiApp(seeded, poll_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        pks = sorted(app.runs)[:6]
        app.marked.update(pks)
        await app.push_screen(CompareScreen(pks))
        await settle(app, pilot, 0.5)
        check(app, "compare_table")
        await pilot.press("3")
        await settle(app, pilot)
        check(app, "compare_groups")


async def test_launch_and_help_screens(seeded):
    app = MoeTuiApp(seeded, poll_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("l")
        await settle(app, pilot)
        check(app, "launch")
        await pilot.press("escape", "question_mark")
        await settle(app, pilot)
        check(app, "help")


async def test_queue_screen(seeded, monkeypatch):
    from app.queue.control import pause
    from app.queue.slots import discover_gpus

    monkeypatch.setenv("MOE_TUI_GPUS", "none")  # the same slots on every machine
    discover_gpus.cache_clear()
    pause(seeded)
    with seeded.store.write() as s:  # the three newest runs wait: one with a dependency, one blocked
        conn = s.connection()
        ids = [r[0] for r in conn.execute(text("SELECT id FROM run ORDER BY id DESC LIMIT 3"))]
        conn.execute(text(f"UPDATE run SET status='queued', started_at=NULL, ended_at=NULL, epoch=0 WHERE id IN {tuple(ids)}"))
        conn.execute(text(f"UPDATE run SET priority=2 WHERE id={ids[2]}"))
        conn.execute(text(f"UPDATE run SET status='blocked', error='dependency failed' WHERE id={ids[0]}"))
        conn.execute(text(f"INSERT INTO run_dependency (run, parent) VALUES ({ids[1]}, {ids[2]})"))
    # The TUI starts a daemon for queued runs; have it up first, so the top line reads the same every time.
    from app.queue.daemon import daemon_info, ensure_daemon
    from tests.helpers import wait_for

    ensure_daemon(seeded)
    wait_for(lambda: daemon_info(seeded) is not None, timeout=60, what="the daemon")
    app = MoeTuiApp(seeded, poll_s=60)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("g")
            await settle(app, pilot, 0.5)
            check(app, "queue")
    finally:
        discover_gpus.cache_clear()
