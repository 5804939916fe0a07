"""Queue: this machine's slots with the runs on them, and the waiting runs in start order."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from app.errors import UserError
from app.tui.actions import QueueActions
from app.tui.cells import cut
from app.tui.data import QueuedRun, QueueState, RunRow
from app.tui.markup import cell, markup
from app.tui.styles import STATUS_STYLE
from app.tui.widgets.row_table import RowTable

POLL_S = 1.0  # the queue is read again this often (and after every action)
# key, label, width: 80 columns in all, cell padding included; the detail line shows the whole of the highlighted run.
# "#" holds 3 digits (hundreds of runs wait in a sweep); a run id is 18 characters, in ID and in Waits for.
QUEUED = (("pos", "#", 3), ("status", "Status", 7), ("prio", "Prio", 4), ("gpus", "GPU", 3),
          ("name", "Name", 13), ("run_id", "ID", 18), ("waits", "Waits for", 18))
QUEUED_COLUMNS = [k for k, _, _ in QUEUED]
SLOT_COLUMNS = (("slot", "Slot", 18), ("used", "Used", 4), ("runs", "Runs on it", 52))


def waits_cell(q: QueuedRun) -> str:
    """The one parent's id whole, or how many; the detail line names each with its status."""
    if len(q.waits_for) == 1:
        return q.waits_for[0].partition(" ")[0]  # "run_id (status)"
    if q.waits_for:
        return f"{len(q.waits_for)} runs"
    return "slurm" if q.backend == "slurm" else ""


def queued_cells(q: QueuedRun) -> list:
    return [
        str(q.position) if q.position is not None else "",
        Text(q.status, style=STATUS_STYLE.get(q.status, "")),
        str(q.priority), str(q.gpus), cell(cut(q.name, 13)), q.run_id, cell(waits_cell(q)),
    ]


class QueueScreen(QueueActions, Screen):
    CSS_PATH = "queue.tcss"
    AUTO_FOCUS = "#queued"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="queue-back"),
        Binding("p", "toggle_pause", "Pause/resume", id="queue-pause"),
        Binding("plus,equals_sign", "priority(1)", "Raise priority", id="queue-priority-up"),
        Binding("minus", "priority(-1)", "Lower priority", id="queue-priority-down", show=False),
        Binding("C", "cancel_run", "Cancel run", id="queue-cancel"),
        Binding("enter", "open_run", "Open", id="queue-open", show=False),
        Binding("tab", "switch_table", "Slots/queue", id="queue-switch", show=False),
    ]

    def __init__(self):
        super().__init__()
        self.state: QueueState | None = None
        self.queued: dict[int, QueuedRun] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("reading the queue…", id="queue-info")
        yield RowTable(id="slots", cursor_type="row")
        yield RowTable(id="queued", cursor_type="row", zebra_stripes=True)
        yield Static("", id="queue-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "Queue"
        slots = self.query_one("#slots", DataTable)
        for key, label, width in SLOT_COLUMNS:
            slots.add_column(label, key=key, width=width)
        queued = self.query_one("#queued", DataTable)
        for key, label, width in QUEUED:
            queued.add_column(label, key=key, width=width)
        self.refresh_queue()
        self.set_interval(POLL_S, self.refresh_queue)

    @work(thread=True, exclusive=True, group="queue-state", exit_on_error=False)
    def refresh_queue(self) -> None:
        state = self.app.data.queue_state()
        self.app.call_from_thread(self.show, state)

    def after_queue_request(self) -> None:
        self.refresh_queue()

    def runs_updated(self, rows: list[RunRow], removed: set[int]) -> None:
        if rows or removed:
            self.refresh_queue()

    def show(self, state: QueueState) -> None:
        if state == self.state:
            return  # nothing changed: no redraw, the cursor stays put
        old, self.state = self.state, state
        paused = "[b reverse yellow] PAUSED [/]" if state.paused else "[green]running[/]"
        daemon = "daemon up" if state.daemon_pid else "[yellow]no daemon[/]"
        n_queued = sum(1 for q in state.queued if q.position is not None)
        n_blocked = len(state.queued) - n_queued
        self.query_one("#queue-info", Static).update(
            f"queue {paused} · {daemon} · {n_queued} queued, {n_blocked} blocked · {state.limits}")

        if old is None or (old.slots, old.elsewhere) != (state.slots, state.elsewhere):
            slots = self.query_one("#slots", DataTable)
            slots.clear()
            for use in state.slots:
                names = ", ".join(f"{run_id} {name}" for _, run_id, name in use.runs)
                slots.add_row(cell(cut(use.slot, 18)), f"{len(use.runs)}/{use.capacity}",  # GPU names from nvidia-smi
                              cell(cut(names, 52)) if names else Text("free", style="dim"))
            for pk, run_id, name, where in state.elsewhere:
                slot, _, slurm_state = where.partition(" ")  # "slurm:123", "PENDING (Priority)"
                runs_on_it = f"{run_id} {name}" + (f" · {slurm_state}" if slurm_state else "")
                slots.add_row(cell(cut(slot, 18)), "", cell(cut(runs_on_it, 52)))

        table = self.query_one("#queued", DataTable)
        current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None
        before, self.queued = self.queued, {q.pk: q for q in state.queued}
        if list(before) == list(self.queued):
            # Same runs in the same order: change only the rows that changed (a rebuild of
            # hundreds of rows is what a person would wait for after a priority step).
            for q in state.queued:
                if before[q.pk] != q:
                    for col, value in zip(QUEUED_COLUMNS, queued_cells(q)):
                        table.update_cell(str(q.pk), col, value)
        else:
            table.clear()
            for q in state.queued:
                table.add_row(*queued_cells(q), key=str(q.pk))
        if current is not None and current in table.rows:
            table.move_cursor(row=table.get_row_index(current), animate=False)
        self._show_detail()

    def selected_run(self) -> QueuedRun | None:
        table = self.query_one("#queued", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.queued.get(int(key)) if key else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "queued":
            self._show_detail()

    def _show_detail(self) -> None:
        q = self.selected_run()
        detail = self.query_one("#queue-detail", Static)
        if q is None:
            detail.update("Nothing waits. l on Runs opens the launch form.")
            return
        where = f"position {q.position}" if q.position is not None else "blocked"
        lines = [markup("[b]$run_id[/b] $name · $rest", run_id=q.run_id, name=q.name,
                        rest=f"{where} · priority {q.priority} (+/- change) · {q.gpus} GPU · {q.backend}")]
        if q.waits_for:
            lines.append(Content("waits for " + ", ".join(q.waits_for)))
        if q.error:
            lines.append(markup("[red]$error[/red]", error=q.error))
        detail.update(Content("\n").join(lines))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "queued":
            self.action_open_run()

    def action_open_run(self) -> None:
        from app.tui.screens.run import RunScreen

        q = self.selected_run()
        if q is not None and q.pk in self.app.runs:
            self.app.push_screen(RunScreen(q.pk))

    def action_switch_table(self) -> None:
        other = "#slots" if self.query_one("#queued", DataTable).has_focus else "#queued"
        self.query_one(other, DataTable).focus()

    def action_toggle_pause(self) -> None:
        self.pause_or_resume(not (self.state and self.state.paused))

    @work(thread=True, group="queue-pause", exit_on_error=False)
    def pause_or_resume(self, pause: bool) -> None:
        from app.queue.control import pause as do_pause
        from app.queue.control import resume as do_resume
        from app.queue.daemon import ensure_daemon

        ws = self.app.ws
        try:
            if pause:
                do_pause(ws)
            else:
                do_resume(ws)
                ensure_daemon(ws)  # as `moe-tui resume` does: queued runs need someone to start them
        except (OSError, UserError) as e:
            self.app.call_from_thread(self.notify, f"cannot {'pause' if pause else 'resume'}: {e}", severity="error",
                                      markup=False)
            return
        self.app.call_from_thread(self.notify, "queue paused: running runs carry on, no new ones start"
                                  if pause else "queue resumed", title="queue")
        self.app.call_from_thread(self.refresh_queue)
