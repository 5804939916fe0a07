"""The queue's pure parts: slot allocation, sweeps, cycles, placeholders, settings, cause of a cancel."""

from __future__ import annotations

import time

import pytest

from app.errors import UserError
from app.lifecycle import settle
from app.queue.deps import check_acyclic, resolve_placeholders, rewrite_placeholders
from app.queue.settings import load_settings
from app.queue.slots import Gpu, Occupancy, allocate, slot_env
from app.queue import sweep
from engine.core.procs import ProcessIdentity
from engine.core.rundir import RunDir

GPUS = (Gpu(0), Gpu(1), Gpu(2))


def test_cpu_slots_fill_then_refuse():
    occ = Occupancy()
    assert [allocate(0, (), occ, 2, 1) for _ in range(3)] == ["cpu:0", "cpu:1", None]


def test_gpus_spread_before_sharing_and_multi_gpu_needs_distinct_cards():
    occ = Occupancy()
    assert allocate(1, GPUS, occ, 1, 2) == "gpu:0"
    assert allocate(1, GPUS, occ, 1, 2) == "gpu:1"
    assert allocate(2, GPUS, occ, 1, 2) == "gpu:0,2"  # the least-loaded cards, in bus order
    assert allocate(3, GPUS, occ, 1, 2) is None  # GPU 0 is full (2 runs)
    assert allocate(2, GPUS, occ, 1, 2) == "gpu:1,2"
    assert allocate(1, GPUS, occ, 1, 2) is None
    assert occ.gpu == {0: 2, 1: 2, 2: 2} and occ.running == 4


def test_occupancy_rebuilt_from_slot_strings():
    occ = Occupancy()
    for s in ("gpu:0,1", "cpu:0"):
        occ.take(s)
    assert allocate(1, GPUS[:2], occ, 1, 1) is None and allocate(0, (), occ, 1, 1) is None


def test_slot_env_pins_devices_in_bus_order():
    assert slot_env("gpu:1,3") == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1,3"}
    assert slot_env("cpu:0")["CUDA_VISIBLE_DEVICES"] == ""


def test_a_cpu_slot_gets_its_share_of_the_cores_unless_the_user_chose():
    assert slot_env("cpu:1", cpu_slots=2, cores=8, environ={})["OMP_NUM_THREADS"] == "4"
    assert slot_env("cpu:0", cpu_slots=3, cores=2, environ={})["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in slot_env("cpu:0", cpu_slots=2, cores=8, environ={"OMP_NUM_THREADS": "6"})
    assert "OMP_NUM_THREADS" not in slot_env("gpu:0", cpu_slots=2, cores=8, environ={})


def test_sweep_grid():
    expand = lambda items: sweep.expand(sweep.parse_cli(items))  # noqa: E731
    grid = [[("lr", "0.1"), ("seed", "0")], [("lr", "0.1"), ("seed", "1")],
            [("lr", "0.05"), ("seed", "0")], [("lr", "0.05"), ("seed", "1")]]
    assert expand(["lr=0.1,0.05", "seed=0,1"]) == grid
    assert expand(["seed=0,1", "lr=0.1,0.05"]) == grid, "the order axes are typed in does not change the runs"
    assert sweep.expand(sweep.parse_form({"seed": "0 | 1", "lr": "0.1|0.05"})) == grid
    assert sweep.run_name("la", grid[1]) == "la lr=0.1 seed=1"
    for bad in (["lr"], ["lr="], ["=1,2"]):
        with pytest.raises(UserError, match="--sweep expects key=v1,v2"):
            expand(bad)
    with pytest.raises(UserError, match="twice"):
        expand(["lr=1", "lr=2"])
    assert len(expand(["a=" + ",".join(map(str, range(8))), "b=" + ",".join(map(str, range(8)))])) == 64
    with pytest.raises(UserError, match=r"this sweep makes 65 runs \(5 x 13\); at most 64"):
        expand(["a=" + ",".join(map(str, range(5))), "b=" + ",".join(map(str, range(13)))])


def test_cycles_are_named():
    assert check_acyclic({"a": [], "b": ["a"], "c": ["b", "a"]}) == ["a", "b", "c"]
    with pytest.raises(UserError, match=r"cycle: b -> c -> b"):
        check_acyclic({"a": [], "b": ["a", "c"], "c": ["b"]})
    with pytest.raises(UserError, match=r"cycle: a -> a"):
        check_acyclic({"a": ["a"]})


def test_placeholders_rewrite_and_resolve(tmp_path):
    argv = ["recompute", "--experts", "{run:ce},{run:ls}", "--x", "{run:ce}/last.pth"]
    ids = rewrite_placeholders(argv, {"ce": "261124-000000-aaaa", "ls": "261124-000000-bbbb"})
    assert ids[2] == "{run:261124-000000-aaaa},{run:261124-000000-bbbb}"
    assert resolve_placeholders(ids, tmp_path)[4] == f"{tmp_path}/261124-000000-aaaa/last.pth"


def test_settings_file_and_environment(tmp_path, monkeypatch):
    for var in ("MOE_TUI_CPU_SLOTS", "MOE_TUI_PARALLEL", "MOE_TUI_MAX_RUNNING", "MOE_TUI_IDLE_EXIT", "MOE_TUI_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "moe-tui.toml").write_text('[queue]\ncpu_slots = 3\n[slurm]\npartition = "gpu"\nextra = ["--qos=high"]\n')
    s = load_settings(tmp_path)
    assert s.queue.cpu_slots == 3 and s.slurm.partition == "gpu" and s.slurm.extra == ["--qos=high"]
    monkeypatch.setenv("MOE_TUI_CPU_SLOTS", "5")
    assert load_settings(tmp_path).queue.cpu_slots == 5
    (tmp_path / "moe-tui.toml").write_text("[queue]\ncpu_slot = 3\n")
    with pytest.raises(UserError, match=r"moe-tui.toml: queue.cpu_slot: Extra inputs"):
        load_settings(tmp_path)
    (tmp_path / "moe-tui.toml").write_text("[queue\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_settings(tmp_path)
    # a Slurm time limit sbatch would refuse only after the queue wait is refused when read, in plain words
    for good in ("90", "4:00:00", "2-12", "2-12:30:00", "UNLIMITED"):
        (tmp_path / "moe-tui.toml").write_text(f'[slurm]\ntime = "{good}"\n')
        assert load_settings(tmp_path).slurm.time == good
    (tmp_path / "moe-tui.toml").write_text('[slurm]\ntime = "5m"\n')
    with pytest.raises(UserError, match=r"slurm.time: '5m' is not a Slurm time limit; give minutes \(90\)"):
        load_settings(tmp_path)


@pytest.mark.parametrize("text, message", [
    (b"queue = 5\n", "moe-tui.toml: queue: should be a table of settings, not a single value (input 5)"),
    (b'queue = "abc"\n', "moe-tui.toml: queue: should be a table of settings, not a single value (input 'abc')"),
    (b"slurm = [1]\n", "moe-tui.toml: slurm: should be a table of settings, not a single value (input [1])"),
    (b"[queue]\ncpu_slots = 2 # \xff\xfe\n", "moe-tui.toml is not UTF-8 text (byte 0xff at offset 24); save it as UTF-8"),
], ids=["queue a number", "queue a string", "slurm a list", "not UTF-8"])
def test_a_settings_file_of_the_wrong_shape_is_one_line(tmp_path, monkeypatch, text, message):
    monkeypatch.setenv("MOE_TUI_CPU_SLOTS", "2")  # an override has nowhere to go when [queue] is no table
    (tmp_path / "moe-tui.toml").write_bytes(text)
    with pytest.raises(UserError) as e:
        load_settings(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_cancel_request_names_the_cause(tmp_path):
    import subprocess

    p = subprocess.Popen(["true"])
    dead = ProcessIdentity.of(p.pid)
    p.wait()
    running = {"state": "running", "epoch": 2, "updated_at": 5.0, **dead.record()}
    s = settle(RunDir(tmp_path), running, None, -9, cancel={"requested_at": 4.0})
    assert s.status == "cancelled" and s.error == "cancelled on request (killed by SIGKILL (out of memory, or killed by hand))"
    s = settle(RunDir(tmp_path), None, None, None, cancel={"requested_at": 4.0})
    assert s.status == "cancelled" and "before it started" in s.error


def test_slurm_kill_causes_win_over_the_jobs_own_status(tmp_path):
    status = {"state": "cancelled", "epoch": 3, "exit_code": 143, "ended_at": 9.0}
    s = settle(RunDir(tmp_path), status, None, None, slurm={"job_id": "17", "final_state": "TIMEOUT", "time_limit": "00:01:00"})
    assert s.status == "failed"
    assert s.error == ("Slurm job 17 ended TIMEOUT (00:01:00) at epoch 3: Slurm stopped it at its time limit; "
                       "raise --slurm time=... or [slurm] time in moe-tui.toml")


def test_a_slurm_job_in_slurms_queue_reads_pending_until_it_starts(tmp_path):
    from app.lifecycle import slurm_slot

    launch = {"backend": "slurm", "job_id": "17", "launched_at": 1.0}
    waiting = {"job_id": "17", "state": "PENDING", "reason": "Priority", "final_state": None}
    assert settle(RunDir(tmp_path), None, launch, None, slurm=waiting).status == "pending"
    assert slurm_slot(waiting) == "PENDING (Priority)"
    assert slurm_slot({**waiting, "reason": "None"}) == "PENDING"  # squeue's word for no reason
    # Started on its node: Slurm says so, or the job's own status (on another host) does.
    assert settle(RunDir(tmp_path), None, launch, None, slurm={**waiting, "state": "RUNNING"}).status == "running"
    on_node = {"state": "running", "pid": 5, "pid_start": 1, "host": "node-7", "boot_id": "x", "epoch": 1}
    assert settle(RunDir(tmp_path), on_node, launch, None, slurm=waiting).status == "running"
    assert slurm_slot({**waiting, "final_state": "COMPLETED"}) is None


def test_gpu_discovery_reads_nvidia_smi(tmp_path, monkeypatch):
    """The query and CSV format of nvidia-smi (a stand-in script: this machine has no GPU)."""
    from app.queue import slots

    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=index,name,memory.total" ] || exit 9\n'
                   'echo "0, NVIDIA H100 80GB HBM3, 81559"\necho "1, NVIDIA H100 80GB HBM3, 81559"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv(slots.GPUS_ENV, raising=False)
    monkeypatch.setattr(slots, "_from_nvml", lambda: None)
    slots.discover_gpus.cache_clear()
    try:
        assert slots.discover_gpus() == (Gpu(0, "NVIDIA H100 80GB HBM3", 81559), Gpu(1, "NVIDIA H100 80GB HBM3", 81559))
        monkeypatch.setenv(slots.GPUS_ENV, "1")
        slots.discover_gpus.cache_clear()
        assert slots.discover_gpus() == (Gpu(1),)
        monkeypatch.setenv(slots.GPUS_ENV, "none")
        slots.discover_gpus.cache_clear()
        assert slots.discover_gpus() == ()
    finally:
        slots.discover_gpus.cache_clear()


def test_sbatch_script_quotes_every_word(tmp_path):
    """A hostile argument reaches the job as one word; nothing of it runs in the shell."""
    import shlex

    from app.backends.slurm import sbatch_script
    from app.queue.settings import SlurmSettings
    from app.workspace import Workspace

    ws = Workspace(tmp_path / "my ws")
    rd = RunDir(ws.runs / "261124-000000-abcd")
    evil = ["train-expert", "--name", "x'; touch /tmp/pwned; echo '$(id) `id` \"q\""]
    text = sbatch_script(rd.run_id, rd, ws, evil, 2, SlurmSettings(partition="gpu", mem="8G", extra=["--qos=high"]))
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --gres=gpu:2" in text and "#SBATCH --qos=high" in text
    exec_line = next(line for line in text.splitlines() if line.startswith("exec "))
    words = shlex.split(exec_line)[1:]
    assert words[words.index("engine") + 1:] == [*evil, "--run-dir", str(rd.path)]
    with pytest.raises(UserError, match="whitespace"):
        sbatch_script(rd.run_id, rd, ws, evil, 0, SlurmSettings(partition="gpu\n#SBATCH --uid=0"))
    with pytest.raises(UserError, match="without spaces"):
        sbatch_script(rd.run_id, rd, ws, evil, 0, SlurmSettings(extra=["--comment=a b"]))


def test_a_lock_taken_for_a_moment_is_waited_for_and_one_held_is_not(tmp_path):
    """A daemon starting while its client probes the lock (is_locked_elsewhere takes it for a moment)
    stood down, leaving no daemon: CI saw 'the queue daemon exited as it started: another daemon
    already serves'. acquire_within waits out a probe; a lock held for good still refuses."""
    import threading

    from app.locks import FileLock

    path = tmp_path / "daemon.lock"
    probe = FileLock(path)
    assert probe.acquire()
    threading.Timer(0.05, probe.release).start()
    mine = FileLock(path)
    assert mine.acquire_within(2.0), "a lock released within the patience is taken"
    assert FileLock(path).is_locked_elsewhere()
    t0 = time.monotonic()
    assert not FileLock(path).acquire_within(0.2), "a lock held for good is not"
    assert time.monotonic() - t0 < 1.0
    mine.release()
