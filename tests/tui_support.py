"""Shared by the TUI tests: waiting for workers, and the screen as plain text."""

from __future__ import annotations

import io

from rich.console import Console
from textual.worker import WorkerCancelled


async def settle(app, pilot, seconds: float = 0.0):
    """Wait until the app is idle: every message handled and every worker's result posted.

    No fixed sleep: a result may start another worker, so passes repeat until
    one finds none left. ``seconds`` is only for a test that waits on a timer
    (a poll interval) on purpose. An exclusive worker replaced by a newer one
    ends cancelled; that is normal here.
    """
    if seconds:
        await pilot.pause(seconds)
    for _ in range(50):
        await pilot.pause()
        if all(w.is_finished for w in app.workers):
            break
        try:
            await app.workers.wait_for_complete()
        except WorkerCancelled:
            pass
    await pilot.pause()


def screen_text(app) -> str:
    """What a person sees, as text (the text behind ``App.export_screenshot``)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


async def answer_prompt(app, pilot, key: str, text: str):
    """Press ``key`` (a binding that asks for a line), type ``text`` into its Input, Enter; settled."""
    from textual.widgets import Input

    await pilot.press(key)
    await settle(app, pilot)
    app.screen.query_one(Input).value = text
    await pilot.press("enter")
    await settle(app, pilot)


async def open_launch_form(app, pilot):
    """From the Runs screen, the Launch form (``l``), settled."""
    from app.tui.screens.launch import LaunchScreen

    await settle(app, pilot)
    await pilot.press("l")
    await settle(app, pilot)
    assert isinstance(app.screen, LaunchScreen)
    return app.screen
