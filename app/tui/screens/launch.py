"""Launch: a form generated from a job's config model; submit puts runs on the queue.

Every field starts at the chosen preset's value (else the recipe default) and
is checked as it is typed, by the same resolver the job itself uses. A field
holding ``a | b | c`` is a sweep: one run per value, and per combination when
several fields sweep.
"""

from __future__ import annotations

import dataclasses
import shlex

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from app.errors import UserError
from app.queue import sweep
from app.queue.submit import (
    BACKENDS,
    capture_repro,
    check_gpus,
    resolve_parents,
    submit,
    sweep_base,
)
from app.tui.markup import markup
from engine.core.config import (
    JOBS,
    field_error,
    form_defaults,
    literal_choices,
    resolve,
)
from engine.core.errors import ConfigError

NO_PRESET = "(recipe defaults)"
DEFAULT_KIND = "train-expert"


def show_value(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def option_args(name: str, value: str, annotation) -> list[str]:
    """The engine command-line options that set ``name`` to the form text ``value``."""
    flag = "--" + name.replace("_", "-")
    if annotation is bool:
        low = value.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return [flag]
        if low in ("false", "0", "no", "off"):
            return ["--no-" + name.replace("_", "-")]
    return [f"{flag}={value}"]


class LaunchScreen(Screen[list[str]]):
    CSS_PATH = "launch.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Cancel", id="launch-cancel"),
        Binding("ctrl+s", "submit", "Submit", id="launch-submit"),
    ]

    def __init__(self, kind: str | None = None):
        super().__init__()
        # The job most launches start with (gating and evaluation consume its runs).
        self.kind = kind or (DEFAULT_KIND if DEFAULT_KIND in JOBS else sorted(JOBS)[0])
        self.preset: str | None = None
        self.defaults: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="launch-top"):
            yield Select([(k, k) for k in sorted(JOBS)], value=self.kind, allow_blank=False, id="kind",
                         compact=True, tooltip="job kind")
            yield Select(self.preset_options(self.kind), id="preset", allow_blank=False, compact=True,
                         tooltip="preset: a named set of overrides (quick: seconds on a CPU)")
            yield Select([(b, b) for b in BACKENDS], value=BACKENDS[0], allow_blank=False, id="backend",
                         compact=True, tooltip="where the run executes")
        with Horizontal(id="launch-run"):
            yield Label("name", classes="field-name")
            yield Input(placeholder="default: from the config", id="run-name", compact=True)
            yield Label(" priority ", id="priority-label")
            yield Input("0", id="priority", type="integer", compact=True,
                        tooltip="higher starts first among queued runs")
        with Horizontal(id="launch-queue"):
            yield Label("after", classes="field-name")
            yield Input(placeholder="ids or names of runs it waits for, a,b", id="after", compact=True,
                        tooltip="the run starts only once each of these succeeded (moe-tui submit --after)")
            yield Label(" gpus ", id="gpus-label")
            yield Input(placeholder="auto", id="gpus", type="integer", compact=True,
                        tooltip="GPUs the run needs; 0 = a CPU slot; empty: 1 on a GPU machine, else 0")
        yield Static("", id="after-error", markup=False)
        yield Static("", id="form-error")
        yield VerticalScroll(id="fields", can_focus=False)  # tab goes from field to field
        yield Static("", id="field-help", markup=False)
        with Horizontal(id="launch-buttons"):
            yield Button("Submit", variant="primary", id="submit", compact=True)
            yield Static("", id="sweep-info")
        yield Footer(compact=True)

    async def on_mount(self) -> None:
        self.sub_title = "Launch"
        await self.set_kind(self.kind)

    @staticmethod
    def preset_options(kind: str) -> list[tuple[str, str]]:
        return [(f"preset {p}", p) for p in sorted(JOBS[kind].presets)] + [(NO_PRESET, NO_PRESET)]

    async def set_kind(self, kind: str) -> None:
        self.kind = kind
        presets = sorted(JOBS[kind].presets)
        preset = self.query_one("#preset", Select)
        preset.set_options(self.preset_options(kind))
        preset.value = presets[0] if presets else NO_PRESET
        await self.set_preset(presets[0] if presets else None)

    async def set_preset(self, preset: str | None) -> None:
        self.preset = preset
        # Not resolve(): a kind with required fields (mheight-train's --data) has no valid
        # config until they are filled in, and opening its form crashed the TUI.
        values = form_defaults(self.kind, preset)
        self.defaults = {name: show_value(values[name]) if name in values else ""
                         for name in JOBS[self.kind].model_fields}
        await self.build_fields()

    async def build_fields(self) -> None:
        box = self.query_one("#fields", VerticalScroll)
        await box.remove_children()
        cls = JOBS[self.kind]
        rows = []
        for name, info in cls.model_fields.items():
            choices = literal_choices(info.annotation)
            hint = info.description or ""
            if choices:  # first, so a long description below cannot push them out of the help lines
                hint = f"[{' | '.join(map(str, choices))}] {hint}".rstrip()
            # The hint is text ("[ce | logit_adjust] ..."), shown as it is: here and in #field-help.
            field_input = Input(self.defaults[name], id=f"field-{name}", classes="field-input", compact=True,
                                tooltip=Content(hint),
                                placeholder="required" if info.is_required() else "")
            field_input.hint = hint
            rows.append(Vertical(
                Horizontal(Label(name, classes="field-name"), field_input, classes="field-row"),
                Static("", id=f"error-{name}", classes="field-error", markup=False),
                classes="field",
            ))
        await box.mount_all(rows)
        self.query_one("#form-error", Static).update("")
        self._update_sweep_info()

    def on_descendant_focus(self, event) -> None:
        hint = getattr(event.widget, "hint", None) or getattr(event.widget, "tooltip", None) or ""
        self.query_one("#field-help", Static).update(str(hint))

    async def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "kind" and event.value != self.kind:
            await self.set_kind(str(event.value))
        elif event.select.id == "preset":
            preset = None if event.value in (NO_PRESET, Select.BLANK) else str(event.value)
            if preset != self.preset:
                await self.set_preset(preset)

    # -- validation ------------------------------------------------------------

    def field_values(self) -> dict[str, str]:
        return {i.id.removeprefix("field-"): i.value for i in self.query(".field-input").results(Input)}

    def check_field(self, name: str, text: str) -> str | None:
        for value in sweep.form_values(text):
            error = field_error(self.kind, name, value, preset=self.preset)
            if error:
                return error
        return None

    def on_input_changed(self, event: Input.Changed) -> None:
        input_id = event.input.id or ""
        if input_id == "after":
            self.check_after(event.value)
            return
        if input_id.startswith("field-"):
            name = input_id.removeprefix("field-")
            error = self.check_field(name, event.value)
            label = self.query_one(f"#error-{name}", Static)
            label.update(error or "")
            label.display = bool(error)
            event.input.set_class(bool(error), "-invalid-field")
            self._update_sweep_info()

    @staticmethod
    def after_refs(text: str) -> list[str]:
        return [r.strip() for r in text.replace(" ", ",").split(",") if r.strip()]

    @work(thread=True, exclusive=True, group="check-after", exit_on_error=False)
    def check_after(self, text: str) -> None:
        """Each dependency must name an existing run (a database read, so in a worker)."""
        try:
            with self.app.ws.store.read() as s:
                resolve_parents(s, self.after_refs(text))
            message = ""
        except UserError as e:
            message = str(e)
        self.app.call_from_thread(self._show_after_error, message)

    def _show_after_error(self, message: str) -> None:
        label = self.query_one("#after-error", Static)
        label.update(message)
        label.display = bool(message)
        self.query_one("#after", Input).set_class(bool(message), "-invalid-field")

    def axes(self) -> list[sweep.Axis]:
        """The changed fields, each with its values (``a | b`` sweeps it)."""
        changed = {n: v for n, v in self.field_values().items() if v.strip() != self.defaults.get(n)}
        return sweep.parse_form(changed)

    def _update_sweep_info(self) -> None:
        n = sweep.count(self.axes())
        if n > sweep.MAX_RUNS:
            text = f"{n} runs: more than a sweep may queue ({sweep.MAX_RUNS})"
        else:
            text = f"ctrl+s queues {n} runs (a sweep)" if n > 1 else "ctrl+s queues 1 run · a|b|c in a field sweeps it"
        self.query_one("#sweep-info", Static).update(text)

    # -- submit ----------------------------------------------------------------

    def build_argvs(self) -> list[tuple[list[str], dict[str, str]]]:
        """The engine argv of every run to queue, validated; raises UserError in one line."""
        cls = JOBS[self.kind]
        out = []
        for combo in sweep.expand(self.axes()):
            try:
                resolve(self.kind, preset=self.preset, fields=dict(combo))
            except ConfigError as e:
                raise UserError(str(e)) from None
            argv = [self.kind] + (["--preset", self.preset] if self.preset else [])
            for name, value in combo:
                argv += option_args(name, value, cls.model_fields[name].annotation)
            out.append((argv, combo))
        return out

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.action_submit()

    def action_submit(self) -> None:
        error = self.query_one("#form-error", Static)
        try:
            argvs = self.build_argvs()
            priority = int(self.query_one("#priority", Input).value or 0)
        except UserError as e:
            error.update(markup("[b red]cannot submit:[/] $error", error=e))  # quotes the fields as typed
            return
        except ValueError:
            error.update("[b red]cannot submit:[/] priority must be a whole number")
            return
        gpus_text = self.query_one("#gpus", Input).value.strip()
        try:
            gpus = int(gpus_text) if gpus_text else None
        except ValueError:
            error.update("[b red]cannot submit:[/] gpus must be a whole number (0 for a CPU slot), or empty")
            return
        error.update("submitting…")
        name = self.query_one("#run-name", Input).value.strip() or None
        backend = str(self.query_one("#backend", Select).value)
        after = self.after_refs(self.query_one("#after", Input).value)
        self.submit_runs(argvs, name, backend, priority, gpus, after)

    @work(thread=True, exclusive=True, group="submit", exit_on_error=False)
    def submit_runs(self, argvs, name: str | None, backend: str, priority: int, gpus: int | None = None,
                    after: list[str] | None = None) -> None:
        from app.queue.daemon import ensure_daemon

        ws = self.app.ws
        queued = []
        # The runs of one sweep share a group id, as `moe-tui submit --sweep` gives them (Compare groups by it).
        group = sweep.new_group_id() if len(argvs) > 1 else None
        try:
            # Checked before any run is queued, so a bad value queues nothing.
            if gpus is not None:
                check_gpus(gpus, backend)
            with ws.store.read() as s:
                resolve_parents(s, after or [])
            repro = capture_repro([])  # git state and packages: once for every run of the sweep
            base = sweep_base(name, argvs[0][0]) if group else name
            for argv, combo in argvs:
                run_name = sweep.run_name(base, combo) if group else name
                # The command a person would type for the same run, so the record stays reproducible.
                cli = ["moe-tui", "submit", "--backend", backend, "--priority", str(priority)]
                cli += (["--gpus", str(gpus)] if gpus is not None else []) + [f"--after={a}" for a in after or []]
                cli += (["--name", run_name] if run_name else []) + ["--", *argv]
                run_repro = dataclasses.replace(repro, command=shlex.join(cli))
                queued.append(submit(ws, argv, name=run_name, backend=backend, priority=priority, gpus=gpus,
                                     after=after or [], group_id=group, repro=run_repro).run_id)
            ensure_daemon(ws)
        except UserError as e:
            self.app.call_from_thread(self._submit_failed, str(e), queued)
            return
        self.app.call_from_thread(self._submitted, queued)

    def _submit_failed(self, message: str, queued: list[str]) -> None:
        done = f" (queued before the error: {', '.join(queued)})" if queued else ""
        self.query_one("#form-error", Static).update(markup("[b red]cannot submit:[/] $message", message=message + done))

    def _submitted(self, queued: list[str]) -> None:
        self.app.notify(f"queued {len(queued)} run{'s' if len(queued) > 1 else ''}: {', '.join(queued)}", title="launch",
                        markup=False)
        self.app.poll_runs()
        self.dismiss(queued)  # Runs puts its cursor on the new run
