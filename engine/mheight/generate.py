"""mheight-generate: random codes over an (n, k, m) grid with exact labels, as shards.

Writes ``artifacts/shards/`` (manifest.json + .npz shards). Progress: one
``epoch`` event per finished shard (phase "generate") so the TUI shows a bar.
"""

from __future__ import annotations

import shutil
import time

from engine.core.config import JobSpec
from engine.core.errors import JobError
from engine.core.recorder import RunRecorder
from engine.mheight.config import MHeightGenerateConfig
from engine.mheight.labeler import (
    Source,
    default_workers,
    plan_shards,
    progress_line,
    reusable,
    run_tasks,
)
from engine.mheight.shards import (
    MANIFEST,
    SHARDS_DIRNAME,
    check_same_grid,
    data_dir,
    grid_groups,
    read_manifest,
    write_manifest,
)


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: MHeightGenerateConfig = spec.config  # type: ignore[assignment]
    groups = grid_groups(cfg.n_values, cfg.k_values, cfg.m_min, cfg.m_max)
    if not groups:
        raise JobError(f"the grid n={cfg.n_values}, k={cfg.k_values}, m>={cfg.m_min} is empty; need k < n and m_min <= n-k")
    source = Source(cfg.p_dist, cfg.p_low, cfg.p_high, cfg.p_scale)
    if cfg.p_dist == "int_uniform" and int(cfg.p_high) - int(cfg.p_low) < 0:
        raise JobError(f"no integer lies in [{cfg.p_low}, {cfg.p_high}]; widen --p-low/--p-high")
    from engine.common.device import pick_device

    device = pick_device(cfg.device)
    gpu = device.type == "cuda"
    workers = 1 if gpu else (cfg.workers or default_workers())
    batch = cfg.gpu_batch_size if gpu else cfg.batch_size

    out = rec.run_dir.artifacts / SHARDS_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    man = {"grid": [[n, k, ms] for n, k, ms in groups], "source": source.as_json(), "seed": cfg.seed,
           "codes_per_group": cfg.codes_per_group, "shard_size": cfg.shard_size, "complete": False, "shards": []}
    tasks = plan_shards(groups, cfg.codes_per_group, cfg.shard_size, out, cfg.seed, source, batch, str(device))

    done: list[dict] = []
    if cfg.resume_from:
        prev_dir = data_dir(cfg.resume_from)
        prev = read_manifest(prev_dir)
        check_same_grid(prev, man, prev_dir)
        if (prev.get("seed"), prev.get("shard_size")) != (cfg.seed, cfg.shard_size):
            raise JobError(f"{prev_dir} used seed {prev.get('seed')} and shard size {prev.get('shard_size')}; "
                           f"resume with the same --seed and --shard-size")
        left = []
        for t in tasks:
            found = reusable(t, prev_dir)
            if found:
                shutil.copy2(prev_dir / found["file"], out / found["file"])
                done.append(found)
            else:
                left.append(t)
        print(f"resuming from {prev_dir}: {len(done)} of {len(tasks)} shards reused", flush=True)
        tasks = left
    write_manifest(out, man)

    total = len(tasks) + len(done)
    rec.set_total_epochs(total)
    print(f"{len(groups)} (n, k) pairs, {sum(len(ms) for *_, ms in groups)} (n, k, m) groups, "
          f"{cfg.codes_per_group} codes each; {total} shards on {device} with {workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    made_labels = 0

    def on_done(info: dict) -> None:
        nonlocal made_labels
        done.append(info)
        made_labels += info["labels"]
        elapsed = time.perf_counter() - t0
        rec.log_epoch(len(done), {"labels": float(made_labels), "labels_per_s": made_labels / max(elapsed, 1e-9)},
                      phase="generate")
        print(progress_line(len(done), total, made_labels, elapsed), flush=True)
        # the manifest lists finished shards as they land, so an interrupted run can be resumed
        write_manifest(out, {**man, "shards": sorted(done, key=lambda d: d["file"])})

    run_tasks(tasks, workers, on_done, should_stop=lambda: rec.cancel_requested)
    rec.check_cancelled()
    elapsed = time.perf_counter() - t0
    labels = sum(d["labels"] for d in done)
    infinite = sum(d["infinite"] for d in done)
    write_manifest(out, {**man, "complete": True, "labels": labels, "infinite": infinite,
                         "shards": sorted(done, key=lambda d: d["file"])})
    rec.log_summary({"labels": labels, "labels_per_s": made_labels / max(elapsed, 1e-9),
                     "infinite_fraction": infinite / max(labels, 1), "seconds": elapsed})
    print(f"wrote {len(done)} shards to {out} ({MANIFEST} lists them)", flush=True)
