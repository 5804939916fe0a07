"""Help: every key of the screen below and of the app, with what it does."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from app.tui.commands import key_label, screen_bindings


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 78; max-width: 100%; height: 90%; border: thick $accent; background: $surface; }
    HelpScreen DataTable { height: 1fr; }
    """
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close help", id="help-close")]

    def __init__(self, over):
        super().__init__()
        self.over = over  # the screen whose keys are listed

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"[b]Keys[/b] on {type(self.over).__name__.removesuffix('Screen')}; "
                        "ctrl+p finds any of them by name. esc closes.")
            yield DataTable(id="help-keys", cursor_type="row", show_cursor=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("Key", key="key")
        table.add_column("Action", key="action")
        for b, _owner in screen_bindings(self.app, self.over):
            table.add_row(key_label(self.app, b), b.description)
        table.add_row(key_label(self.app, Binding("ctrl+p", "")), "Command palette")

    def action_close(self) -> None:
        self.dismiss(None)
