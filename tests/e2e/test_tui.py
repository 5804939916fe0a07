"""The TUI through Textual's Pilot, on a real workspace with a real run training."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable

from app.tui.app import MoeTuiApp
from app.tui.screens.run import RunScreen
from app.tui.widgets.curves import Curves, downsample
from tests.helpers import engine_bg, epoch_events, run_dirs, wait_for
from tests.tui_support import settle


async def test_runs_table_shows_existing_runs(ws, copy_run):
    rd = copy_run(ws.root)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 1
        cell = lambda key: str(table.get_cell_at((0, table.get_column_index(key))))  # noqa: E731
        assert cell("status") == "succeeded" and cell("run_id") == rd.name and cell("progress") == "3/3"
        assert cell("config") == "ce/resnet8" and cell("backend") == "headless" and cell("metric")


async def test_table_and_plots_follow_a_training_run(ws):
    """No daemon: the TUI ingests the headless run itself, and its plots grow."""
    job = engine_bg(ws.root, "train-expert", "--preset", "quick")
    try:
        rd = wait_for(lambda: (run_dirs(ws.root) or [None])[0], what="the run directory")
        wait_for(lambda: len(epoch_events(rd)) >= 1, timeout=120, what="the first epoch")
        app = MoeTuiApp(ws, poll_s=0.2)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(app, pilot, 0.5)
            table = app.screen.query_one(DataTable)
            assert table.row_count == 1 and str(table.get_cell_at((0, table.get_column_index("status")))) == "running"
            await pilot.press("enter")
            await settle(app, pilot, 1.2)
            assert isinstance(app.screen, RunScreen)
            loss = app.screen.query_one("#loss-plot", Curves)
            first = len(loss.points["train/loss"])
            assert first >= 1
            for _ in range(120):
                await pilot.pause(0.5)
                if len(loss.points["train/loss"]) > first + 1:
                    break
            assert len(loss.points["train/loss"]) > first + 1
            await pilot.press("escape")
            await settle(app, pilot)
            assert app.screen.query_one(DataTable).row_count == 1
    finally:
        job.kill()
        job.wait()


def test_downsample_keeps_ends_and_bounds_size():
    pts = [(float(i), float(i * i)) for i in range(1000)]
    out = downsample(pts, 80)
    assert len(out) <= 81 and out[0] == pts[0] and out[-1] == pts[-1]
    assert downsample(pts[:50], 80) == pts[:50]
