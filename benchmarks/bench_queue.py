"""Queue daemon: start latency after a slot frees, idle CPU, and 1,000 queued runs.

Workload: a real daemon (``python -m app.queue.daemon``) with one CPU slot
works through the first runs of a queue of real one-epoch training runs, once
with 10 runs queued (the reference) and once with 1,000. Measured from the
files the processes write:

- start latency: the next run's ``launch.json`` time minus the previous
  run's ``ended_at`` in its final status.json (the slot freed);
- daemon CPU: user+system time of the daemon process itself (not its jobs)
  from /proc, over the working window, and over 20 s idle (nothing queued);
- ``moe-tui ls`` wall time in each workspace.

Targets (issue 6): start within 1 s; idle daemon under 1% of a core; 1,000
queued runs no slower than that.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS_DONE = 4  # runs the daemon completes in each queue (one slot: one after another)
WORK_TIMEOUT_S = 240
IDLE_S = 20
TINY = ["train-expert", "--preset", "quick", "--epochs", "1", "--image-size", "8", "--lr-milestones", "2"]
BIN = Path(sys.executable).parent


def _cpu_s(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(root: Path) -> dict:
    return {**os.environ, "MOE_TUI_WORKSPACE": str(root), "OMP_NUM_THREADS": "1", "MOE_TUI_CPU_SLOTS": "1",
            "MOE_TUI_IDLE_EXIT": "600", "MOE_TUI_MAX_RUNNING": "0"}


def _ls_s(root: Path, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "moe-tui"), "ls"], env=_env(root), capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def _latencies(root: Path) -> list[float]:
    """launch time of each run minus the end of the run before it (one slot: strictly sequential)."""
    from engine.core.rundir import iter_run_dirs, read_json

    ends, starts = [], []
    for rd in iter_run_dirs(root / "runs"):
        launch = read_json(rd.launch_json)
        if launch and launch.get("state") != "launching":
            starts.append(launch["launched_at"])
            status = read_json(rd.status) or {}
            if status.get("ended_at"):  # the job's final status: from here on its slot counts as free
                ends.append(status["ended_at"])
    starts.sort()
    ends.sort()
    return [s - e for s, e in zip(starts[1:], ends) if s >= e]


def scenario(n: int) -> dict:
    from app.queue.control import pause, resume
    from app.queue.daemon import daemon_info, stop_daemon
    from app.queue.submit import capture_repro, submit
    from app.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = Workspace.open(root)
        pause(ws)  # queue everything first, then let the daemon loose
        repro = capture_repro(["bench"])
        t0 = time.perf_counter()
        for i in range(n):
            submit(ws, [*TINY, "--seed", str(i)], backend="local", gpus=0, repro=repro)
        submit_s = time.perf_counter() - t0
        daemon = subprocess.Popen([sys.executable, "-m", "app.queue.daemon", "--workspace", str(root)], env=_env(root),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            while daemon_info(ws) is None:
                time.sleep(0.1)
            time.sleep(2)
            ls_s = _ls_s(root)
            resume(ws)
            cpu0, w0 = _cpu_s(daemon.pid), time.monotonic()
            while len(list(root.glob("runs/*/exit_code"))) < RUNS_DONE and time.monotonic() - w0 < WORK_TIMEOUT_S:
                time.sleep(0.2)
            work_s = time.monotonic() - w0
            busy_pct = 100 * (_cpu_s(daemon.pid) - cpu0) / work_s
            pause(ws)
            lat = _latencies(root)
            done = len(list(root.glob("runs/*/exit_code")))
        finally:
            stop_daemon(ws, timeout_s=30)
            daemon.wait(timeout=30)
            _kill_jobs(root)
    return {"n": n, "submit_s": submit_s, "ls_s": ls_s, "busy_pct": busy_pct, "lat": lat, "done": done, "work_s": work_s}


def _kill_jobs(root: Path) -> None:
    import signal

    from engine.core.procs import ProcessIdentity
    from engine.core.rundir import iter_run_dirs, read_json

    for rd in iter_run_dirs(root / "runs"):
        rec = read_json(rd.launch_json)
        ident = ProcessIdentity.from_record(rec, "launcher_") if rec else None
        if ident and ident.alive():
            os.killpg(ident.pid, signal.SIGKILL)


def idle_cpu() -> float:
    from app.queue.daemon import daemon_info, stop_daemon
    from app.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = Workspace.open(root)
        daemon = subprocess.Popen([sys.executable, "-m", "app.queue.daemon", "--workspace", str(root)], env=_env(root),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        while daemon_info(ws) is None:
            time.sleep(0.1)
        time.sleep(2)  # past start-up imports
        cpu0, w0 = _cpu_s(daemon.pid), time.monotonic()
        time.sleep(IDLE_S)
        pct = 100 * (_cpu_s(daemon.pid) - cpu0) / (time.monotonic() - w0)
        stop_daemon(ws, timeout_s=30)
        daemon.wait(timeout=30)
    return pct


def run() -> str:
    ref = scenario(10)
    big = scenario(1000)
    idle = idle_cpu()

    def lat(r):
        xs = r["lat"]
        return (f"{statistics.median(xs):.2f} s / {max(xs):.2f} s" if xs else "n/a")

    def ratio(a, b):
        return f"{a / b:.2f}x" if b else "n/a"

    med = lambda r: statistics.median(r["lat"]) if r["lat"] else float("nan")
    return f"""## Queue daemon (issue 6)

One CPU slot, real one-epoch training runs, a real detached daemon working through {RUNS_DONE} runs per queue
(each run is a fresh Python + torch process, most of its time is start-up on this loaded machine).
Reference: the same daemon with 10 runs queued; ratios are 1,000-queue / reference.

| | 10 queued (reference) | 1,000 queued | ratio | target |
|---|---:|---:|---:|---|
| start latency after a slot frees, median / max | {lat(ref)} | {lat(big)} | {ratio(med(big), med(ref))} | < 1 s |
| runs completed / seconds | {ref['done']} / {ref['work_s']:.0f} s | {big['done']} / {big['work_s']:.0f} s | | |
| daemon CPU while working (its own, not the jobs') | {ref['busy_pct']:.1f}% | {big['busy_pct']:.1f}% | {ratio(big['busy_pct'], ref['busy_pct'])} | |
| `moe-tui ls` wall time | {ref['ls_s'] * 1000:.0f} ms | {big['ls_s'] * 1000:.0f} ms | {ratio(big['ls_s'], ref['ls_s'])} | |
| queueing (`submit()` per run, in-process) | {ref['submit_s'] / ref['n'] * 1000:.1f} ms | {big['submit_s'] / big['n'] * 1000:.1f} ms | | |

Idle daemon (nothing queued, {IDLE_S} s): **{idle:.2f}% of one core** (target < 1%).
"""
