"""The moe-tui application: screens over a workspace, fed by thread workers."""

from __future__ import annotations

import gc
import threading

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message

from app.errors import UserError
from app.store.db import DatabaseUnreadable
from app.tui.commands import ActionsProvider
from app.tui.data import RunRow, TuiData
from app.tui.screens.runs import RunsScreen
from app.workspace import Workspace

POLL_S = 1.0  # how often the TUI looks for changed runs


class RunsUpdated(Message):
    """Runs that changed since the last poll (sent from a worker thread)."""

    def __init__(self, rows: list[RunRow], removed: set[int], warnings: list[str]):
        super().__init__()
        self.rows, self.removed, self.warnings = rows, removed, warnings


class MoeTuiApp(App):
    TITLE = "moe-tui"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {ActionsProvider}
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit"),
        Binding("question_mark,f1", "help", "Help", id="help"),
        Binding("ctrl+p", "command_palette", "Commands", id="palette", show=False),
    ]

    def __init__(self, ws: Workspace, poll_s: float = POLL_S):
        super().__init__()
        self.ws = ws
        self.data = TuiData(ws)
        self.poll_s = poll_s
        self.runs: dict[int, RunRow] = {}
        self.marked: set[int] = set()  # runs marked for compare and export
        self._rev = 0
        self._store_generation = 0  # Store.generation last seen: a change means the file was rebuilt
        self._poll_lock = threading.Lock()
        self._frozen = False
        self.fatal: str | None = None  # why the app ended early: shown by run_tui once the terminal is back

    def on_mount(self) -> None:
        self.sub_title = str(self.ws.root)
        self.push_screen(RunsScreen())
        self.poll_runs(first=True)
        self.set_interval(self.poll_s, self.poll_runs)

    @work(thread=True, group="poll-runs", exit_on_error=False)
    def poll_runs(self, first: bool = False) -> None:
        # One poll at a time: on a slow disk a pass may outlast the interval.
        if not self._poll_lock.acquire(blocking=False):
            return
        try:
            if first:
                self._poll(ingest=False)  # what the database holds, shown before the first ingest pass
            self._poll(ingest=True)
        except DatabaseUnreadable as e:
            # Every screen reads the database: showing on would show an empty, wrong workspace.
            self.fatal = str(e)
            self.call_from_thread(self.exit, return_code=2)
        finally:
            self._poll_lock.release()

    def _poll(self, ingest: bool) -> None:
        warnings = self.data.refresh_files() if ingest else []
        known = set(self.runs.copy())  # a snapshot: the UI thread updates the dict
        generation = self.ws.store.reopen_if_replaced()
        rebuilt = generation != self._store_generation
        if rebuilt:  # a reindex swapped the file in: its row ids and revisions start afresh, so reload all
            self._store_generation, self._rev = generation, 0
        rows, rev = self.data.runs_since(self._rev)
        if rebuilt:
            removed = known
        else:  # a count below what we show means runs were deleted (here or by another client)
            removed = self.data.deleted_since(known) if self.data.run_count() < len(known | {r.pk for r in rows}) else set()
        self._rev = rev
        if rows or removed or warnings:
            self.post_message(RunsUpdated(rows, removed, warnings))

    def on_runs_updated(self, msg: RunsUpdated) -> None:
        if msg.rows and not self._frozen:
            # A full garbage collection walks every tracked object, and at this point ~160,000 of
            # them (Textual, SQLAlchemy, the rows) will live as long as the app: each collection
            # cost ~60 ms, in the middle of whatever rebuild triggered it (a 1,000-run sort went
            # from ~40 to ~100 ms). Frozen, they are left out of every later collection.
            gc.freeze()
            self._frozen = True
        for pk in msg.removed:
            self.runs.pop(pk, None)
            self.marked.discard(pk)
        for row in msg.rows:
            self.runs[row.pk] = row
        for w in msg.warnings:
            self.notify(w, title="ingest", severity="warning", timeout=10, markup=False)  # quotes files and errors
        for screen in self.screen_stack:
            if hasattr(screen, "runs_updated"):
                screen.runs_updated(msg.rows, msg.removed)

    def on_unmount(self) -> None:
        if self._frozen:
            gc.unfreeze()  # this app's objects may be collected again (tests run many apps in one process)

    def forget_runs(self, pks: set[int]) -> None:
        """Drop runs this client deleted, without waiting for the next poll."""
        self.post_message(RunsUpdated([], pks, []))

    def action_help(self) -> None:
        from app.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))


def run_tui(ws: Workspace, mouse: bool = True) -> None:
    """Run the app; a UserError (exit 2) if it ended for a reason a person must fix."""
    ws.store  # opened before the terminal is taken over: a bad database is the CLI's one line
    app = MoeTuiApp(ws)
    app.run(mouse=mouse)
    if app.fatal:
        raise UserError(app.fatal)
