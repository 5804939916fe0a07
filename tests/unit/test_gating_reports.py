"""train-gating's epoch reports run on a worker thread beside training: in order, complete, and fatal when they fail."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from engine.common.checkpoint import load_checkpoint
from engine.core.config import parse_argv
from engine.gating import train_gating
from engine.core.procs import EXIT_NO_SPACE, EXIT_OK
from engine.core.recorder import RunRecorder
from engine.core.rundir import RunDir
from tests.gating_synth import COUNTS, write_head_tail_experts, write_npz
from tests.helpers import read_events

EPOCHS = 8


def run_in_process(tmp_path, *extra: str, epochs: int = EPOCHS, threads: int = 1, patch=None) -> RunRecorder:
    logits = tmp_path / "logits"
    if not logits.exists():
        write_head_tail_experts(logits, scale=2)
    spec = parse_argv(["train-gating", "--logits-dir", str(logits), "--experts", "head_expert,tail_expert",
                       "--class-counts", str(logits / "class_counts.json"), "--epochs", str(epochs),
                       "--warmup-epochs", "1", "--batch-size", "16", "--threads", str(threads), *extra])
    rec = RunRecorder(RunDir.create(tmp_path / "runs"), kind=spec.kind, config=spec.config.model_dump(mode="json"),
                      argv=spec.argv, total_epochs=epochs)
    rec._tee_output = lambda: None
    if patch:
        patch(rec)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), rec:
        train_gating.run(spec, rec)
    return rec


def test_every_epoch_is_reported_in_order_and_the_best_checkpoint_is_the_best_epoch(tmp_path):
    rec = run_in_process(tmp_path)
    assert rec.exit_code == EXIT_OK
    rd = rec.run_dir
    epochs = [e for e in read_events(rd.path) if e["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    history = json.loads((rd.artifacts / "training_history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    scores = [h["val/balanced_acc"] for h in history]
    best = load_checkpoint(rd.checkpoints / "best_gating.pth")
    assert best["epoch"] == scores.index(max(scores)) + 1  # the first epoch at the maximum
    assert {"epoch": best["epoch"], **best["metrics"]} == history[best["epoch"] - 1]
    final = load_checkpoint(rd.checkpoints / "final_gating.pth")
    assert {"epoch": EPOCHS, **final["metrics"]} == history[-1]


def test_reports_do_not_depend_on_how_the_threads_interleave(tmp_path):
    """Each report works on a copy of its epoch's weights: two runs with one seed agree to the bit."""
    runs = [run_in_process(tmp_path) for _ in range(2)]
    a, b = (json.loads((r.run_dir.artifacts / "training_history.json").read_text()) for r in runs)
    assert a == b
    wa, wb = (load_checkpoint(r.run_dir.checkpoints / "final_gating.pth")["model"] for r in runs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_failing_report_fails_the_run_and_stops_training(tmp_path, monkeypatch):
    trained, train_one_epoch = [], train_gating.train_one_epoch
    monkeypatch.setattr(train_gating, "train_one_epoch", lambda *a: trained.append(1) or train_one_epoch(*a))

    def disk_fills_at_epoch_3(rec):
        log_epoch = rec.log_epoch

        def log(epoch, metrics, phase=None):
            if epoch == 3:
                raise OSError(28, "No space left on device")
            log_epoch(epoch, metrics, phase)

        rec.log_epoch = log

    rec = run_in_process(tmp_path, patch=disk_fills_at_epoch_3)
    assert rec.exit_code == EXIT_NO_SPACE  # the cause says so, not a crash
    status = rec.run_dir.read_status()
    assert status["state"] == "failed" and status["error"].startswith("no space left on device (")
    epochs = [e["epoch"] for e in read_events(rec.run_dir.path) if e["type"] == "epoch"]
    assert epochs == [1, 2]
    assert len(trained) <= 4  # epoch 3's error surfaces when epoch 4's report is handed over
    assert not (rec.run_dir.checkpoints / "final_gating.pth").exists()
    history = json.loads((rec.run_dir.artifacts / "training_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.parametrize("threads,train,worker", [(1, 1, 1), (2, 1, 1), (4, 2, 2), (5, 2, 3)])
def test_the_jobs_threads_are_split_between_training_and_the_worker(tmp_path, monkeypatch, threads, train, worker):
    """torch's thread count is per thread: the worker must neither fall back to one per core
    nor, with the training thread, oversubscribe the cores the job was given."""
    seen = {"train": [], "worker": []}
    real_eval, real_epoch = train_gating.evaluate, train_gating.train_one_epoch

    def evaluate(*args, **kw):
        seen["worker"].append(torch.get_num_threads())
        return real_eval(*args, **kw)

    def train_one_epoch(*args):
        seen["train"].append(torch.get_num_threads())
        return real_epoch(*args)

    monkeypatch.setattr(train_gating, "evaluate", evaluate)
    monkeypatch.setattr(train_gating, "train_one_epoch", train_one_epoch)
    before = torch.get_num_threads()
    try:
        assert run_in_process(tmp_path, epochs=2, threads=threads).exit_code == EXIT_OK
        assert torch.get_num_threads() == threads  # the final table gets them all back
    finally:
        torch.set_num_threads(before)
    assert seen == {"train": [train, train], "worker": [worker, worker]}


def test_a_class_with_no_gating_image_keeps_its_group_from_the_experts_train_split(tmp_path):
    """Class 4 has 40 train-LT images (head) but none in the gating split: the job takes the
    boundary from the train split the manifest records, not from the gating split's counts."""
    logits = write_head_tail_experts(tmp_path / "logits", scale=2)
    for expert in ("head_expert", "tail_expert"):
        path = logits / expert / "gating_logits.npz"
        with np.load(path) as f:
            keep = f["targets"] != 4
            z, y = f["logits"][keep], f["targets"][keep]
        write_npz(path, z, y)
    split = {"fingerprint": "synthetic", "class_counts": COUNTS, "file": None}
    (logits / "manifest.json").write_text(json.dumps({"version": 2, "num_classes": 10, "experts": {
        e: {"splits": {}, "train_split": split} for e in ("head_expert", "tail_expert")}}))
    spec = parse_argv(["train-gating", "--logits-dir", str(logits), "--experts", "head_expert,tail_expert",
                       "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "16", "--threads", "1",
                       "--test-split", "none"])
    rec = RunRecorder(RunDir.create(tmp_path / "runs"), kind=spec.kind, config=spec.config.model_dump(mode="json"),
                      argv=spec.argv, total_epochs=1)
    rec._tee_output = lambda: None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), rec:
        train_gating.run(spec, rec)
    assert rec.exit_code == EXIT_OK
    inputs = json.loads((rec.run_dir.artifacts / "inputs.json").read_text())
    assert inputs["groups"]["head"] == [0, 1, 2, 3, 4] and inputs["class_counts"].startswith("class counts of the experts'")
    assert load_checkpoint(rec.run_dir.checkpoints / "final_gating.pth")["class_counts"] == COUNTS
