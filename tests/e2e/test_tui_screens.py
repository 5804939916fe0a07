"""Pilot tests of each screen: filter, sort, mark, tags, notes, delete, compare, export, palette, help.

Real SQLite workspaces: real finished training runs copied from the session's
run, and for scale and variety the benchmark's deterministic seeder (real Run,
Metric and MetricSummary rows through the store).
"""

from __future__ import annotations

import csv
import json

import pytest

from sqlmodel import select
from textual.widgets import DataTable, Input, Static

from app.store.models import Run
from app.tui.app import MoeTuiApp
from app.tui.cells import cut_middle
from app.tui.screens.compare import CompareScreen, group_by_config, mean_std
from app.tui.screens.dialogs import Confirm, Prompt
from app.tui.screens.help import HelpScreen
from app.tui.screens.run import RunScreen
from app.tui.widgets.curves import Curves, ema
from benchmarks.bench_tui import seed_runs
from engine.core.recorder import RunRecorder
from engine.core.rundir import RunDir
from tests.helpers import moe
from tests.tui_support import answer_prompt, screen_text, settle


def column(table: DataTable, key: str) -> list[str]:
    return [str(table.get_cell_at((r, table.get_column_index(key)))) for r in range(table.row_count)]


async def test_filter_sort_and_bad_filter(ws):
    seed_runs(ws, runs=20, epochs=5)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 20
        # Newest first by default.
        ids = column(table, "run_id")
        assert ids == sorted(ids, reverse=True)

        await pilot.press("slash")
        await pilot.press(*"status=running and loss in (ce, moe_head)")
        await pilot.press("enter")
        await settle(app, pilot)
        assert set(column(table, "status")) == {"running"}
        assert set(column(table, "config")) <= {"ce/resnet32", "moe_head/resnet32"}
        assert 0 < table.row_count < 20
        assert app.screen.query_one(DataTable).has_focus

        # A malformed filter: an inline message, the previous filter stays.
        shown = table.row_count
        await pilot.press("slash", "ctrl+u")  # ctrl+u clears the input
        await pilot.press(*"best.val/balanced_acc >")
        await pilot.press("enter")
        await settle(app, pilot)
        error = app.screen.query_one("#filter-error", Static)
        assert error.display and "needs a value at the end" in str(error.render())
        assert table.row_count == shown

        await pilot.press("escape", "escape")  # leave the input, then clear the filter
        await settle(app, pilot)
        assert table.row_count == 20 and not error.display

        # Sort by key metric (best first), then reverse it.
        app.screen.sort_by("metric")
        await settle(app, pilot)
        values = [float(v) for v in column(table, "metric")]
        assert values == sorted(values, reverse=True)
        await pilot.press("S")
        await settle(app, pilot)
        values = [float(v) for v in column(table, "metric")]
        assert values == sorted(values)
        # s moves the sort to the next column; the header shows it.
        await pilot.press("s")
        assert app.screen.sort_column == "config"
        assert "▲" in str(table.columns["config"].label)


async def test_typing_a_filter_never_flashes_an_empty_table(ws):
    """On the way to status=running the text is the bare word "status" (no run's name holds it)
    and "status=" (an error): the table went empty while typing, and an error from an earlier
    enter stayed under the box about text no longer there."""
    seed_runs(ws, runs=10, epochs=3)
    app = MoeTuiApp(ws, poll_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        error = app.screen.query_one("#filter-error", Static)
        await pilot.press("slash", *"kind=", "enter")
        await settle(app, pilot)
        assert error.display
        await pilot.press("ctrl+u")
        for key in "status=run":
            await pilot.press(key)
            await pilot.pause()
            assert table.row_count > 0, f"empty table after typing up to {key!r}"
            assert not error.display  # the error was about "kind="
        # "status=run" is running already (an unambiguous beginning of a status).
        assert set(column(table, "status")) == {"running"} and "runs" in app.screen.sub_title
        await pilot.press(*"ning and stat")
        await pilot.pause()
        assert set(column(table, "status")) == {"running"}
        assert "no match yet" in app.screen.sub_title  # quietly: why the table did not follow
        await pilot.press("enter")  # a filter that really matches nothing shows so on enter
        await settle(app, pilot)
        assert table.row_count == 0 and "no match" not in app.screen.sub_title
        assert "No run matches the filter" in str(app.screen.query_one("#run-detail", Static).render())


async def test_an_unknown_kind_is_a_line_or_two_under_the_filter_box(ws):
    """The error listed all eleven kinds: four lines under the box at 80 columns, pushing the table
    down. Now the likely kind and where the whole list is."""
    seed_runs(ws, runs=5, epochs=2)
    app = MoeTuiApp(ws, poll_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        error = app.screen.query_one("#filter-error", Static)
        await pilot.press("slash", *"status=running and kind=trian-expert", "enter")
        await settle(app, pilot)
        assert error.display and error.region.height <= 2, str(error.render())
        assert "did you mean train-expert?" in str(error.render())
        assert "engine --help" in " ".join(screen_text(app).split())


async def test_a_filter_error_quoting_brackets_shows_them(ws):
    """The error quotes the filter and went under the box as markup: status=[/] ended the TUI
    with a MarkupError, and [b] in a value turned the rest bold."""
    seed_runs(ws, runs=3, epochs=2)
    app = MoeTuiApp(ws, poll_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        error = app.screen.query_one("#filter-error", Static)
        for text in ("status=[/]", "kind=[b]x"):
            await pilot.press("slash", "ctrl+u", *text, "enter")
            await settle(app, pilot)
            assert error.display and f"'{text[text.index('=') + 1:]}'" in str(error.render()), text


async def test_header_click_sorts(ws):
    seed_runs(ws, runs=8, epochs=3)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(100, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        # Click on the "Name" header: sorted by name ascending; click again: descending.
        x = sum(c.get_render_width(table) for c in list(table.columns.values())[:2]) + 2
        await pilot.click(DataTable, offset=(x, 0))
        await settle(app, pilot)
        assert app.screen.sort_column == "name"
        names = column(table, "name")
        assert names == sorted(names)
        await pilot.click(DataTable, offset=(x, 0))
        await settle(app, pilot)
        assert column(table, "name") == sorted(names, reverse=True)


async def test_key_metric_sort_puts_the_best_first_for_every_goal(ws):
    """Lower Log2-MSE is better: sorted by key metric, m-height's best runs come first, not last,
    and runs of kinds with different key metrics are grouped, each best first."""
    from app.ingest import Ingester

    for kind, key, value in (("mheight-train", "val/log2_mse", 2.5), ("train-expert", "val/balanced_acc", 0.4),
                             ("mheight-train", "val/log2_mse", 0.5), ("train-expert", "val/balanced_acc", 0.8),
                             ("mheight-train", "val/log2_mse", 1.5), ("train-expert", None, None)):
        rd = RunDir.create(ws.runs)
        with RunRecorder(rd, kind=kind, config={}, argv=[kind], total_epochs=1, primary_metric=key) as rec:
            if key:
                rec.log_epoch(1, {key: value})
    Ingester(ws).run_pass()
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        app.screen.sort_by("metric")
        await settle(app, pilot)
        assert column(table, "metric") == ["0.8000", "0.4000", "0.5000", "1.5000", "2.5000", ""]
        await pilot.press("S")  # worst first; the run without a value stays last
        await settle(app, pilot)
        assert column(table, "metric") == ["0.4000", "0.8000", "2.5000", "1.5000", "0.5000", ""]


async def test_home_and_end_go_to_the_first_and_last_run(ws):
    """Home/End scrolled the table sideways, so the next mark landed on the run under the cursor."""
    from app.tui.commands import screen_bindings

    seed_runs(ws, runs=30, epochs=3)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        ids = column(table, "run_id")
        await pilot.press("end")
        await settle(app, pilot)
        assert table.cursor_row == 29 and table.scroll_x == 0
        await pilot.press("space")
        await settle(app, pilot)
        assert {app.runs[pk].run_id for pk in app.marked} == {ids[-1]}
        await pilot.press("home")
        await settle(app, pilot)
        assert table.cursor_row == 0 and table.scroll_x == 0 and table.scroll_y == 0
        described = {b.description for b, _ in screen_bindings(app, app.screen)}
        assert {"First run", "Last run"} <= described  # listed in help and the palette
        app.screen.action_last_run()  # as the palette runs it
        await settle(app, pilot)
        assert table.cursor_row == 29


async def test_mark_compare_groups_and_export_match_the_cli(ws, copy_run):
    for i in range(3):
        copy_run(ws.root, f"241124-00000{i}-abc{i}")
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot, 0.5)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 3
        await pilot.press("space", "space")  # marks the first two (the cursor moves down)
        assert len(app.marked) == 2
        assert column(table, "mark").count("●") == 2

        await pilot.press("c")
        await settle(app, pilot, 0.5)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        cmp_table = screen.query_one("#compare-table", DataTable)
        settings = column(cmp_table, "setting")
        # Same config: no differing settings, but the metrics are there; 'a' shows every setting.
        assert "loss" not in settings and "best.val/balanced_acc" in settings
        await pilot.press("a")
        assert "loss" in column(screen.query_one("#compare-table", DataTable), "setting")
        plot = screen.query_one("#compare-plot", Curves)
        assert len(plot.points) == 2 and all(len(p) == 3 for p in plot.points.values())
        groups = screen.query_one("#group-table", DataTable)
        assert groups.row_count == 1 and str(groups.get_cell_at((0, 0))) == "2"
        assert "±" in str(groups.get_cell_at((0, 2)))  # two runs: mean ± std
        await pilot.press("escape")
        await settle(app, pilot)

        # Export with nothing marked exports what the table shows: here all runs, as the CLI does.
        await pilot.press("u")
        out = ws.root / "tui.csv"
        await pilot.press("x")
        await settle(app, pilot)
        assert isinstance(app.screen, Prompt)
        prompt = app.screen.query_one(Input)
        prompt.value = str(out)
        await pilot.press("enter")
        await settle(app, pilot, 0.5)
    cli = moe(ws.root, "export", "--out", str(ws.root / "cli.csv"))
    assert cli.returncode == 0, cli.stderr
    assert out.read_text() == (ws.root / "cli.csv").read_text()
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and rows[0]["config.loss"] == "ce"


async def test_export_of_marked_runs(ws):
    seed_runs(ws, runs=6, epochs=3)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("space", "down", "space")
        marked = {app.runs[pk].run_id for pk in app.marked}
        out = ws.root / "marked.csv"
        await answer_prompt(app, pilot, "x", str(out))
    assert {r["run_id"] for r in csv.DictReader(out.open())} == marked


async def test_tags_notes_and_tag_filter(ws, copy_run):
    rd = copy_run(ws.root)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await answer_prompt(app, pilot, "t", "Baseline, lt")
        await answer_prompt(app, pilot, "n", "first try")
        table = app.screen.query_one(DataTable)
        assert column(table, "tags") == ["baseline,lt"]
        assert "notes: first try" in str(app.screen.query_one("#run-detail", Static).render())
        app.screen.apply_filter("tag:baseline")
        assert table.row_count == 1
        app.screen.apply_filter("tag:other")
        assert table.row_count == 0
    with ws.store.read() as s:
        run = s.exec(Run.__table__.select()).first()
    assert run.tags == "baseline,lt" and run.notes == "first try" and run.run_id == rd.name


async def test_delete_asks_first_and_removes_dir_and_row(ws, copy_run):
    rd = copy_run(ws.root)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("d")
        await settle(app, pilot)
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")  # no: nothing happens
        await settle(app, pilot)
        assert rd.exists() and app.screen.query_one(DataTable).row_count == 1
        await pilot.press("d")
        await settle(app, pilot)
        await pilot.press("y")
        await settle(app, pilot, 0.5)
        assert not rd.exists()
        assert app.screen.query_one(DataTable).row_count == 0
        await settle(app, pilot, 0.5)  # a later poll does not bring it back
        assert app.screen.query_one(DataTable).row_count == 0
    assert not any(p.name.startswith(".deleted-") for p in (ws.root / "runs").iterdir())
    with ws.store.read() as s:
        assert s.exec(Run.__table__.select()).first() is None


async def test_running_runs_cannot_be_deleted(ws):
    seed_runs(ws, runs=5, epochs=3)  # run 4 (the newest, first row) is running
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert column(app.screen.query_one(DataTable), "status")[0] == "running"
        await pilot.press("d")
        await settle(app, pilot)
        assert not isinstance(app.screen, Confirm)
        assert app.screen.query_one(DataTable).row_count == 5


async def test_run_screen_tabs_log_config_artifacts(ws, copy_run):
    rd = copy_run(ws.root)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")
        await settle(app, pilot, 1.2)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        acc = screen.query_one("#acc-plot", Curves)
        assert [x for x, _ in acc.points["val/balanced_acc"]] == [1, 2, 3]
        assert not screen.query_one("#load-row").display  # no expert_load events in a plain expert

        await pilot.press("m", "l")
        await settle(app, pilot, 0.7)
        assert acc.smooth and acc.log_y

        await pilot.press("2")
        config = screen.query_one("#config-table", DataTable)
        assert "loss" in [str(config.get_cell_at((r, 0))) for r in range(config.row_count)]

        await pilot.press("3")
        await settle(app, pilot, 1.5)
        log_text = "\n".join(line.text for line in screen.query_one("#log-view").lines)
        assert "epoch 3/3" in log_text and log_text.strip().splitlines()[-1] in (rd / "stdout.log").read_text()

        await pilot.press("4")
        await settle(app, pilot, 0.5)
        files = screen.query_one("#artifact-list", DataTable)
        assert "class_groups.json" in column(files, "file")
        await settle(app, pilot, 0.5)
        preview = "\n".join(line.text for line in screen.query_one("#artifact-view").lines)
        first = sorted(p.name for p in (rd / "artifacts").iterdir())[0]
        assert first == "class_groups.json" and "{" in preview


async def test_log2_mse_plot(ws):
    """m-height Log2-MSE keys, overall and per (n, k, m), get their own plot (expert load: test_tui_expert_load)."""
    from app.ingest import Ingester

    rd = RunDir.create(ws.runs)
    rec = RunRecorder(rd, kind="mheight-train", config={"model": "fc"}, argv=["mheight", "train"], total_epochs=3)
    with rec:
        for e in range(1, 4):
            rec.log_epoch(e, {"train/loss": 1.0 / e, "val/log2_mse": 0.5 / e, "val/log2_mse/n9_k4_m2": 0.7 / e})
    Ingester(ws).run_pass()
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")
        await settle(app, pilot, 1.2)
        screen = app.screen
        assert screen.query_one("#mse-row").display and not screen.query_one("#load-row").display
        mse = screen.query_one("#mse-plot", Curves)
        assert sorted(mse.series_labels.values()) == ["log2_mse", "log2_mse/n9_k4_m2"]
        assert [x for x, _ in mse.points["val/log2_mse"]] == [1, 2, 3]


def test_ema_is_bias_corrected_like_tensorboard():
    assert ema([]) == []
    assert ema([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]  # no pull towards 0 at the start
    out = ema([1.0, 3.0], weight=0.5)
    assert out[0] == 1.0 and abs(out[1] - (0.5 * 0.5 * 1 + 0.5 * 3) / 0.75) < 1e-12
    assert ema([1.0, float("nan"), 1.0])[1] != ema([1.0, float("nan"), 1.0])[1]  # nan kept, not spread


async def test_help_and_command_palette(ws, copy_run):
    copy_run(ws.root)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        await settle(app, pilot)
        assert isinstance(app.screen, HelpScreen)
        keys = app.screen.query_one(DataTable)
        actions = [str(keys.get_cell_at((r, 1))) for r in range(keys.row_count)]
        for needed in ("Mark", "Filter", "Sort", "Compare", "Export", "Launch", "Tags", "Notes", "Delete", "Quit"):
            assert needed in actions
        await pilot.press("escape")
        await pilot.press("space")  # mark the run, then compare through the palette
        await pilot.press("ctrl+p")
        await settle(app, pilot)
        await pilot.press(*"compare")
        await settle(app, pilot, 0.5)
        await pilot.press("enter")
        await settle(app, pilot, 0.5)
        assert isinstance(app.screen, CompareScreen)
        # An app-level action (help) through the palette, from another screen.
        await pilot.press("ctrl+p")
        await settle(app, pilot)
        await pilot.press(*"help (")
        await settle(app, pilot, 0.5)
        await pilot.press("enter")
        await settle(app, pilot, 0.5)
        assert isinstance(app.screen, HelpScreen) and "Compare" in str(app.screen.query_one("Label").render())


def test_group_by_config_except_seed():
    from tests.unit.test_tui_query import row

    runs = [row(1, loss="ce", seed=0, best={"val/balanced_acc": 0.2}),
            row(2, loss="ce", seed=1, best={"val/balanced_acc": 0.4}),
            row(3, loss="logit_adjust", seed=0, best={"val/balanced_acc": 0.5})]
    groups = group_by_config(runs)
    assert [len(g.runs) for g in groups] == [2, 1]
    assert groups[0].config == {"loss": "ce"}
    assert mean_std([0.2, 0.4]) == "0.3000 ± 0.1414"
    assert mean_std([0.5]) == "0.5000" and mean_std([]) == "—"


async def test_every_screen_reads_in_80x24(ws, copy_run):
    """Nothing essential is cut off in the smallest terminal a person uses over SSH."""
    copy_run(ws.root)
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        text = screen_text(app)
        for needed in ("Status", "Name", "Epoch", "Key metric", "succeeded", "3/3", "Filter", "Compare"):
            assert needed in text, needed
        await pilot.press("enter")
        await settle(app, pilot, 1.2)
        text = screen_text(app)
        for needed in ("loss", "accuracy (val)", "epoch", "Smooth", "Log scale"):
            assert needed in text, needed


async def test_compare_cuts_long_values_so_every_run_fits_at_80_columns(ws):
    seed_runs(ws, runs=2, epochs=3)
    dirs = [[f"{ws.root}/runs/261125-084305-{i:04d}" for i in range(3)], [f"{ws.root}/elsewhere/experts"]]
    with ws.store.write() as s:  # long lists of paths, as a gating run's expert_dirs
        for run, value in zip(s.exec(select(Run).order_by(Run.id)).all(), dirs):
            run.config = json.dumps({**json.loads(run.config), "expert_dirs": value})
            s.add(run)
    app = MoeTuiApp(ws, poll_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await app.push_screen(CompareScreen(sorted(app.runs)))
        await settle(app, pilot, 0.5)
        shown = screen_text(app)
        assert all(app.runs[pk].run_id[-4:] in shown for pk in app.runs), shown  # both run columns on screen
        row = next(line for line in shown.splitlines() if "expert_dirs" in line)
        assert "…" in row and len(row.rstrip()) <= 80
        table = app.screen.query_one("#compare-table", DataTable)
        table.focus()
        await pilot.press("end")  # the last row, as on every table (RowTable), not a sideways scroll
        assert table.cursor_row == table.row_count - 1 and table.scroll_x == 0
        await pilot.press("home")
        assert table.cursor_row == 0
    assert cut_middle("x" * 10, 28) == "x" * 10 and cut_middle("a" * 20 + "b" * 20, 9) == "aaaa…bbbb"


async def test_run_screen_config_and_log_follow_a_training_run_at_80x24(ws):
    """While a run trains, the Config tab's best.* and final.* move with it (they were
    filled once, when the screen opened), and the Log tab wraps an epoch line so its
    last metrics show at 80 columns (they were cut at the right edge)."""
    rd = RunDir.create(ws.runs)
    rec = RunRecorder(rd, kind="train-expert", config={"loss": "ce"}, argv=["train-expert"], total_epochs=3)
    many = {f"val/metric_{i:02d}": 0.5 for i in range(12)}  # an epoch line of some 250 characters
    seen = {}
    # RunRecorder turns an exception into a failed run: the checks come after its block.
    with rec:
        rec.log_epoch(1, {"val/balanced_acc": 0.25, **many, "val/zz_last": 0.125})
        app = MoeTuiApp(ws, poll_s=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot, 0.6)
            await pilot.press("enter")
            await settle(app, pilot, 1.2)
            await pilot.press("2")
            await settle(app, pilot)
            table = app.screen.query_one("#config-table", DataTable)

            def config() -> dict[str, str]:
                return {str(table.get_cell_at((r, 0))): str(table.get_cell_at((r, 1))) for r in range(table.row_count)}

            seen["epoch 1"] = config()
            rec.log_epoch(2, {"val/balanced_acc": 0.75})
            await settle(app, pilot, 1.5)
            seen["epoch 2"] = config()
            await pilot.press("3")
            await settle(app, pilot, 1.5)
            seen["log"] = screen_text(app)
    assert seen["epoch 1"]["best.val/balanced_acc"] == "0.25" and seen["epoch 1"]["loss"] == "ce"
    assert seen["epoch 2"]["best.val/balanced_acc"] == "0.75" and seen["epoch 2"]["final.val/balanced_acc"] == "0.75"
    assert "val/zz_last" in seen["log"], seen["log"]


async def test_compare_groups_of_several_kinds_read_at_80x24(ws):
    """Groups of runs of different kinds: each label names its own settings (not every other
    kind's as '=—') and each its own key metric, and the figures come before the label, so a
    long one cannot push them off (they were past column 80)."""
    from app.ingest import Ingester

    for kind, config, key, value in (
        ("train-expert", {"loss": "ce", "arch": "resnet32", "lr": 0.1, "epochs": 20, "batch_size": 32}, "val/balanced_acc", 0.875),
        ("mheight-train", {"model": "fc", "blocks": 4, "channels": 64, "lr": 0.001, "batch_size": 64}, "val/log2_mse", 1.5),
    ):
        rd = RunDir.create(ws.runs)
        with RunRecorder(rd, kind=kind, config=config, argv=[kind], total_epochs=1, primary_metric=key) as rec:
            rec.log_epoch(1, {key: value})
    Ingester(ws).run_pass()
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("space", "space", "c")
        await settle(app, pilot)
        await pilot.press("3")
        await settle(app, pilot)
        shot = screen_text(app)
    lines = shot.splitlines()
    assert any("val/balanced_acc" in line and "0.8750" in line and "train-expert: " in line for line in lines), shot
    assert any("val/log2_mse" in line and "1.5000" in line and "mheight-train: " in line for line in lines), shot
    assert "=—" not in shot, shot
