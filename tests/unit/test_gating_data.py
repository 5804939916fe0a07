"""Loading experts' logits: both layouts, and a one-line error for each kind of bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from engine.common.groups import ClassGroups
from engine.gating.data import check_logits_dir, load_class_counts, load_class_weights, load_split
from engine.core.errors import JobError
from tests.gating_synth import write_npz
from tests.helpers import engine, run_dirs


def _experts(root, n=20, C=6, experts=("a", "b"), splits=("gating", "val"), seed=0):
    rng = np.random.default_rng(seed)
    for split in splits:
        y = rng.integers(0, C, n)
        for e in experts:
            write_npz(root / e / f"{split}_logits.npz", rng.normal(size=(n, C)), y)
    return root


def _error(fn, *args, **kw) -> str:
    with pytest.raises(JobError) as err:
        fn(*args, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_npz_and_original_pt_layouts_give_the_same_split(tmp_path):
    root = _experts(tmp_path / "npz")
    npz = load_split(root, ["a", "b"], "val")
    assert npz.num_samples == 20 and npz.num_classes == 6 and npz.logits[0].dtype == np.float32

    pt_root, labels = tmp_path / "pt", tmp_path / "labels"
    labels.mkdir()
    np.save(labels / "val_targets.npy", npz.targets)
    for e, arr in zip(["a", "b"], npz.logits):
        (pt_root / e).mkdir(parents=True)
        torch.save(torch.from_numpy(arr), pt_root / e / "val_logits.pt")
    pt = load_split(pt_root, ["a", "b"], "val", labels_dir=labels)
    assert np.array_equal(pt.targets, npz.targets)
    assert all(np.array_equal(x, y) for x, y in zip(pt.logits, npz.logits))
    # labels as JSON work too, and .pt logits without labels are refused
    (labels / "val_targets.npy").unlink()
    (labels / "val_targets.json").write_text(json.dumps(npz.targets.tolist()))
    assert np.array_equal(load_split(pt_root, ["a", "b"], "val", labels_dir=labels).targets, npz.targets)
    assert "--labels-dir" in _error(load_split, pt_root, ["a", "b"], "val")


def test_labels_that_disagree_with_npz_targets(tmp_path):
    root = _experts(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    np.save(labels / "val_targets.npy", np.zeros(20, dtype=np.int64))
    assert "disagree with the labels" in _error(load_split, root, ["a", "b"], "val", labels_dir=labels)


def test_experts_with_different_sample_counts(tmp_path):
    root = _experts(tmp_path)
    write_npz(root / "b" / "val_logits.npz", np.zeros((19, 6)), np.zeros(19))
    msg = _error(load_split, root, ["a", "b"], "val")
    assert "experts disagree on split 'val': a has 20 samples, b has 19" in msg


def test_experts_with_different_targets(tmp_path):
    root = _experts(tmp_path)
    with np.load(root / "a" / "val_logits.npz") as f:
        logits, y = f["logits"], f["targets"].copy()
    y[3] = (y[3] + 1) % 6
    write_npz(root / "b" / "val_logits.npz", logits, y)
    assert "disagree on the targets of split 'val'" in _error(load_split, root, ["a", "b"], "val")


def test_missing_split_and_missing_expert(tmp_path):
    root = _experts(tmp_path)
    msg = _error(load_split, root, ["a", "b"], "test")
    assert "no logits for split 'test' of expert 'a'" in msg and "splits there: gating, val" in msg
    msg = _error(check_logits_dir, str(root), ["a", "c"])
    assert "expert c not found" in msg and "experts in" in msg and "a, b" in msg
    assert "does not exist" in _error(check_logits_dir, str(tmp_path / "nope"), ["a"])
    assert "--logits-dir" in _error(check_logits_dir, None, ["a"])


def test_a_recompute_logits_run_by_directory_or_id(tmp_path, monkeypatch):
    """--logits-dir RUN_DIR or RUN_ID finds artifacts/logits inside; no suffix needed."""
    runs = tmp_path / "ws" / "runs"
    run = runs / "251125-101500-0000"
    logits = _experts(run / "artifacts" / "logits")
    (run / "run.json").write_text(json.dumps({"v": 1, "run_id": run.name, "kind": "recompute-logits"}))
    assert check_logits_dir(str(logits), ["a", "b"]) == logits, "the folder itself, as before"
    assert check_logits_dir(str(run), ["a", "b"]) == logits
    assert check_logits_dir(run.name, ["a", "b"], runs_roots=[runs]) == logits
    monkeypatch.setenv("MOE_TUI_WORKSPACE", str(tmp_path / "ws"))  # what a queued job has
    assert check_logits_dir(run.name, ["a", "b"]) == logits
    assert load_split(check_logits_dir(run.name, ["a", "b"]), ["a", "b"], "val").num_samples == 20
    msg = _error(check_logits_dir, "251125-101500-0001", ["a"])
    assert msg == (f"--logits-dir 251125-101500-0001: no such folder, nor a run 251125-101500-0001 in {runs}; "
                   "pass the run's directory or set --workspace")
    # A run of another kind, or one that has not written its logits yet, says which it is.
    expert = runs / "251125-101400-0000"
    expert.mkdir()
    (expert / "run.json").write_text(json.dumps({"v": 1, "run_id": expert.name, "kind": "train-expert"}))
    (expert / "status.json").write_text(json.dumps({"v": 1, "state": "succeeded"}))
    assert "is a train-expert run (succeeded) with no artifacts/logits" in _error(check_logits_dir, str(expert), ["a"])
    # Neither layout: one line naming both.
    msg = _error(check_logits_dir, str(tmp_path / "ws"), ["a", "b"])
    assert "holds neither DIR/<expert>/<split>_logits.npz for experts a, b (sub-folders: runs)" in msg
    assert "nor a recompute-logits run's artifacts/logits" in msg


def test_nan_logits(tmp_path):
    root = _experts(tmp_path)
    bad = np.random.default_rng(0).normal(size=(20, 6))
    bad[7, 2] = np.nan
    with np.load(root / "a" / "val_logits.npz") as f:
        write_npz(root / "b" / "val_logits.npz", bad, f["targets"])
    assert "NaN or Inf logits (first in row 7)" in _error(load_split, root, ["a", "b"], "val")


def test_class_count_mismatch_and_targets_out_of_range(tmp_path):
    root = _experts(tmp_path)
    msg = _error(load_split, root, ["a", "b"], "val", num_classes=100, dataset="cifar100_lt_if100")
    assert "have 6 classes but preset cifar100_lt_if100 expects 100" in msg
    write_npz(root / "a" / "val_logits.npz", np.zeros((3, 6)), np.array([0, 1, 6]))
    assert "outside the 6 classes" in _error(load_split, root, ["a"], "val")


def test_class_weights_are_normalised_to_sum_to_c(tmp_path):
    w, note = load_class_weights(None, 4)
    assert np.allclose(w, 1) and "uniform" in note
    f = tmp_path / "class_weights.json"
    f.write_text(json.dumps([1, 1, 2, 4]))
    w, _ = load_class_weights(str(f), 4)
    assert np.allclose(w, [0.5, 0.5, 1, 2]) and w.sum() == pytest.approx(4)
    f.write_text(json.dumps({"class_weights": [1, 2, 3]}))
    assert "has 3 weights but the logits have 4 classes" in _error(load_class_weights, str(f), 4)


def test_class_counts_from_file_or_estimated_from_the_train_split(tmp_path):
    f = tmp_path / "class_groups.json"
    f.write_text(json.dumps({"class_counts": [90, 40, 9]}))
    counts, _ = load_class_counts(str(f), tmp_path, ["a"], np.array([0]), 3, 0.1)
    assert counts.tolist() == [90, 40, 9]
    counts, note = load_class_counts(None, tmp_path, ["a"], np.array([0] * 9 + [1] * 4 + [2]), 3, 0.1)
    assert counts.tolist() == [90, 40, 10] and "estimated" in note


def _manifest(folder, experts: dict, version=2):
    folder.mkdir(parents=True, exist_ok=True)
    data = {"num_classes": 3, "experts": {e: {"splits": {}, **extra} for e, extra in experts.items()}}
    if version is not None:
        data["version"] = version
    (folder / "manifest.json").write_text(json.dumps(data))


def test_class_counts_come_from_the_experts_train_split_not_the_gating_split(tmp_path, capsys):
    """Class 1 has 30 train-LT images (head) but none in the gating split: an estimate from the
    gating split calls it tail (0 images); the manifest's train split keeps it head."""
    gating_targets = np.array([0] * 9 + [2])
    split = {"fingerprint": "f1", "class_counts": [90, 30, 10], "file": "/x/splits/class_counts.json"}
    _manifest(tmp_path, {"a": {"train_split": split}, "b": {"train_split": split}})
    counts, note = load_class_counts(None, tmp_path, ["a", "b"], gating_targets, 3, 0.1)
    assert counts.tolist() == [90, 30, 10] and "/x/splits/class_counts.json" in note
    assert ClassGroups(tuple(counts)).mask("head").tolist() == [True, True, False]
    estimated, _ = load_class_counts(None, tmp_path / "none", ["a"], gating_targets, 3, 0.1)
    assert ClassGroups(tuple(estimated)).mask("head").tolist() == [True, False, False]  # the boundary moved
    assert capsys.readouterr().out == ""  # no warning when the manifest has the counts


def test_an_older_manifest_falls_back_with_one_warning_and_a_bad_one_fails_in_one_line(tmp_path, capsys):
    _manifest(tmp_path / "v1", {"a": {}}, version=None)
    counts, note = load_class_counts(None, tmp_path / "v1", ["a"], np.array([0] * 9 + [1]), 3, 0.1)
    assert counts.tolist() == [90, 10, 0] and "estimated" in note
    warning = capsys.readouterr().out.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "records no train split" in warning[0]
    other = {"fingerprint": "f2", "class_counts": [1, 2, 3]}
    _manifest(tmp_path / "mixed", {"a": {"train_split": {"fingerprint": "f1", "class_counts": [1, 2, 3]}},
                                   "b": {"train_split": other}})
    assert "trained on different splits" in _error(load_class_counts, None, tmp_path / "mixed", ["a", "b"],
                                                    np.array([0]), 3, 0.1)
    _manifest(tmp_path / "bad", {"a": {"train_split": {"fingerprint": "f1", "class_counts": "many"}}})
    msg = _error(load_class_counts, None, tmp_path / "bad", ["a"], np.array([0]), 3, 0.1)
    assert "manifest.json: experts.a.train_split.class_counts:" in msg
    _manifest(tmp_path / "new", {"a": {}}, version=99)
    assert "newer than this engine reads" in _error(load_class_counts, None, tmp_path / "new", ["a"], np.array([0]), 3, 0.1)


def test_cli_fails_in_one_line_with_exit_code_2(tmp_path):
    root = _experts(tmp_path / "logits", C=10)
    out = engine(tmp_path, "train-gating", "--preset", "cifar100_lt_if100", "--logits-dir", str(root), "--experts", "a,b")
    assert out.returncode == 2
    (rd,) = run_dirs(tmp_path)
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "failed" and "preset cifar100_lt_if100 expects 100" in status["error"]
    assert out.stderr.strip().splitlines()[-1].startswith("failed: logits in")
    assert not list((rd / "checkpoints").iterdir())  # nothing half-written
    out = engine(tmp_path, "train-gating", "--logits-dir", str(root), "--experts", "a,a")
    assert out.returncode == 2 and "experts must be distinct" in out.stderr


def test_workspace_run_id_lookup_in_process_leaves_the_environment_alone(tmp_path, monkeypatch, capsys):
    """`engine ... --workspace W --logits-dir RUN_ID` finds the run in W/runs, and main() called in a
    process of its own restores $MOE_TUI_WORKSPACE afterwards."""
    from engine.cli import main

    monkeypatch.delenv("MOE_TUI_WORKSPACE", raising=False)
    ws = tmp_path / "ws"
    run = ws / "runs" / "251125-101500-0000"
    _experts(run / "artifacts" / "logits")
    (run / "run.json").write_text(json.dumps({"v": 1, "run_id": run.name, "kind": "recompute-logits"}))
    code = main(["train-gating", "--logits-dir", run.name, "--experts", "a,b", "--epochs", "1", "--warmup-epochs", "0",
                 "--test-split", "none", "--workspace", str(ws)])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert "MOE_TUI_WORKSPACE" not in os.environ
