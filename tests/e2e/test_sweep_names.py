"""One sweep, one set of names: `moe-tui submit --sweep` and the launch form agree,
and the Queue screen shows the order the daemon starts runs in."""

from __future__ import annotations

import pytest
from sqlmodel import select
from textual.widgets import Input, Static

from app.queue.daemon import Daemon
from app.queue.submit import submit
from app.store.models import Run
from app.tui.app import MoeTuiApp
from app.tui.data import TuiData
from tests.helpers import moe
from tests.tui_support import open_launch_form, settle


def names_and_groups(ws) -> tuple[list[str], set[str]]:
    with ws.store.read() as s:
        runs = s.exec(select(Run).order_by(Run.id)).all()
        return [r.name for r in runs], {r.group_id for r in runs}


async def form_sweep(ws, name: str, fields: dict[str, str]) -> None:
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_launch_form(app, pilot)
        form.query_one("#run-name", Input).value = name
        for field, text in fields.items():
            form.query_one(f"#field-{field}", Input).value = text
        await pilot.pause()
        await pilot.press("ctrl+s")
        for _ in range(100):
            await settle(app, pilot, 0.1)
            if not isinstance(app.screen, type(form)):
                break
        assert not isinstance(app.screen, type(form)), str(form.query_one("#form-error", Static).render())


@pytest.mark.parametrize("name", ["la", ""])
async def test_cli_and_form_name_a_sweep_alike(ws, name):
    assert moe(ws.root, "pause").returncode == 0  # queued, never started: this is about names
    named = ["--name", name] if name else []
    out = moe(ws.root, "submit", *named, "--sweep", "seed=0,1", "--sweep", "lr=0.05,0.1", "--",
              "train-expert", "--preset", "quick")
    assert out.returncode == 0, out.stderr
    cli_names, cli_groups = names_and_groups(ws)
    assert len(cli_names) == 4 and len(cli_groups) == 1
    if name:
        assert cli_names[0] == "la lr=0.05 seed=0"
    await form_sweep(ws, name, {"lr": "0.05 | 0.1", "seed": "0|1"})
    all_names, groups = names_and_groups(ws)
    assert all_names[4:] == cli_names and len(groups) == 2, "the form's sweep is its own group with the same names"


async def test_form_refuses_a_sweep_over_the_cap(ws):
    app = MoeTuiApp(ws, poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_launch_form(app, pilot)
        form.query_one("#field-seed", Input).value = " | ".join(map(str, range(13)))
        form.query_one("#field-lr", Input).value = "0.1|0.2|0.3|0.4|0.5"
        await pilot.pause()
        assert "65 runs: more than a sweep may queue (64)" in str(form.query_one("#sweep-info", Static).render())
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert "this sweep makes 65 runs (5 x 13); at most 64" in str(form.query_one("#form-error", Static).render())
    assert names_and_groups(ws)[0] == []


def test_cli_refuses_a_sweep_over_the_cap(ws):
    out = moe(ws.root, "submit", "--sweep", "seed=" + ",".join(map(str, range(65))), "--",
              "train-expert", "--preset", "quick")
    assert out.returncode != 0 and "this sweep makes 65 runs" in out.stderr
    assert names_and_groups(ws)[0] == []


def test_queue_screen_shows_the_daemons_start_order(ws):
    for priority in (0, 5, 0, -1, 5, 2):
        submit(ws, ["train-expert", "--preset", "quick"], priority=priority)
    daemon_order = [pk for pk, *_ in Daemon(ws).startable([])]
    shown = [q.pk for q in sorted((q for q in TuiData(ws).queue_state().queued if q.position), key=lambda q: q.position)]
    assert shown == daemon_order
    with ws.store.read() as s:
        prio = dict(s.exec(select(Run.id, Run.priority)).all())
    assert [prio[pk] for pk in daemon_order] == [5, 5, 2, 0, 0, -1]
