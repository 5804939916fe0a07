"""The real ``moe-tui`` in a real terminal (tmux, 80 x 24): launch a run from the
form with the keyboard alone and watch it finish in the Runs table."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.helpers import BIN, env_for, epoch_events, run_dirs

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Tmux:
    """One private tmux server (its own socket), so nothing touches a person's sessions."""

    def __init__(self, socket: str):
        self.socket = socket

    def __call__(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def keys(self, *keys: str) -> None:
        for k in keys:
            self("send-keys", "-t", "tui", k)
            time.sleep(0.15)  # a person types slower than this; Textual reads key by key

    def tab(self, times: int) -> None:
        self.keys(*["Tab"] * times)
        time.sleep(0.8)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "tui")

    def wait_for(self, *needles: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if all(n in text for n in needles):
                return text
            time.sleep(0.3)
        raise AssertionError(f"never saw {needles} on screen; last screen:\n{self.screen()}")


def test_launch_a_run_and_see_it_complete(ws_path):
    tmux = Tmux(f"moe-tui-test-{os.getpid()}")
    command = " ".join(["env", f"MOE_TUI_WORKSPACE={ws_path}", "OMP_NUM_THREADS=1", "MOE_TUI_IDLE_EXIT=30",
                        f"{BIN / 'moe-tui'}", "--no-mouse"])
    tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command)
    try:
        tmux.wait_for("No runs yet", "Launch", timeout=60)
        tmux.keys("l")
        tmux.wait_for("train-expert", "ctrl+s queues 1 run")
        # Focus starts on the job kind; tab walks the form: the run settings, then the
        # config fields in the model's order (so adding a setting does not break this).
        # A focused field selects its text (typing replaces it): let the focus land before typing.
        from engine.longtail.config import TrainExpertConfig

        order = ["kind", "preset", "backend", "name", "priority", "after", "gpus", *TrainExpertConfig.model_fields]
        at = "kind"
        for field, text in (("name", "tmux-run"), ("image_size", "8"), ("epochs", "3"), ("lr_milestones", "2")):
            tmux.tab(order.index(field) - order.index(at))
            tmux.keys(*text)
            at = field
        tmux.wait_for("ctrl+s queues 1 run")
        tmux.keys("C-s")
        screen = tmux.wait_for("tmux-run", "succeeded", "3/3", timeout=240)
        assert "train-expert" in screen
        tmux.keys("g")  # the Queue screen: the CPU slot the run used is free again, nothing waits
        tmux.wait_for("Queue", "cpu 0", "free", "0 queued, 0 blocked")
        tmux.keys("Escape")
        tmux.wait_for("tmux-run")
        tmux.keys("q")  # quitting the TUI ends the session; the finished run is not touched
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True)
    runs = list((ws_path / "runs").iterdir())
    assert len(runs) == 1
    submitted = json.loads((runs[0] / "submit.json").read_text())
    assert submitted["name"] == "tmux-run"
    assert (submitted["config"]["epochs"], submitted["config"]["image_size"]) == (3, 8)


def test_killing_the_tui_stops_no_run(ws_path):
    """SIGKILL the TUI while it shows a training run: the run still finishes, and a new TUI shows it."""
    submit = subprocess.run([str(BIN / "moe-tui"), "--workspace", str(ws_path), "submit", "--name", "survivor", "--",
                             "train-expert", "--preset", "quick", "--epochs", "6", "--image-size", "8",
                             "--lr-milestones", "4"],
                            capture_output=True, text=True, timeout=60, env=env_for(ws_path), stdin=subprocess.DEVNULL)
    assert submit.returncode == 0, submit.stderr
    tmux = Tmux(f"moe-tui-test-{os.getpid()}-kill")
    command = f"env MOE_TUI_WORKSPACE={ws_path} OMP_NUM_THREADS=1 {BIN / 'moe-tui'} --no-mouse"
    tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command)
    try:
        tmux.wait_for("survivor", "running", timeout=120)
        pid = int(tmux("display-message", "-p", "-t", "tui", "#{pane_pid}").strip())
        os.kill(pid, signal.SIGKILL)
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True)
    done = subprocess.run([str(BIN / "moe-tui"), "--workspace", str(ws_path), "wait", "--timeout", "240"],
                          capture_output=True, text=True, timeout=300, env=env_for(ws_path), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    (rd,) = run_dirs(ws_path)
    assert [e["epoch"] for e in epoch_events(rd)] == [1, 2, 3, 4, 5, 6]
