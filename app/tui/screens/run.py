"""Run: live curves of one run while it trains; its config, log and artifacts in tabs."""

from __future__ import annotations

import json
import re
import threading

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.lazy import Lazy
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    RichLog,
    Static,
    TabbedContent,
    TabPane,
)

from app.errors import UserError
from app.queries import fmt_duration
from app.tui.cells import cut
from app.tui.data import Linked, MetricPoint, RunRow
from app.tui import reject_curves
from app.tui.markup import cell, markup
from app.tui.styles import STATUS_STYLE
from app.tui.widgets.curves import Bars, Curves
from app.tui.widgets.row_table import RowTable

POLL_S = 1.0  # new metric rows and log lines are read at most this often
REDRAW_S = 0.5  # plots redraw at most twice a second
LOG_LINES = 2000  # lines the log tab keeps
# Lineage columns: 80 in all with the cell padding. Name and kind are cut with "…"; the line
# below the table shows the highlighted run whole.
LINEAGE_NAME, LINEAGE_KIND = 11, 12
LINEAGE_COLUMNS = (("dir", "", 6), ("how", "How", 12), ("status", "Status", 9), ("run_id", "ID", 18),
                   ("name", "Name", LINEAGE_NAME), ("kind", "Kind", LINEAGE_KIND))

LOSS = {"train/loss": "train loss", "val/loss": "val loss", "val/nll": "val NLL"}
ACCURACY = {
    "val/acc": "val acc",
    "val/balanced_acc": "balanced",
    "val/head_acc": "head",
    "val/tail_acc": "tail",
}
# m-height runs log Log2-MSE overall and per (n, k, m); any key naming log2_mse is plotted.
LOG2_MSE = re.compile(r"log2_?mse", re.I)
# ingest stores each expert_load event as Metric rows expert_load/<expert> (mean routing weight)
# and top1_share/<expert>; the load plots read the first, one series per expert name
LOAD_PREFIX = "expert_load/"


class MetricsArrived(Message):
    def __init__(self, points: list[MetricPoint]):
        super().__init__()
        self.points = points


class LogArrived(Message):
    def __init__(self, text: str):
        super().__init__()
        self.text = text


class RunScreen(Screen):
    CSS_PATH = "run.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="back"),
        Binding("m", "toggle_smoothing", "Smooth", id="smooth"),
        Binding("l", "toggle_log_scale", "Log scale", id="log-scale"),
        Binding("s", "next_source", "Source", id="reject-source"),
        Binding("pagedown", "scroll_plots(1)", "More plots", id="plots-down", show=False),
        Binding("pageup", "scroll_plots(-1)", "Plots above", id="plots-up", show=False),
        Binding("1", "tab('plots')", "Plots", id="tab-plots", show=False),
        Binding("2", "tab('config')", "Config", id="tab-config", show=False),
        Binding("3", "tab('log')", "Log", id="tab-log", show=False),
        Binding("4", "tab('artifacts')", "Artifacts", id="tab-artifacts", show=False),
        Binding("5", "tab('lineage')", "Lineage", id="tab-lineage", show=False),
    ]

    def __init__(self, run_pk: int):
        super().__init__()
        self.run_pk = run_pk
        self.last_id = 0
        self.log_offset: int | None = None
        self.log_wanted = False  # the log is read only once its tab was opened
        self.smooth = False
        self.log_y = False
        self.load_at: tuple[int, dict[str, float]] = (0, {})  # the latest epoch's load per expert (the bars)
        self._artifacts: list[tuple[str, int]] | None = None
        self.lineage: list[tuple[str, Linked]] | None = None
        self._config_rows: list[tuple[str, str]] | None = None  # what the Config tab shows
        self._poll_lock = threading.Lock()
        self.reject_points: dict[str, list[tuple[int, float]]] = {}  # a fit-reject run's (epoch, value) per key
        self.reject_source = 0  # which posterior source its plots show (s cycles)

    @property
    def row(self) -> RunRow | None:
        return self.app.runs.get(self.run_pk)

    @property
    def is_reject(self) -> bool:
        return self.row is not None and self.row.kind == reject_curves.REJECT_KIND

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "next_source":
            return self.is_reject  # the key shows only where there are sources to cycle
        return True

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="run-info")
        with TabbedContent(initial="plots"):
            with TabPane("1 Plots", id="plots"):
                yield Static("pgdn/pgup: expert load and Log2-MSE plots below", id="plot-hint")
                with VerticalScroll(id="plot-grid"):
                    with Horizontal(classes="plot-row", id="reject-row"):
                        yield Curves("balanced error", xlabel="rejection rate", id="reject-balanced")
                        yield Curves("worst-group error", xlabel="rejection rate", id="reject-worst")
                    with Horizontal(classes="plot-row", id="main-row"):
                        yield Curves("loss", LOSS, id="loss-plot")
                        yield Curves("accuracy (val)", ACCURACY, id="acc-plot")
                    with Horizontal(classes="plot-row", id="load-row"):
                        yield Bars("expert load", id="load-bars")
                        yield Curves("expert load over epochs", match=lambda k: k.startswith(LOAD_PREFIX),
                                     label_of=lambda k: k[len(LOAD_PREFIX):], id="load-plot")
                    with Horizontal(classes="plot-row", id="mse-row"):
                        yield Curves("Log2-MSE", match=lambda k: bool(LOG2_MSE.search(k)),
                                     label_of=lambda k: k.split("/", 1)[-1], id="mse-plot")
            # The other tabs mount after the first paint: the plots are what a person waits for.
            with TabPane("2 Config", id="config"):
                yield Lazy(RowTable(id="config-table", cursor_type="row", zebra_stripes=True))
            with TabPane("3 Log", id="log"):
                # Wrapped: an epoch line holds a dozen metrics, most of them past column 80.
                yield Lazy(RichLog(id="log-view", max_lines=LOG_LINES, wrap=True, markup=False, highlight=False))
            with TabPane("4 Artifacts", id="artifacts"):
                yield Lazy(Horizontal(
                    RowTable(id="artifact-list", cursor_type="row"),
                    RichLog(id="artifact-view", wrap=False, markup=False, highlight=False),
                ))
            with TabPane("5 Lineage", id="lineage"):
                yield RowTable(id="lineage-table", cursor_type="row", zebra_stripes=True)  # small: no need to defer it
                yield Static("", id="lineage-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = self.row.run_id if self.row else ""
        self.query_one("#load-row").display = False
        self.query_one("#mse-row").display = False
        rejects = self.is_reject
        self.query_one("#reject-row").display = rejects
        self.query_one("#main-row").display = not rejects  # a fit-reject run logs no loss or accuracy
        self._show_info()
        self.call_after_refresh(self._fill_config)
        self.poll()
        self.set_interval(POLL_S, self.poll)
        self.set_interval(REDRAW_S, self._redraw)
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        """A running run's time advances without a database read."""
        if self.row is not None and self.row.status == "running":
            self._show_info()

    # -- polling: one worker reads metric rows (every plot) and the log -------

    def poll(self) -> None:
        row = self.row
        if row is None:
            return
        self.poll_files(row.run_id)

    @work(thread=True, group="poll-run", exit_on_error=False)
    def poll_files(self, run_id: str) -> None:
        # One reader at a time: a slow read overlapping the next tick would read
        # the same new rows twice (a cancelled thread worker still runs to its end).
        if not self._poll_lock.acquire(blocking=False):
            return
        try:
            self._read_new(run_id)
        finally:
            self._poll_lock.release()

    def _read_new(self, run_id: str) -> None:
        data = self.app.data
        points = data.metrics_since(self.run_pk, self.last_id)
        if points:
            self.last_id = points[-1].id
            self.post_message(MetricsArrived(points))
        if self.log_wanted:
            text, self.log_offset = data.read_log(run_id, self.log_offset)
            if text:
                self.post_message(LogArrived(text))

    def on_metrics_arrived(self, msg: MetricsArrived) -> None:
        plots = list(self.query(Curves))
        empty = [plot for plot in plots if not plot.has_data()]
        mse = self.query_one("#mse-plot", Curves)
        if self.is_reject:
            for p in msg.points:
                if p.epoch is not None:
                    self.reject_points.setdefault(p.key, []).append((p.epoch, p.value))
            self._show_reject()
            return
        for p in msg.points:
            if p.epoch is None:
                continue
            for plot in plots:
                plot.add(p.key, p.epoch, p.value)
            if p.key.startswith(LOAD_PREFIX):
                self._add_load(p.epoch, p.key[len(LOAD_PREFIX):], p.value)
        if mse.has_data():
            self.query_one("#mse-row").display = True
            self.query_one("#plot-hint", Static).display = True
        for plot in empty:  # the first curves show at once; later ones wait for the redraw timer
            if plot.has_data():
                plot.set_options(self.smooth, self.log_y)
                plot.redraw()

    def _add_load(self, epoch: int, expert: str, value: float) -> None:
        """The bars show the latest epoch's load; the curves every epoch's."""
        at, loads = self.load_at
        if epoch < at:
            return
        if epoch > at:
            loads = {}
            self.load_at = epoch, loads
        loads[expert] = value
        self.query_one("#load-bars", Bars).set(list(loads), list(loads.values()), f"(epoch {epoch})")
        self.query_one("#load-row").display = True
        self.query_one("#plot-hint", Static).display = True

    def _show_reject(self) -> None:
        """Error against the achieved rejection rate, one curve per method, for the chosen source."""
        sources = reject_curves.sources(self.reject_points)
        if not sources:
            return
        source = sources[self.reject_source % len(sources)]
        keys = [k for k in reject_curves.error_keys(self.reject_points) if reject_curves.parse(k)["source"] == source]
        for widget_id, measure in (("#reject-balanced", "balanced_error"), ("#reject-worst", "worst_error")):
            plot = self.query_one(widget_id, Curves)
            plot.title_text = f"{reject_curves.MEASURES[measure]} · {source}"
            plot.points.clear()
            plot.series_labels.clear()
            for key in keys:
                m = reject_curves.parse(key)
                if m["measure"] == measure:
                    pts = reject_curves.against_rate(self.reject_points[key],
                                                     self.reject_points.get(reject_curves.rate_key(key), []))
                    plot.replace(m["method"], pts)
            plot.set_options(self.smooth, self.log_y)
            plot.redraw()
        split = reject_curves.parse(keys[0])["split"] if keys else ""
        hint = self.query_one("#plot-hint", Static)
        hint.update(Content(f"{split} split · source {source} ({self.reject_source % len(sources) + 1} of "
                            f"{len(sources)}; s: next)"))
        hint.display = True

    def action_next_source(self) -> None:
        self.reject_source += 1
        self._show_reject()

    def on_log_arrived(self, msg: LogArrived) -> None:
        view = self.query_one("#log-view", RichLog)
        for line in msg.text.splitlines():
            view.write(line)

    def _redraw(self) -> None:
        for plot in self.query(Curves):
            plot.set_options(self.smooth, self.log_y)
            if plot.display or plot.has_data():
                plot.redraw()
        self.query_one(Bars).redraw()

    # -- actions ---------------------------------------------------------------

    def action_toggle_smoothing(self) -> None:
        self.smooth = not self.smooth
        self.notify("smoothing " + ("on (EMA 0.6, raw in grey)" if self.smooth else "off"), timeout=2)
        self._redraw()

    def action_toggle_log_scale(self) -> None:
        self.log_y = not self.log_y
        self._redraw()

    def action_scroll_plots(self, direction: int) -> None:
        """Expert load and Log2-MSE plots sit below loss and accuracy; in a small terminal, scroll to them."""
        grid = self.query_one("#plot-grid", VerticalScroll)
        (grid.scroll_page_down if direction > 0 else grid.scroll_page_up)(animate=False)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "log" and not self.log_wanted:
            self.log_wanted = True
            self.poll()
        if event.pane.id == "artifacts":
            self.load_artifacts()
        if event.pane.id == "lineage":
            self.load_lineage()

    # -- info, config, artifacts ---------------------------------------------------

    def runs_updated(self, rows: list[RunRow], removed: set[int]) -> None:
        if any(r.pk == self.run_pk for r in rows):
            self._show_info()
            self._fill_config()  # best.* and final.* move every epoch while the run trains
        if rows and self.query_one(TabbedContent).active == "lineage":
            self.load_lineage()  # a consumer may have been queued, or a parent finished

    def _show_info(self) -> None:
        row = self.row
        if row is None:
            return
        best = f"best {row.metric_key} {row.metric_best:.4f}" if row.metric_best is not None else ""
        progress = f"epoch {row.progress}" if row.progress else ""
        head = markup("[b]$run_id[/b]  $name  [b]$status[/b]  $rest", run_id=row.run_id, name=row.name, status=row.status,
                      rest=f"{progress}  {fmt_duration(row.duration())}  {best}")
        lines = [head, Content(row.command)]
        if row.status == "pending":
            lines.append(Content(f"waiting in Slurm: {row.where}"))
        if row.error:
            lines.append(markup("[red]$error[/red]", error=row.error))
        self.query_one("#run-info", Static).update(Content("\n").join(lines))

    def _fill_config(self) -> None:
        row = self.row
        tables = self.query("#config-table")
        if not tables:  # not mounted yet (Lazy)
            self.call_after_refresh(self._fill_config)
            return
        table = tables.first(DataTable)
        rows = []
        if row is not None:
            rows = [(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value))
                    for key, value in sorted(row.config.items())]
            for key in sorted(row.best):
                rows.append((f"best.{key}", f"{row.best[key]:.6g}"))
                rows.append((f"final.{key}", f"{row.final.get(key, float('nan')):.6g}"))
        if rows == self._config_rows:
            return  # unchanged: no redraw, the cursor and scroll stay put
        self._config_rows = rows
        cursor, scroll = table.cursor_row, table.scroll_y
        table.clear(columns=True)
        table.add_column("setting", key="setting")
        table.add_column("value", key="value")
        for key, value in rows:  # from run.json and the metric keys a run logged: plain, not markup
            table.add_row(cell(key), cell(value))
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1), animate=False)
            table.scroll_y = scroll

    # -- lineage -------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="lineage", exit_on_error=False)
    def load_lineage(self) -> None:
        try:
            feeds, consumers = self.app.data.lineage(self.run_pk)
        except UserError as e:
            self.app.call_from_thread(self.notify, str(e), severity="error", markup=False)
            return
        self.app.call_from_thread(self._show_lineage, feeds, consumers)

    def _show_lineage(self, feeds: list[Linked], consumers: list[Linked]) -> None:
        tables = self.query("#lineage-table")
        if not tables:  # not mounted yet (Lazy)
            self.call_after_refresh(self._show_lineage, feeds, consumers)
            return
        table = tables.first(DataTable)
        if self.lineage is None:
            table.focus()  # up/down and enter act on the runs at once
        rows = [("fed by", r) for r in feeds] + [("feeds", r) for r in consumers]
        if self.lineage == rows:
            return
        self.lineage = rows
        current = table.cursor_row
        table.clear(columns=True)
        for key, label, width in LINEAGE_COLUMNS:
            table.add_column(label, key=key, width=width)
        if not rows:
            table.add_row("", "", "", "no run fed this one, none consumes it", "", "")
            self._show_lineage_detail()
            return
        for direction, r in rows:
            table.add_row(direction, r.how, Text(r.status, style=STATUS_STYLE.get(r.status, "")), r.run_id,
                          cell(cut(r.name, LINEAGE_NAME)), cell(cut(r.kind, LINEAGE_KIND)), key=str(r.pk))
        table.move_cursor(row=min(current, table.row_count - 1), animate=False)
        self._show_lineage_detail()

    def _show_lineage_detail(self) -> None:
        """The highlighted linked run whole: its name and kind are cut in the table."""
        table = self.query_one("#lineage-table", DataTable)
        detail = self.query_one("#lineage-detail", Static)
        rows = self.lineage or []
        if not rows or not 0 <= table.cursor_row < len(rows):
            detail.update("")
            return
        direction, r = rows[table.cursor_row]
        detail.update(markup("$direction ($how): [b]$run_id[/b]  $name  $kind  $status", direction=direction, how=r.how,
                             run_id=r.run_id, name=r.name, kind=r.kind, status=r.status))

    def open_linked(self, key: str | None) -> None:
        if key and key.isdigit() and int(key) in self.app.runs:
            self.app.push_screen(RunScreen(int(key)))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "lineage-table" and event.row_key is not None:
            self.open_linked(event.row_key.value)

    @work(thread=True, exclusive=True, group="artifacts", exit_on_error=False)
    def load_artifacts(self) -> None:
        row = self.row
        if row is not None:
            files = self.app.data.artifacts(row.run_id)
            self.app.call_from_thread(self._show_artifacts, files)

    def _show_artifacts(self, files: list[tuple[str, int]]) -> None:
        if files == self._artifacts:
            return
        self._artifacts = files
        table = self.query_one("#artifact-list", DataTable)
        table.clear(columns=True)
        table.add_column("file", key="file")
        table.add_column("bytes", key="bytes")
        for rel, size in files:
            table.add_row(cell(rel), str(size), key=rel)  # file names as they are on disk
        if not files:
            self.query_one("#artifact-view", RichLog).write("no artifacts yet")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "lineage-table":
            self._show_lineage_detail()
        if event.data_table.id == "artifact-list" and event.row_key is not None and event.row_key.value:
            self.preview_artifact(event.row_key.value)

    @work(thread=True, exclusive=True, group="artifact-preview", exit_on_error=False)
    def preview_artifact(self, rel: str) -> None:
        row = self.row
        if row is None:
            return
        try:
            text = self.app.data.artifact_text(row.run_id, rel)
        except (UserError, OSError) as e:
            text = f"cannot read {rel}: {e}"
        self.app.call_from_thread(self._show_preview, text)

    def _show_preview(self, text: str) -> None:
        view = self.query_one("#artifact-view", RichLog)
        view.clear()
        view.write(text)
