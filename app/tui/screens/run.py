"""Run: live curves of one run while it trains."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from app.queries import fmt_duration
from app.tui.data import MetricPoint, RunRow
from app.tui.widgets.curves import Curves

POLL_S = 1.0  # new metric rows are read at most this often
REDRAW_S = 0.5  # plots redraw at most twice a second

LOSS = {"train/loss": "train loss", "val/nll": "val NLL", "val/loss": "val loss"}
ACCURACY = {
    "val/acc": "val acc",
    "val/balanced_acc": "balanced",
    "val/head_acc": "head",
    "val/tail_acc": "tail",
}


class MetricsArrived(Message):
    def __init__(self, points: list[MetricPoint]):
        super().__init__()
        self.points = points


class RunScreen(Screen):
    CSS_PATH = "run.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="back"),
    ]

    def __init__(self, run_pk: int):
        super().__init__()
        self.run_pk = run_pk
        self.last_id = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="run-info")
        with Horizontal(id="plots"):
            yield Curves("loss", LOSS, id="loss-plot")
            yield Curves("accuracy (val)", ACCURACY, id="acc-plot")
        yield Footer()

    def on_mount(self) -> None:
        self._show_info()
        self.poll_metrics()
        self.set_interval(POLL_S, self.poll_metrics)
        self.set_interval(REDRAW_S, self._redraw)

    @work(thread=True, exclusive=True, group="poll-metrics", exit_on_error=False)
    def poll_metrics(self) -> None:
        points = self.app.data.metrics_since(self.run_pk, self.last_id)
        if points:
            self.last_id = points[-1].id
            self.post_message(MetricsArrived(points))

    def on_metrics_arrived(self, msg: MetricsArrived) -> None:
        plots = list(self.query(Curves))
        for p in msg.points:
            if p.epoch is None:
                continue
            for plot in plots:
                plot.add(p.key, p.epoch, p.value)

    def _redraw(self) -> None:
        for plot in self.query(Curves):
            plot.redraw()

    def runs_updated(self, rows: list[RunRow], removed: set[int]) -> None:
        if any(r.pk == self.run_pk for r in rows):
            self._show_info()

    def _show_info(self) -> None:
        row = self.app.runs.get(self.run_pk)
        if row is None:
            return
        progress = f"epoch {row.epoch}/{row.total_epochs}" if row.total_epochs else ""
        best = f"best {row.metric_key} {row.metric_best:.4f}" if row.metric_best is not None else ""
        head = f"[b]{row.run_id}[/b]  {row.name}  [b]{row.status}[/b]  {progress}  {fmt_duration(row.duration())}  {best}"
        lines = [head, row.command]
        if row.error:
            lines.append(f"[red]{row.error}[/red]")
        self.query_one("#run-info", Static).update("\n".join(lines))
