"""The m-height generator: exact labels (against the LP), shards, resuming, grid checks."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine.mheight.labeler import Source, make_shard, plan_shards
from engine.mheight.lp import run_lp_jobs
from engine.mheight.shards import grid_groups, load_labels, read_shard
from tests.helpers import engine, epoch_events, run_dirs

TINY_GRID = ["--n-values", "6,7", "--k-values", "3", "--m-min", "1", "--codes-per-group", "40", "--shard-size", "16"]


LP_CODES_PER_GROUP = 30  # 630 codes over the 21 groups; benchmarks/bench_mheight.py checks more per group
LP_CHUNK = 10  # codes per unit of pool work: small enough to balance two workers


def test_course_grid_labels_agree_with_the_lp_at_scale(tmp_path):
    """Every (n, k, m) group of the course grid, 30 codes each (integer P in [-100, 100]):
    the generator's labels equal Roth's LPs (HiGHS, two processes) to 1e-9 relative, inf included."""
    groups = grid_groups([9, 10], [4, 5, 6], 2, None)
    assert sum(len(ms) for *_, ms in groups) == 21
    tasks = plan_shards(groups, LP_CODES_PER_GROUP, LP_CODES_PER_GROUP, tmp_path, seed=3, source=Source(), batch_size=32)
    shards = []
    for task in tasks:
        make_shard(task)
        shards.append(read_shard(Path(task.path)))
    jobs = [(sh.n, sh.k, sh.m.tolist(), sh.P[s:s + LP_CHUNK]) for sh in shards for s in range(0, len(sh.P), LP_CHUNK)]
    results = iter(run_lp_jobs(jobs, workers=2))
    checked = {}
    for sh in shards:
        lp = np.concatenate([next(results)[0] for _ in range(0, len(sh.P), LP_CHUNK)])
        for i, m in enumerate(sh.m.tolist()):
            gen, ref = sh.height[:, i], lp[:, i]
            bad = np.flatnonzero(np.isinf(gen) != np.isinf(ref))
            assert not len(bad), f"n={sh.n} k={sh.k} m={m}: infinite in one only, P={sh.P[bad[0]].tolist()}"
            fin = np.isfinite(ref)
            rel = np.abs(gen[fin] - ref[fin]) / ref[fin]
            assert rel.max(initial=0.0) <= 1e-9, f"n={sh.n} k={sh.k} m={m}: P={sh.P[fin][rel.argmax()].tolist()}"
            checked[(sh.n, sh.k, m)] = len(gen)
    assert len(checked) == 21 and set(checked.values()) == {LP_CODES_PER_GROUP}


def test_generated_infinite_labels_are_kept_and_flagged(tmp_path):
    # With small integer entries singular minors are common: both kinds of label occur at m = n-k.
    (task,) = plan_shards([(6, 3, [1, 2, 3])], 200, 200, tmp_path, 0, Source("int_uniform", -3, 3), 64)
    make_shard(task)
    with np.load(task.path, allow_pickle=False) as z:
        assert (z["infinite"] == np.isinf(z["height"])).all()
        assert z["infinite"][:, 2].any() and not z["infinite"][:, 2].all()
        # m = 1 is infinite only when d = 1 (a zero row of P): rare, but a zero row must be flagged
        zero_row = (z["P"] == 0).all(axis=2).any(axis=1)
        assert (z["infinite"][:, 0] == zero_row).all()


def _generate(ws: Path, *args: str):
    out = engine(ws, "mheight", "generate", *TINY_GRID, *args)
    return out, run_dirs(ws)[-1]


def _digest(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.npz"))}


def test_generate_job_writes_shards_and_resumes_identically(tmp_path):
    ws = tmp_path / "ws"
    out, rd = _generate(ws, "--workers", "2")
    assert out.returncode == 0, out.stderr
    shards = rd / "artifacts" / "shards"
    man = json.loads((shards / "manifest.json").read_text())
    assert man["complete"] and man["grid"] == [[6, 3, [1, 2, 3]], [7, 3, [1, 2, 3, 4]]]
    assert len(man["shards"]) == 6 and man["labels"] == 40 * 3 + 40 * 4
    assert json.loads((rd / "status.json").read_text())["state"] == "succeeded"
    assert len(epoch_events(rd)) == 6  # one progress event per shard
    labels, _ = load_labels(rd, pad=6)
    assert len(labels) == 280 and labels.groups()[0] == (6, 3, 1)
    assert np.isfinite(labels.log2h).any() and (labels.log2h[np.isfinite(labels.log2h)] >= 0).all()

    # An interrupted run: one shard missing. Resuming reuses the rest and remakes it bit for bit.
    first = _digest(shards)
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in list(first)[1:]:
        (partial / name).write_bytes((shards / name).read_bytes())
    (partial / "manifest.json").write_text(json.dumps({**man, "complete": False, "shards": man["shards"][1:]}))
    out, rd2 = _generate(ws, "--resume-from", str(partial))
    assert out.returncode == 0, out.stderr
    assert "5 of 6 shards reused" in (rd2 / "stdout.log").read_text()
    assert _digest(rd2 / "artifacts" / "shards") == first


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out, rd = _generate(tmp_path_factory.mktemp("mhgen"))
    assert out.returncode == 0, out.stderr
    return rd


def test_resuming_from_a_different_grid_is_refused(tmp_path, tiny_run):
    ws, rd = tmp_path / "ws", tiny_run
    out = engine(ws, "mheight", "generate", "--n-values", "6,8", "--k-values", "3", "--codes-per-group", "40",
                 "--shard-size", "16", "--resume-from", str(rd))
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()[-1]
    assert "different grid" in err and "resume only a run with the same grid" in err


def test_loading_a_shard_of_another_grid_is_refused(tmp_path, tiny_run):
    import shutil

    rd = tmp_path / "copy"
    shutil.copytree(tiny_run, rd)
    shards = rd / "artifacts" / "shards"
    man = json.loads((shards / "manifest.json").read_text())
    man["grid"] = [[6, 3, [1, 2]], [7, 3, [1, 2, 3, 4]]]
    (shards / "manifest.json").write_text(json.dumps(man))
    from engine.core.errors import JobError

    with pytest.raises(JobError, match="not in the grid"):
        load_labels(rd, pad=6)


def test_generate_queued_through_the_daemon_then_trained_on(ws_path):
    """The queue runs m-height jobs like any other: generate, then train on its run directory."""
    from tests.helpers import moe

    out = moe(ws_path, "submit", "--name", "mh-data", "--", "mheight-generate", *TINY_GRID, "--workers", "1")
    assert out.returncode == 0, out.stderr
    gen_id = out.stdout.split()[1]
    w = moe(ws_path, "wait", gen_id, "--timeout", "170")
    assert w.returncode == 0 and f"{gen_id}  succeeded" in w.stdout, w.stdout + w.stderr
    out = moe(ws_path, "submit", "--", "mheight-train", "--preset", "quick", "--epochs", "1", "--model", "fc",
              "--data", str(ws_path / "runs" / gen_id))
    assert out.returncode == 0, out.stderr
    train_id = out.stdout.split()[1]
    w = moe(ws_path, "wait", train_id, "--timeout", "170")
    assert w.returncode == 0 and f"{train_id}  succeeded epoch 1/1" in w.stdout, w.stdout + w.stderr
