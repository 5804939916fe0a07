"""Compare: marked runs side by side: config differences, final and best metrics,
curves overlaid, and runs grouped by config except seed as mean ± std."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from app.tui import reject_curves
from app.tui.cells import cut_middle
from app.tui.data import RunRow
from app.tui.markup import cell
from app.tui.widgets.curves import Curves
from app.tui.widgets.row_table import RowTable

# Settings that tell repeats apart rather than experiments: grouping ignores them.
REPEAT_FIELDS = ("seed",)


def fmt_value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


CELL = 28  # widest cell, in characters: a list of paths would otherwise push every run but one off an 80-column screen


def config_rows(runs: list[RunRow], only_differences: bool) -> list[tuple[str, list[str]]]:
    keys = sorted({k for r in runs for k in r.config})
    out = []
    for k in keys:
        values = [fmt_value(r.config.get(k)) for r in runs]
        if only_differences and len(set(values)) == 1:
            continue
        out.append((k, values))
    return out


def metric_summary_rows(runs: list[RunRow]) -> list[tuple[str, list[str]]]:
    keys = sorted({k for r in runs for k in r.best})
    out = []
    for k in keys:
        out.append((f"final.{k}", [fmt_value(r.final.get(k)) for r in runs]))
        out.append((f"best.{k}", [fmt_value(r.best.get(k)) for r in runs]))
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


@dataclass
class Group:
    config: dict  # the settings the group shares (differences between runs only, seed left out)
    runs: list[RunRow]
    sweep: str | None = None  # the group_id of the sweep its runs came from


def group_by_config(runs: list[RunRow]) -> list[Group]:
    """Runs that differ only in a repeat field (the seed), grouped; first-seen order.

    Runs of a sweep (one ``group_id``) group only with each other: the same
    settings queued in two sweeps are two experiments (other code, other data)
    until a person says otherwise by comparing them without the sweep.
    """
    varying = {k for k, _ in config_rows(runs, only_differences=True)} - set(REPEAT_FIELDS)
    groups: dict[tuple, Group] = {}
    for r in runs:
        shared = {k: r.config.get(k) for k in sorted(varying)}
        key = (r.group_id, r.kind, json.dumps(shared, sort_keys=True, default=str))
        groups.setdefault(key, Group(shared, [], r.group_id)).runs.append(r)
    return list(groups.values())


class CompareScreen(Screen):
    CSS_PATH = "compare.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="compare-back"),
        Binding("a", "toggle_all", "All settings", id="compare-all"),
        Binding("k", "next_metric", "Next metric", id="compare-metric"),
        Binding("m", "toggle_smoothing", "Smooth", id="compare-smooth"),
        Binding("1", "tab('table')", "Table", id="compare-tab-table", show=False),
        Binding("2", "tab('curves')", "Curves", id="compare-tab-curves", show=False),
        Binding("3", "tab('groups')", "Groups", id="compare-tab-groups", show=False),
    ]

    def __init__(self, run_pks: list[int]):
        super().__init__()
        self.run_pks = run_pks
        self.only_differences = True
        self.metric_keys: list[str] = []
        self.metric_index = 0
        self.smooth = False
        self.series: dict[int, dict[str, list[tuple[int, float]]]] = {}
        self.rejects = False  # fit-reject runs only: the curves are error against rejection rate

    @property
    def runs(self) -> list[RunRow]:
        return [self.app.runs[pk] for pk in self.run_pks if pk in self.app.runs]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="compare-info")
        with TabbedContent(initial="table"):
            with TabPane("1 Table", id="table"):
                # the setting column stays put while the runs scroll sideways
                yield RowTable(id="compare-table", cursor_type="row", zebra_stripes=True, fixed_columns=1)
            with TabPane("2 Curves", id="curves"):
                yield Curves("", id="compare-plot")
            with TabPane("3 Groups", id="groups"):
                yield RowTable(id="group-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "Compare"
        runs = self.runs
        primary = [r.metric_key for r in runs if r.metric_key]
        keys = sorted({k for r in runs for k in r.best})
        if all(r.kind == reject_curves.REJECT_KIND for r in runs):
            keys = sorted(set.intersection(*(set(r.best) for r in runs))) if runs else []  # curves all of them drew
        first = primary[0] if primary and primary[0] in keys else None
        self.metric_keys = ([first] if first else []) + [k for k in keys if k != first]
        self.rejects = bool(runs) and all(r.kind == reject_curves.REJECT_KIND for r in runs)
        if self.rejects:  # one error curve per run at a time, over its achieved rejection rate
            self.metric_keys = reject_curves.error_keys(keys) or self.metric_keys
            self.rejects = bool(reject_curves.error_keys(keys))
        self.fill_table()
        self.fill_groups()
        self.load_series()

    def fill_table(self) -> None:
        runs = self.runs
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_column("setting", key="setting")
        for r in runs:
            table.add_column(cell(r.name[:18] + f" {r.run_id[-4:]}"), key=str(r.pk))
        rows = [("run", [r.run_id for r in runs]), ("status", [r.status for r in runs]),
                *config_rows(runs, self.only_differences), *metric_summary_rows(runs)]
        for k, values in rows:  # cells cut to CELL; the full config is on each run's screen
            table.add_row(cell(cut_middle(k, CELL)), *(cell(cut_middle(v, CELL)) for v in values))
        scope = "differing settings only (a: all)" if self.only_differences else "all settings (a: differences only)"
        self.query_one("#compare-info", Static).update(f"{len(runs)} runs · config: {scope}")

    def fill_groups(self) -> None:
        runs = self.runs
        table = self.query_one("#group-table", DataTable)
        table.clear(columns=True)
        fallback = self.metric_keys[0] if self.metric_keys else None
        groups = group_by_config(runs)
        sweeps = any(g.sweep for g in groups)  # the sweep column only when some run came from one
        # The figures first and the label last: a label of several settings is wider than
        # 80 columns, and in front it pushed the figures this tab is for off the screen.
        table.add_columns(*(["sweep"] if sweeps else []), "runs", "key metric", "best", "final",
                          "config (not seed)")
        kinds = len({r.kind for r in runs}) > 1
        for g in groups:
            first = g.runs[0]
            # Each group's own kind's key metric: an m-height group has no val/balanced_acc.
            key = first.metric_key if first.metric_key and any(first.metric_key in r.best for r in g.runs) else fallback
            # Only the group's own settings: with several kinds, every other kind's settings showed as "=—".
            label = ", ".join(f"{k}={fmt_value(v)}" for k, v in g.config.items() if k in first.config)
            label = f"{first.kind}: {label}" if kinds and label else (label or first.kind)
            best = [r.best[key] for r in g.runs if key and key in r.best]
            final = [r.final[key] for r in g.runs if key and key in r.final]
            table.add_row(*([cell(g.sweep or "—")] if sweeps else []), str(len(g.runs)), cell(key or "—"),
                          mean_std(best), mean_std(final), cell(label))

    @work(thread=True, exclusive=True, group="compare-series", exit_on_error=False)
    def load_series(self) -> None:
        if not self.metric_keys:
            return
        key = self.metric_keys[self.metric_index]
        keys = [key, reject_curves.rate_key(key)] if self.rejects else [key]
        series = self.app.data.series(self.run_pks, keys)
        self.app.call_from_thread(self._show_series, series)

    def _show_series(self, series: dict[int, dict[str, list[tuple[int, float]]]]) -> None:
        self.series = series
        key = self.metric_keys[self.metric_index]
        plot = self.query_one("#compare-plot", Curves)
        plot.title_text = f"{key} (k: next metric)"
        plot.xlabel = "rejection rate" if self.rejects else "epoch"
        plot.points.clear()
        plot.series_labels.clear()
        for r in self.runs:
            pts = series.get(r.pk, {}).get(key, [])
            if self.rejects:
                pts = reject_curves.against_rate(pts, series.get(r.pk, {}).get(reject_curves.rate_key(key), []))
            plot.replace(str(r.pk), pts, label=f"{r.name[:14]} {r.run_id[-4:]}")
        plot.set_options(self.smooth, False)
        plot.redraw()

    def action_toggle_all(self) -> None:
        self.only_differences = not self.only_differences
        self.fill_table()

    def action_next_metric(self) -> None:
        if self.metric_keys:
            self.metric_index = (self.metric_index + 1) % len(self.metric_keys)
            self.load_series()

    def action_toggle_smoothing(self) -> None:
        self.smooth = not self.smooth
        plot = self.query_one("#compare-plot", Curves)
        plot.set_options(self.smooth, False)
        plot.redraw()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def runs_updated(self, rows: list[RunRow], removed: set[int]) -> None:
        if any(r.pk in self.run_pks for r in rows) or removed & set(self.run_pks):
            self.fill_table()
            self.fill_groups()
