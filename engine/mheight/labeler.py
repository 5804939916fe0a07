"""Labelled m-height data over an (n, k, m) grid, fast.

Work is split into shards (one (n, k) and up to shard_size codes each). A
shard is the unit of parallelism (one worker process per core on a CPU, each
with one torch thread) and of resuming (each shard draws P from its own seed
(seed, n, k, index), so a resumed or re-ordered run writes identical files).
Within a shard, codes are labelled in vectorised batches by
``solver.heights_batch``, every m of the code from one enumeration.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from engine.mheight.shards import read_shard, shard_name, write_shard


@dataclass(frozen=True)
class Source:
    """How P's entries are drawn."""

    dist: str = "int_uniform"
    low: float = -100
    high: float = 100
    scale: float = 1.0

    def as_json(self) -> dict:
        if self.dist == "normal":
            return {"dist": "normal", "scale": self.scale}
        return {"dist": self.dist, "low": self.low, "high": self.high}

    def draw(self, rng: np.random.Generator, count: int, k: int, r: int) -> np.ndarray:
        if self.dist == "int_uniform":
            return rng.integers(math.ceil(self.low), math.floor(self.high), endpoint=True, size=(count, k, r)).astype(np.float64)
        if self.dist == "uniform":
            return rng.uniform(self.low, self.high, size=(count, k, r))
        return rng.normal(0.0, self.scale, size=(count, k, r))


@dataclass(frozen=True)
class ShardTask:
    path: str
    n: int
    k: int
    index: int
    count: int
    ms: tuple[int, ...]
    seed: int
    source: Source
    batch_size: int
    device: str = "cpu"


def label_codes(P: np.ndarray, ms: list[int], batch_size: int, device: str = "cpu") -> np.ndarray:
    """Exact heights (N, len(ms)) of codes P (N, k, n-k), in batches."""
    import torch

    from engine.mheight.solver import heights_batch

    out = np.empty((len(P), len(ms)))
    for s in range(0, len(P), batch_size):
        chunk = torch.as_tensor(P[s:s + batch_size], device=device)
        out[s:s + batch_size] = heights_batch(chunk, list(ms)).cpu().numpy()
    return out


def make_shard(task: ShardTask) -> dict:
    """Draw and label one shard, write it atomically; a summary for progress."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([task.seed, task.n, task.k, task.index])
    P = task.source.draw(rng, task.count, task.k, task.n - task.k)
    H = label_codes(P, list(task.ms), task.batch_size, task.device)
    write_shard(Path(task.path), task.n, task.k, P, list(task.ms), H)
    return {"file": Path(task.path).name, "n": task.n, "k": task.k, "index": task.index, "codes": task.count,
            "labels": H.size, "infinite": int(np.isinf(H).sum()), "seconds": time.perf_counter() - t0}


def _worker_init() -> None:
    import torch

    # One thread per process: the cores are used by processes, not by BLAS threads.
    torch.set_num_threads(1)


def plan_shards(groups, codes_per_group: int, shard_size: int, out_dir: Path, seed: int, source: Source,
                batch_size: int, device: str = "cpu") -> list[ShardTask]:
    tasks = []
    for n, k, ms in groups:
        for index, start in enumerate(range(0, codes_per_group, shard_size)):
            count = min(shard_size, codes_per_group - start)
            tasks.append(ShardTask(str(out_dir / shard_name(n, k, index)), n, k, index, count, tuple(ms), seed,
                                   source, batch_size, device))
    return tasks


def reusable(task: ShardTask, directory: Path) -> dict | None:
    """A finished shard of ``task`` in ``directory`` (a previous run), or None."""
    path = directory / Path(task.path).name
    if not path.is_file():
        return None
    try:
        sh = read_shard(path)
    except Exception:
        return None  # half-written or damaged: make it again
    if (sh.n, sh.k, sh.P.shape[0], tuple(sh.m.tolist())) != (task.n, task.k, task.count, task.ms):
        return None
    return {"file": path.name, "n": sh.n, "k": sh.k, "index": task.index, "codes": task.count,
            "labels": sh.labels, "infinite": int(np.isinf(sh.height).sum()), "seconds": 0.0, "reused": True}


def run_tasks(tasks: list[ShardTask], workers: int, on_done: Callable[[dict], None],
              should_stop: Callable[[], bool] = lambda: False) -> None:
    """Run shard tasks: in-process for one worker or a GPU, else a spawn pool."""
    if workers <= 1 or tasks and tasks[0].device != "cpu":
        if tasks and tasks[0].device == "cpu":
            _worker_init()
        for t in tasks:
            if should_stop():
                return
            on_done(make_shard(t))
        return
    # spawn, not fork: the parent may hold torch/OpenMP state that does not survive a fork.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        pending = {pool.submit(make_shard, t) for t in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in done:
                    on_done(f.result())
                if should_stop():
                    return
        finally:
            for f in pending:
                f.cancel()


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def progress_line(done: int, total: int, labels: int, elapsed: float, width: int = 24) -> str:
    frac = done / total if total else 1.0
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    rate = labels / elapsed if elapsed > 0 else 0.0
    eta = (elapsed / frac - elapsed) if frac > 0 else math.nan
    eta_s = f"{eta:.0f}s" if eta == eta else "?"
    return f"[{bar}] {done}/{total} shards  {labels:,} labels  {rate:,.0f} labels/s  eta {eta_s}"
