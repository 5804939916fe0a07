"""The run screen's expert-load plots drawn from SQLite for real runs of every MoE job:
train-expert's moe_head, an m-height sparse MoE, train-gating. Each runs for real, is
ingested, and the plot is asserted on its data (one series per expert name, a point per
epoch), never on pixels; events.jsonl is moved away first, so nothing but the store feeds it.
"""

from __future__ import annotations

import pytest

from app.ingest import Ingester
from app.tui.app import MoeTuiApp
from app.tui.screens.run import RunScreen
from app.tui.widgets.curves import Bars, Curves
from tests.gating_synth import write_head_tail_experts
from tests.helpers import TINY, engine, run_dirs
from tests.tui_support import settle



def _train(ws, *args) -> None:
    out = engine(ws.root, *args)
    assert out.returncode == 0, out.stderr[-3000:]
    Ingester(ws).run_pass()
    for rd in run_dirs(ws.root):  # the TUI must not need the events any more
        (rd / "events.jsonl").rename(rd / "events.jsonl.moved")


async def _load_plot(ws, size=(100, 40)):
    """Open the only run's screen; its load curves, bars and the screen."""
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")
        await settle(app, pilot, 1.2)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        assert screen.query_one("#load-row").display
        over = screen.query_one("#load-plot", Curves)
        bars = screen.query_one("#load-bars", Bars)
        return ({over.series_labels[k]: [x for x, _ in pts] for k, pts in over.points.items()},
                list(zip(bars.labels, bars.values)), bars.caption)


async def test_moe_head_expert_load_plot(ws):
    _train(ws, *TINY, "--loss", "moe_head")
    curves, bars, caption = await _load_plot(ws)
    assert curves == {f"e{i}": [1, 2, 3] for i in range(4)}
    assert [name for name, _ in bars] == ["e0", "e1", "e2", "e3"] and "epoch 3" in caption
    assert sum(v for _, v in bars) == pytest.approx(1, abs=1e-3)


async def test_mheight_sparse_moe_expert_load_and_log2_mse_plots(ws, data_run):
    _train(ws, "mheight", "train", "--preset", "quick", "--epochs", "2", "--data", str(data_run),
           "--model", "sparse_moe")
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")
        await settle(app, pilot, 1.2)
        screen = app.screen
        assert screen.query_one("#load-row").display and screen.query_one("#mse-row").display
        over = screen.query_one("#load-plot", Curves)
        assert {over.series_labels[k]: [x for x, _ in pts] for k, pts in over.points.items()} == {
            f"e{i}": [1, 2] for i in range(6)}
        bars = screen.query_one("#load-bars", Bars)
        assert bars.labels == [f"e{i}" for i in range(6)] and sum(bars.values) == pytest.approx(1, abs=1e-4)
        mse = screen.query_one("#mse-plot", Curves)
        assert "val/log2_mse" in mse.points and not any("load" in k for k in mse.points)
        # Three rows of plots do not fit in 40 lines: page down reaches the last one.
        grid = screen.query_one("#plot-grid")
        assert grid.max_scroll_y > 0
        await pilot.press("pagedown", "pagedown")
        await settle(app, pilot)
        assert grid.scroll_y == grid.max_scroll_y


async def test_train_gating_expert_load_plot(ws):
    logits = write_head_tail_experts(ws.root / "logits")
    _train(ws, "train-gating", "--logits-dir", str(logits), "--experts", "head_expert,tail_expert",
           "--class-counts", str(logits / "class_counts.json"), "--epochs", "3", "--warmup-epochs", "1")
    curves, bars, caption = await _load_plot(ws)
    assert curves == {"head_expert": [1, 2, 3], "tail_expert": [1, 2, 3]}
    assert [name for name, _ in bars] == ["head_expert", "tail_expert"] and "epoch 3" in caption
