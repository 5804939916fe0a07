"""Helpers for tests that drive the real CLIs and real run directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
# A real training run small enough for tests: 8 px digits, 3 epochs (~3 s on a CPU core).
# "Some real job" for the queue, daemon, Slurm and TUI tests: a real train-expert run on the
# embedded digits, on the smallest CIFAR ResNet, since those tests are about scheduling, not models.
TINY = ["train-expert", "--preset", "quick", "--arch", "resnet8", "--epochs", "3", "--image-size", "8", "--lr-milestones", "2"]
# The network-free real job, for tests where a run only has to be queued, start, log progress and
# end: exact m-height labels for 40 random codes of one (n, k) = (6, 3) pair, in 4 shards, one
# epoch event per shard (~3 s a process, most of it the torch import; TINY takes ~7.5 s).
QUICK = ["mheight-generate", "--n-values", "6", "--k-values", "3", "--codes-per-group", "40",
         "--shard-size", "10", "--workers", "1"]


def tiny(**flags: str) -> list[str]:
    """TINY with some flags changed (``tiny(epochs="20")``), by name, never by position."""
    argv = list(TINY)
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if flag in argv:
            argv[argv.index(flag) + 1] = str(value)
        else:
            argv += [flag, str(value)]
    return argv


def env_for(ws: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({
        "MOE_TUI_WORKSPACE": str(ws),
        "OMP_NUM_THREADS": "1",  # many small jobs share 2 cores in CI
        "MOE_TUI_IDLE_EXIT": "30",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def moe(ws: Path, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "moe-tui"), "--workspace", str(ws), *args], capture_output=True,
                          text=True, timeout=timeout, env=env_for(ws, **env), stdin=subprocess.DEVNULL)


def moe_bg(ws: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "moe-tui"), "--workspace", str(ws), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env_for(ws), stdin=subprocess.DEVNULL)


def engine(ws: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "engine"), *args, "--workspace", str(ws)], capture_output=True,
                          text=True, timeout=timeout, env=env_for(ws), stdin=subprocess.DEVNULL)


def engine_bg(ws: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "engine"), *args, "--workspace", str(ws)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env_for(ws), stdin=subprocess.DEVNULL)


def wait_for(predicate, timeout: float = 120, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_dirs(ws: Path) -> list[Path]:
    return sorted(p for p in (ws / "runs").iterdir() if p.is_dir()) if (ws / "runs").exists() else []


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epoch_events(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir) if e["type"] == "epoch"]


def kill_workspace_processes(ws: Path) -> None:
    """Stop a test workspace's daemon and any job it left running."""
    from app.queue.daemon import stop_daemon
    from app.workspace import Workspace
    from engine.core.procs import ProcessIdentity
    from engine.core.rundir import read_json

    w = Workspace(Path(ws))
    try:
        stop_daemon(w, timeout_s=10)
    except Exception:
        pass
    for rd in run_dirs(Path(ws)):
        for rec, prefix in ((read_json(rd / "launch.json"), "launcher_"), (read_json(rd / "status.json"), "")):
            ident = ProcessIdentity.from_record(rec, prefix) if rec else None
            if ident is None or ident.pid == os.getpid() or not ident.alive():
                continue  # jobs written in-process by a test carry the test's own pid
            try:
                group = os.getpgid(ident.pid)
                if group != os.getpgrp():
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(ident.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
