"""Runs (home): every run in the workspace, filtered, sorted, marked; updates while runs progress."""

from __future__ import annotations

import time
from datetime import datetime

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.geometry import Size
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from app.errors import UserError
from app.queries import fmt_duration
from app.store.models import ACTIVE
from app.tui.actions import QueueActions
from app.tui.cells import cut
from app.tui.data import RunRow, parse_tags
from app.tui.markup import cell, markup
from app.tui.query import QueryError, compile_query
from app.tui.styles import STATUS_STYLE
from app.tui.widgets.row_table import RowTable

STATUS_ORDER = {s: i for i, s in enumerate(("running", "pending", "queued", "blocked", "failed", "lost", "cancelled", "succeeded"))}
MARK = "●"
NAME_WIDTH = 18  # longer names are cut in the table (the detail line shows them whole)
KIND_WIDTH = 13  # mheight-train and verify-logits whole; the longest kinds are cut with "…"


# key, label, width. What matters most comes first, for an 80-column terminal.
# Fixed widths: measuring every cell of thousands of rows is what made the table slow.
COLUMNS = [
    ("mark", " ", 1),
    ("status", "Status", 9),
    ("name", "Name", NAME_WIDTH),
    ("kind", "Kind", KIND_WIDTH),
    ("progress", "Epoch", 7),
    ("metric", "Key metric", 10),
    ("config", "Config", 18),
    ("time", "Time", 6),
    ("backend", "Backend", 8),
    ("slot", "Slot", 10),
    ("run_id", "ID", 18),
    ("tags", "Tags", 16),
]
COLUMN_KEYS = [k for k, _, _ in COLUMNS]


def _missing_last(value, reverse: bool):
    """Sort key that puts runs without the value at the end in either direction."""
    return (value is None) != reverse, value if value is not None else 0


def sort_key(column: str, reverse: bool, now: float):
    def key(row: RunRow):
        if column == "status":
            return STATUS_ORDER.get(row.status, 99)
        if column == "progress":
            return _missing_last(row.epoch / row.total_epochs if row.total_epochs else None, reverse)
        if column == "time":
            return _missing_last(row.duration(now), reverse)
        if column == "config":
            return row.key_config
        if column == "tags":
            return ",".join(row.tags)
        if column == "mark":
            return 0
        if column == "slot":
            return row.where
        return getattr(row, column)

    return key


def metric_order(best_first: bool):
    """Ascending sort key for the Key metric column.

    Runs are grouped by their key metric, since a balanced accuracy and a Log2-MSE cannot be
    ranked against each other, and each group is ordered by the metric's own goal (lower
    Log2-MSE is better), so best first means best first for every kind. Runs without a value
    come last either way.
    """

    def key(row: RunRow):
        if row.metric_best is None:
            return 1, "", 0.0
        goodness = row.metric_best if row.metric_goal == "max" else -row.metric_best
        return 0, row.metric_key or "", -goodness if best_first else goodness

    return key


def cells(row: RunRow, now: float, marked: bool) -> list:
    metric = f"{row.metric_best:.4f}" if row.metric_best is not None else ""
    return [
        Text(MARK if marked else " ", style="bold magenta"),
        Text(row.status, style=STATUS_STYLE.get(row.status, "")),
        cell(cut(row.name, NAME_WIDTH)),
        cell(cut(row.kind, KIND_WIDTH)),
        row.progress,
        Text(metric, justify="right"),
        cell(row.key_config),
        fmt_duration(row.duration(now)),
        row.backend,
        cell(row.where),  # Slurm's reason may hold brackets (node lists)
        row.run_id,
        cell(",".join(row.tags)),
    ]


class RunsTable(RowTable):
    """A DataTable whose columns all have fixed widths and whose rows are one line.

    DataTable measures every cell of every new row to size its columns; with
    fixed widths that work is thrown away, and at a thousand runs it was most
    of the start-up time. Only the virtual size is needed.

    Home and End go to the first and last run (:class:`RowTable`).
    """

    def _update_dimensions(self, new_rows) -> None:
        width = sum(c.get_render_width(self) for c in self.columns.values()) + self._row_label_column_width
        header = self.header_height if self.show_header else 0
        self.virtual_size = Size(width, self._total_row_height + header)


class RunsScreen(QueueActions, Screen):
    CSS_PATH = "runs.tcss"
    AUTO_FOCUS = "#runs"  # keys act on the table; / moves to the filter
    BINDINGS = [
        Binding("enter", "open_run", "Open", id="open-run"),
        Binding("space", "toggle_mark", "Mark", id="mark"),
        Binding("slash", "focus_filter", "Filter", id="filter"),
        Binding("s", "sort_next", "Sort", id="sort", show=False),
        Binding("S", "sort_reverse", "Reverse sort", id="sort-reverse", show=False),
        Binding("c", "compare", "Compare", id="compare"),
        Binding("x", "export", "Export", id="export", show=False),
        Binding("l", "launch", "Launch", id="launch"),
        Binding("g", "queue", "Queue", id="queue"),
        Binding("C", "cancel_run", "Cancel run", id="cancel-run", show=False),
        Binding("r", "retry_run", "Retry", id="retry-run", show=False),
        Binding("R", "retry_resume", "Retry from last checkpoint", id="retry-resume", show=False),
        Binding("plus,equals_sign", "priority(1)", "Raise priority", id="priority-up", show=False),
        Binding("minus", "priority(-1)", "Lower priority", id="priority-down", show=False),
        Binding("t", "edit_tags", "Tags", id="tags", show=False),
        Binding("n", "edit_notes", "Notes", id="notes", show=False),
        Binding("d", "delete", "Delete", id="delete", show=False),
        Binding("u", "unmark_all", "Unmark all", id="unmark-all", show=False),
        Binding("escape", "clear_filter", "Clear filter", id="clear-filter", show=False),
        # The table answers these keys itself when focused; here they reach help and the palette.
        Binding("home", "first_run", "First run", id="first-run", show=False),
        Binding("end", "last_run", "Last run", id="last-run", show=False),
    ]

    def __init__(self):
        super().__init__()
        self.query_text = ""  # the filter shown (live while typing)
        self.committed_query = ""  # the last filter confirmed with enter
        self.filter_note = ""  # why the table is not following what is being typed, in the title
        self.predicate = compile_query("")
        self.sort_column = "run_id"
        self.sort_reverse = True  # newest first
        self.shown: list[int] = []
        self.follow_run_id: str | None = None  # a run just launched: the cursor goes to it once it is read

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="/ filter: status=running and loss in (ce, logit_adjust) · best.val/balanced_acc > 0.4 · tag:baseline",
                    id="filter")
        yield Static("", id="filter-error")
        yield RunsTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="run-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        self.rebuild()
        self.set_interval(1.0, self._tick_running)
        table.focus()

    # -- table contents --------------------------------------------------------

    def ordered(self) -> list[RunRow]:
        """The runs that pass the filter, in the chosen order."""
        rows = [r for r in self.app.runs.values() if self.predicate(r)]
        if self.sort_column != "run_id":
            rows.sort(key=lambda r: r.run_id, reverse=True)  # ties: newest first
        if self.sort_column == "metric":  # reversed (▼) means best first, whichever way best lies
            rows.sort(key=metric_order(best_first=self.sort_reverse))
        else:
            rows.sort(key=sort_key(self.sort_column, self.sort_reverse, time.time()), reverse=self.sort_reverse)
        return rows

    def rebuild(self) -> None:
        table = self.query_one(DataTable)
        current = self._cursor_key(table)
        rows = self.ordered()
        now = time.time()
        marked = self.app.marked
        table.clear()
        for r in rows:
            table.add_row(*cells(r, now, r.pk in marked), key=str(r.pk))
        self.shown = [r.pk for r in rows]
        self._update_labels(table)
        if current is not None and current in table.rows:
            table.move_cursor(row=table.get_row_index(current), animate=False)
        self._follow_launched()
        self._show_detail()

    def runs_updated(self, rows: list[RunRow], removed: set[int]) -> None:
        table = self.query_one(DataTable)
        new_order = [r.pk for r in self.ordered()]
        if new_order != self.shown or removed:
            self.rebuild()
            return
        now = time.time()
        for row in rows:
            key = str(row.pk)
            if key in table.rows:
                for col, value in zip(COLUMN_KEYS, cells(row, now, row.pk in self.app.marked)):
                    table.update_cell(key, col, value)
        self._show_detail()

    def _update_labels(self, table: DataTable) -> None:
        arrow = "▼" if self.sort_reverse else "▲"
        for key, label, _ in COLUMNS:
            column = table.columns.get(key)  # type: ignore[arg-type]
            if column is not None:
                column.label = Text(label + (arrow if key == self.sort_column else ""))
        shown, total = len(self.shown), len(self.app.runs)
        marked = len(self.app.marked)
        parts = [f"{shown} of {total} runs" if shown != total else f"{total} runs"]
        if marked:
            parts.append(f"{marked} marked")
        if self.filter_note:
            parts.append(self.filter_note)
        self.sub_title = " · ".join(parts)
        table.refresh()

    def _tick_running(self) -> None:
        """Durations of running runs advance without a database read."""
        table = self.query_one(DataTable)
        now = time.time()
        for pk, row in self.app.runs.items():
            if row.status == "running" and str(pk) in table.rows:
                text = fmt_duration(row.duration(now))
                if table.get_cell(str(pk), "time") != text:  # after a minute it changes once a minute
                    table.update_cell(str(pk), "time", text)

    @staticmethod
    def _cursor_key(table: DataTable) -> str | None:
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _selected(self) -> RunRow | None:
        key = self._cursor_key(self.query_one(DataTable))
        return self.app.runs.get(int(key)) if key else None

    def selected_run(self) -> RunRow | None:
        return self._selected()

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        row = self._selected()
        detail = self.query_one("#run-detail", Static)
        if row is None:
            if self.app.runs:
                detail.update("No run matches the filter. esc clears it.")
            else:
                detail.update("No runs yet. l opens the launch form, or: moe-tui submit -- train-expert --preset quick")
            return
        lines = [markup("[b]$run_id[/b]  $name  $command", run_id=row.run_id, name=row.name, command=row.command)]
        extra = []
        if row.status in ("queued", "blocked"):
            extra.append(f"priority {row.priority}")
        if row.status == "pending":
            extra.append(f"waiting in Slurm: {row.where}")
        if row.retry_of:
            extra.append(f"retry of {row.retry_of}")
        if row.metric_key and row.metric_best is not None:
            extra.append(f"best {row.metric_key} = {row.metric_best:.4f}")
        if row.tags:
            extra.append("tags: " + ", ".join(row.tags))
        if row.notes:
            extra.append("notes: " + row.notes)
        if extra:
            lines.append(Content("  ".join(extra)))  # tags and notes as typed: plain, not markup
        if row.error:
            lines.append(markup("[red]$error[/red]", error=row.error))
        detail.update(Content("\n").join(lines))

    # -- filter ----------------------------------------------------------------

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.stop()
            if self.apply_filter(event.value):
                self.committed_query = event.value
                self.query_one(DataTable).focus()
            else:  # keep showing what the last good filter showed, not a half-typed preview
                self._apply(self.committed_query)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "filter":
            return
        # The table follows the typing only to a result a person can use. Text on its way to a
        # condition ("status=", or the bare word "status" before "=running") would flash an empty
        # table; then the table keeps its last result and the title says why, quietly. Enter gives
        # the full error, or the empty table if that is really what the filter selects.
        self._show_error("")  # an error from enter was about the text as it was then
        try:
            predicate = compile_query(event.value)
        except QueryError:
            self._set_note("filter unfinished: enter says why")
            return
        if self.app.runs and not any(predicate(r) for r in self.app.runs.values()):
            self._set_note("no match yet: enter applies it")
            return
        self.filter_note = ""
        self.query_text, self.predicate = event.value, predicate
        self.rebuild()

    def apply_filter(self, text: str) -> bool:
        self.filter_note = ""
        try:
            predicate = compile_query(text)
        except QueryError as e:  # the message quotes the filter: "status=[/b" is text, not markup
            self._show_error(markup("[b red]filter:[/] $error", error=e))
            return False
        self._show_error("")
        self.query_text, self.predicate = text, predicate
        self.rebuild()
        return True

    def _show_error(self, message: Content | str) -> None:
        error = self.query_one("#filter-error", Static)
        error.update(message)
        error.display = bool(message)

    def _set_note(self, note: str) -> None:
        self.filter_note = note
        self._update_labels(self.query_one(DataTable))

    def _apply(self, text: str) -> None:
        """Show the runs ``text`` selects (a query known to parse), leaving any error shown."""
        self.query_text, self.predicate = text, compile_query(text)
        self.rebuild()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.value or self.query_text:
            box.value = ""
            self.committed_query = ""
            self.apply_filter("")
        self.query_one(DataTable).focus()

    # -- sort ------------------------------------------------------------------

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        if reverse is None:
            # A new column starts where the interesting runs are: best metric and longest first.
            reverse = column in ("metric", "time", "progress", "run_id")
        self.sort_column, self.sort_reverse = column, reverse
        self.rebuild()

    def action_sort_next(self) -> None:
        keys = [k for k in COLUMN_KEYS if k != "mark"]
        self.sort_by(keys[(keys.index(self.sort_column) + 1) % len(keys)] if self.sort_column in keys else keys[0])

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column, not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        column = event.column_key.value
        if column == self.sort_column:
            self.action_sort_reverse()
        elif column != "mark":
            self.sort_by(column)

    # -- marks -----------------------------------------------------------------

    def action_first_run(self) -> None:
        self.query_one(DataTable).action_scroll_top()

    def action_last_run(self) -> None:
        self.query_one(DataTable).action_scroll_bottom()

    def action_toggle_mark(self) -> None:
        row = self._selected()
        if row is None:
            return
        self.app.marked.symmetric_difference_update({row.pk})
        table = self.query_one(DataTable)
        table.update_cell(str(row.pk), "mark", cells(row, time.time(), row.pk in self.app.marked)[0])
        self._update_labels(table)
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_unmark_all(self) -> None:
        self.app.marked.clear()
        self.rebuild()

    # -- other screens ---------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        from app.tui.screens.run import RunScreen

        row = self._selected()
        if row is not None:
            self.app.push_screen(RunScreen(row.pk))

    def action_compare(self) -> None:
        from app.tui.screens.compare import CompareScreen

        pks = [pk for pk in self.shown if pk in self.app.marked] or [pk for pk in self.app.marked if pk in self.app.runs]
        if not pks:
            self.notify("mark runs with space first (2 or more to compare)", severity="warning")
            return
        self.app.push_screen(CompareScreen(pks))

    def action_queue(self) -> None:
        from app.tui.screens.queue import QueueScreen

        self.app.push_screen(QueueScreen())

    def action_launch(self) -> None:
        from app.tui.screens.launch import LaunchScreen

        self.app.push_screen(LaunchScreen(), self.launched)

    def launched(self, run_ids: list[str] | None) -> None:
        """The cursor goes to the run just queued (the first of a sweep), so the next key
        (tags, priority, cancel) acts on it rather than on the run it was on before."""
        if run_ids:
            self.follow_run_id = run_ids[0]
            self._follow_launched()
            self._show_detail()

    def _follow_launched(self) -> None:
        run_id = self.follow_run_id
        if run_id is None:
            return
        row = next((r for r in self.app.runs.values() if r.run_id == run_id), None)
        if row is None:
            return  # not read yet: the poll that brings it rebuilds the table and comes back here
        self.follow_run_id = None
        table = self.query_one(DataTable)
        if str(row.pk) in table.rows:
            table.move_cursor(row=table.get_row_index(str(row.pk)), animate=False)
        else:
            self.notify(f"{run_id} is queued but the filter hides it; esc clears the filter", severity="warning",
                        markup=False)

    # -- export ----------------------------------------------------------------

    def export_targets(self) -> tuple[list[int], str]:
        marked = [pk for pk in self.shown if pk in self.app.marked]
        if marked:
            return marked, f"{len(marked)} marked runs"
        return list(self.shown), (f"{len(self.shown)} filtered runs" if self.query_text else f"all {len(self.shown)} runs")

    def action_export(self) -> None:
        from app.tui.screens.dialogs import Prompt

        pks, what = self.export_targets()
        if not pks:
            self.notify("no runs to export", severity="warning")
            return
        default = str(self.app.ws.root / f"export-{datetime.now():%Y%m%d-%H%M%S}.csv")

        def chosen(path: str | None) -> None:
            if path:
                self.export_csv(pks, path.strip())

        self.app.push_screen(Prompt(f"Export {what} to CSV (same columns as `moe-tui export`):", default), chosen)

    @work(thread=True, group="export", exit_on_error=False)
    def export_csv(self, pks: list[int], path: str) -> None:
        try:
            n = self.app.data.export_csv(pks, path)
        except UserError as e:
            self.app.call_from_thread(self.notify, str(e), severity="error", timeout=10, markup=False)
            return
        self.app.call_from_thread(self.notify, f"wrote {n} runs to {path}", title="export", markup=False)

    # -- tags, notes, delete -----------------------------------------------------

    def action_edit_tags(self) -> None:
        from app.tui.screens.dialogs import Prompt

        row = self._selected()
        if row is None:
            return

        def chosen(text: str | None) -> None:
            if text is not None:
                self.write_run(row.pk, "tags", parse_tags(text))

        self.app.push_screen(Prompt(f"Tags of {row.run_id} (comma-separated):", ", ".join(row.tags), "baseline, sweep-1"), chosen)

    def action_edit_notes(self) -> None:
        from app.tui.screens.dialogs import Prompt

        row = self._selected()
        if row is None:
            return

        def chosen(text: str | None) -> None:
            if text is not None:
                self.write_run(row.pk, "notes", text)

        self.app.push_screen(Prompt(f"Notes on {row.run_id}:", row.notes), chosen)

    @work(thread=True, group="write-run", exit_on_error=False)
    def write_run(self, pk: int, what: str, value) -> None:
        data = self.app.data
        try:
            data.set_tags(pk, value) if what == "tags" else data.set_notes(pk, value)
        except UserError as e:
            self.app.call_from_thread(self.notify, str(e), severity="error", markup=False)
            return
        self.app.call_from_thread(self.app.poll_runs)

    def action_delete(self) -> None:
        from app.tui.screens.dialogs import Confirm

        row = self._selected()
        if row is None:
            return
        if row.status in ACTIVE:
            self.notify(f"{row.run_id} is {row.status}; only finished runs can be deleted", severity="warning", markup=False)
            return

        def chosen(yes: bool | None) -> None:
            if yes:
                self.delete_run(row.pk)

        self.app.push_screen(
            Confirm(markup("Delete run [b]$run_id[/b] ($name, $status)?\n"
                           "Its directory runs/$run_id and its metrics are removed for good.",
                           run_id=row.run_id, name=row.name, status=row.status)), chosen)

    @work(thread=True, group="delete-run", exit_on_error=False)
    def delete_run(self, pk: int) -> None:
        try:
            run_id = self.app.data.delete_run(pk)
        except (UserError, OSError) as e:
            self.app.call_from_thread(self.notify, f"cannot delete: {e}", severity="error", markup=False)
            return
        self.app.forget_runs({pk})
        self.app.call_from_thread(self.notify, f"deleted {run_id}", markup=False)
