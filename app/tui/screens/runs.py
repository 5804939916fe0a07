"""Runs (home): every run in the workspace, updating while runs progress."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from app.queries import fmt_duration
from app.tui.data import RunRow

STATUS_STYLE = {
    "queued": "dim",
    "running": "bold cyan",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "lost": "magenta",
    "blocked": "dark_orange",
}
COLUMNS = [
    ("status", "Status"),
    ("run_id", "ID"),
    ("name", "Name"),
    ("kind", "Kind"),
    ("progress", "Epoch"),
    ("metric", "Key metric (best)"),
    ("time", "Time"),
]


def cells(row: RunRow, now: float) -> list:
    progress = f"{row.epoch}/{row.total_epochs}" if row.total_epochs else (str(row.epoch) if row.epoch else "")
    metric = f"{row.metric_best:.4f}" if row.metric_best is not None else ""
    return [
        Text(row.status, style=STATUS_STYLE.get(row.status, "")),
        row.run_id,
        row.name,
        row.kind,
        progress,
        metric,
        fmt_duration(row.duration(now)),
    ]


class RunsScreen(Screen):
    CSS_PATH = "runs.tcss"
    BINDINGS = [
        Binding("enter", "open_run", "Open run", id="open-run"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="run-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.runs_updated(list(self.app.runs.values()), set())
        self.set_interval(1.0, self._tick_running)

    def runs_updated(self, rows: list[RunRow], removed: set[int]) -> None:
        table = self.query_one(DataTable)
        now = time.time()
        for pk in removed:
            if str(pk) in table.rows:
                table.remove_row(str(pk))
        added = False
        for row in rows:
            key = str(row.pk)
            values = cells(row, now)
            if key in table.rows:
                for (col, _), value in zip(COLUMNS, values):
                    table.update_cell(key, col, value)
            else:
                table.add_row(*values, key=key)
                added = True
        if added:
            self._sort_newest_first(table)
        self._show_detail()

    def _sort_newest_first(self, table: DataTable) -> None:
        current = self._cursor_key(table)
        table.sort("run_id", reverse=True)
        if current is not None:
            table.move_cursor(row=table.get_row_index(current))

    def _tick_running(self) -> None:
        """Durations of running runs advance without a database read."""
        table = self.query_one(DataTable)
        now = time.time()
        for pk, row in self.app.runs.items():
            if row.status == "running" and str(pk) in table.rows:
                table.update_cell(str(pk), "time", fmt_duration(row.duration(now)))

    @staticmethod
    def _cursor_key(table: DataTable) -> str | None:
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _selected(self) -> RunRow | None:
        key = self._cursor_key(self.query_one(DataTable))
        return self.app.runs.get(int(key)) if key else None

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        row = self._selected()
        detail = self.query_one("#run-detail", Static)
        if row is None:
            detail.update("No runs yet. Queue one with:  moe-tui submit -- train-expert --preset quick")
            return
        lines = [f"[b]{row.run_id}[/b]  {row.command}"]
        if row.metric_key and row.metric_best is not None:
            lines.append(f"best {row.metric_key} = {row.metric_best:.4f}")
        if row.error:
            lines.append(f"[red]{row.error}[/red]")
        detail.update("\n".join(lines))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        from app.tui.screens.run import RunScreen

        row = self._selected()
        if row is not None:
            self.app.push_screen(RunScreen(row.pk))
