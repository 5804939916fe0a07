"""The Launch form: generated from the job's config model, inline validation, sweeps,
and a real submit that the daemon runs to the end while the Runs table follows."""

from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable, Input, Select, Static

from app.store.models import Run
from app.tui.app import MoeTuiApp
from app.tui.screens.launch import LaunchScreen, option_args
from engine.core.config import JOBS, parse_argv
from tests.tui_support import open_launch_form as open_form
from tests.tui_support import screen_text, settle


async def type_into(pilot, form: LaunchScreen, name: str, text: str) -> None:
    box = form.query_one(f"#field-{name}", Input)
    box.value = text
    await pilot.pause()


async def test_form_is_built_from_the_config_model(ws):
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_form(app, pilot)
        cls = JOBS["train-expert"]
        names = [i.id.removeprefix("field-") for i in form.query(".field-input").results(Input)]
        assert names == list(cls.model_fields)
        # Preset quick is chosen first: its values, not the recipe's, fill the form.
        assert form.query_one("#field-epochs", Input).value == str(cls.presets["quick"]["epochs"])
        form.query_one("#preset", Select).value = "(recipe defaults)"
        await settle(app, pilot)
        assert form.query_one("#field-epochs", Input).value == "200"
        assert form.query_one("#field-lr_milestones", Input).value == "160,180"


async def test_bad_values_get_inline_messages_and_block_submit(ws):
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_form(app, pilot)
        await type_into(pilot, form, "epochs", "0")
        await type_into(pilot, form, "loss", "focal")
        await type_into(pilot, form, "lr", "fast")
        epochs_error = form.query_one("#error-epochs", Static)
        assert epochs_error.display and "--epochs '0': input should be greater than or equal to 1" in str(epochs_error.render())
        assert "--loss 'focal' is not one of: ce" in str(form.query_one("#error-loss", Static).render())
        assert "--lr 'fast'" in str(form.query_one("#error-lr", Static).render())
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert isinstance(app.screen, LaunchScreen)  # still here, nothing queued
        assert "cannot submit" in str(form.query_one("#form-error", Static).render())
        await type_into(pilot, form, "epochs", "3")
        assert not form.query_one("#error-epochs", Static).display
        form.query_one("#priority", Input).value = "high"
        await type_into(pilot, form, "loss", "ce")
        await type_into(pilot, form, "lr", "0.05")
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert "priority must be a whole number" in str(form.query_one("#form-error", Static).render())
    with ws.store.read() as s:
        assert s.exec(Run.__table__.select()).first() is None
    assert not any((ws.root / "runs").iterdir())


async def test_sweep_values_make_one_run_each(ws):
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_form(app, pilot)
        await type_into(pilot, form, "seed", "0 | 1 | 2")
        await type_into(pilot, form, "lr", "0.05|0.1")
        assert "queues 6 runs" in str(form.query_one("#sweep-info", Static).render())
        argvs = form.build_argvs()
        assert len(argvs) == 6
        for argv, _combo in argvs:
            spec = parse_argv(argv)  # the job's own parser accepts every one
            assert spec.config.epochs == 20 and spec.preset == "quick"
        assert {(parse_argv(a).config.seed, parse_argv(a).config.lr) for a, _ in argvs} == {
            (s, lr) for s in (0, 1, 2) for lr in (0.05, 0.1)}
        await type_into(pilot, form, "seed", "0 | x")
        assert form.query_one("#error-seed", Static).display


def test_option_args_for_each_field_type():
    ann = JOBS["train-expert"].model_fields
    assert option_args("augment", "false", ann["augment"].annotation) == ["--no-augment"]
    assert option_args("augment", "true", ann["augment"].annotation) == ["--augment"]
    assert option_args("lr_milestones", "2,4", ann["lr_milestones"].annotation) == ["--lr-milestones=2,4"]
    assert parse_argv(["train-expert", "--no-augment", "--lr-milestones=2,4"]).config.lr_milestones == [2, 4]


async def test_submit_through_the_form_and_watch_it_finish(ws):
    app = MoeTuiApp(ws, poll_s=0.3)
    async with app.run_test(size=(100, 30)) as pilot:
        form = await open_form(app, pilot)
        for name, value in {"epochs": "3", "image_size": "8", "lr_milestones": "2"}.items():
            await type_into(pilot, form, name, value)
        form.query_one("#run-name", Input).value = "from-the-form"
        await pilot.press("ctrl+s")
        await settle(app, pilot, 0.5)
        assert not isinstance(app.screen, LaunchScreen)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 1
        status = lambda: str(table.get_cell_at((0, table.get_column_index("status")))) # noqa: E731
        assert status() in ("queued", "running", "succeeded")
        seen = {status()}
        for _ in range(360):
            await pilot.pause(0.5)
            seen.add(status())
            if status() in ("succeeded", "failed", "lost"):
                break
        assert status() == "succeeded", seen
        assert str(table.get_cell_at((0, table.get_column_index("progress")))) == "3/3"
        assert str(table.get_cell_at((0, table.get_column_index("name")))) == "from-the-form"
    with ws.store.read() as s:
        run = s.exec(Run.__table__.select()).first()
    argv, config = json.loads(run.argv), json.loads(run.config)
    assert argv[:3] == ["train-expert", "--preset", "quick"] and "--epochs=3" in argv
    assert (config["epochs"], config["image_size"], config["lr_milestones"]) == (3, 8, [2])


async def test_every_field_name_and_the_choices_read_whole_at_80x24(ws):
    """Names of 16 characters and more ran into their values (`crt_lr_milestone3`), and
    the help line was cut after two lines, before a long description's list of choices."""
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_form(app, pilot)
        for kind in sorted(JOBS):
            form.query_one("#kind", Select).value = kind
            await settle(app, pilot)
            for row in form.query(".field-row"):
                label = row.query_one(".field-name")
                name = str(label.render())
                assert label.region.width > len(name), f"{kind}: {name!r} runs into its value"
        # A kind with a required field and no default (it crashed the TUI when chosen):
        # the field waits empty, and Submit says what is missing.
        form.query_one("#kind", Select).value = "mheight-train"
        await settle(app, pilot)
        assert form.query_one("#field-data", Input).value == ""
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert isinstance(app.screen, LaunchScreen)
        assert "cannot submit: --data is required" in str(form.query_one("#form-error", Static).render())
        form.query_one("#kind", Select).value = "train-expert"
        await settle(app, pilot)
        form.query_one("#field-loss", Input).focus()
        await settle(app, pilot)
        shot = screen_text(app)
        assert "[ce | logit_adjust | balanced_softmax | decoupling | moe_head]" in shot.replace("\n ", " "), shot


async def test_long_preset_names_show_in_the_preset_select(ws):
    """`preset cifar100_lt_if100` wrapped inside the one-line select: only `preset` showed."""
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_form(app, pilot)
        form.query_one("#kind", Select).value = "train-gating"
        await settle(app, pilot)
        top = screen_text(app).splitlines()[1]
        assert "preset cifar100_lt_if100" in top and "train-gating" in top and "local" in top, top
