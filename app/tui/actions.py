"""Queue actions shared by the Runs and Queue screens: cancel, retry, priority.

Each goes through the same functions as ``moe-tui cancel/retry`` (app.queue.control),
in a thread worker (they take the database's write lock), and reports in a
one-line notification. The daemon acts on the request, so the TUI may quit
right after.
"""

from __future__ import annotations

from textual import work

from app.errors import UserError
from app.store.models import ACTIVE
from app.tui.markup import markup


class QueueActions:
    """Mixed into a Screen whose ``selected_run()`` returns the run under the cursor
    (anything with pk, run_id, name, status and priority)."""

    def selected_run(self):  # pragma: no cover - each screen defines it
        raise NotImplementedError

    def action_cancel_run(self) -> None:
        from app.tui.screens.dialogs import Confirm

        row = self.selected_run()
        if row is None:
            return
        if row.status not in (*ACTIVE, "blocked"):
            self.notify(f"{row.run_id} already {row.status}; nothing to cancel", severity="warning", markup=False)
            return
        what = ("it stops (SIGTERM, then SIGKILL after the grace period)" if row.status == "running"
                else "Slurm drops it from its queue (scancel)" if row.status == "pending" else "it will not start")

        def chosen(yes: bool | None) -> None:
            if yes:
                self.queue_request("cancel", row.run_id)

        self.app.push_screen(Confirm(markup("Cancel run [b]$run_id[/b] ($name, $status)?\n$what.",
                                            run_id=row.run_id, name=row.name, status=row.status, what=what)), chosen)

    def action_retry_run(self) -> None:
        row = self.selected_run()
        if row is not None:
            self.queue_request("retry", row.run_id)

    def action_retry_resume(self) -> None:
        row = self.selected_run()
        if row is not None:
            self.queue_request("retry-resume", row.run_id)

    def action_priority(self, step: int) -> None:
        row = self.selected_run()
        if row is not None:
            self.queue_request("priority", row.run_id, row.priority + step)

    @work(thread=True, group="queue-request", exit_on_error=False)
    def queue_request(self, what: str, run_id: str, value: int = 0) -> None:
        from app.queue import control
        from app.queue.daemon import ensure_daemon

        ws = self.app.ws
        try:
            if what == "cancel":
                run = control.cancel(ws, run_id)
                done = f"{run.run_id} " + ("cancelled" if run.status == "cancelled" else "cancel requested (the daemon stops it)")
            elif what in ("retry", "retry-resume"):
                run = control.retry(ws, run_id, resume_from_last=what == "retry-resume")
                done = f"queued {run.run_id} (retry of {run_id}" + (", resuming from its last checkpoint)" if what == "retry-resume" else ")")
            else:
                run = control.set_priority(ws, run_id, value)
                done = f"{run.run_id} priority {run.priority}"
            if what != "priority":
                ensure_daemon(ws)  # what the CLI does: someone must act on the request
        except (UserError, OSError) as e:
            # The message may quote a name or a path: shown as it is, not as markup.
            self.app.call_from_thread(self.notify, f"{what}: {e}", severity="error", timeout=10, markup=False)
            return
        self.app.call_from_thread(self.notify, done, title=what, markup=False)
        self.app.call_from_thread(self.app.poll_runs)
        after = getattr(self, "after_queue_request", None)
        if after is not None:
            self.app.call_from_thread(after)
