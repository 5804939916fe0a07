"""train-gating and evaluate-gating end to end: real subprocesses, real run directories.

Synthetic experts (one right on the head classes, one on the tail) check that
the gate routes by group and beats both experts and their average; two tiny
real train-expert runs on the embedded digits check the whole chain from
checkpoints to the results table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.common.checkpoint import load_checkpoint
from engine.gating.config import TrainGatingConfig
from engine.gating.model import GatingMLP
from engine.gating.train_gating import batch_bounds, linear_warmup_cosine, make_optimizer
from tests.gating_synth import write_head_tail_experts, write_npz
from tests.helpers import TINY, engine, kill_workspace_processes, moe, read_events, run_dirs



def _ok(out):
    assert out.returncode == 0, out.stderr[-3000:]


def _results(rd: Path, stem: str = "results") -> dict:
    return json.loads((rd / "artifacts" / f"{stem}.json").read_text())


@pytest.fixture(scope="module")
def head_tail_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gating")
    logits = write_head_tail_experts(root / "logits")
    out = engine(root, "train-gating", "--logits-dir", str(logits), "--experts", "head_expert,tail_expert",
                 "--class-counts", str(logits / "class_counts.json"), "--epochs", "20", "--warmup-epochs", "1")
    _ok(out)
    (rd,) = run_dirs(root)
    return root, rd, out


def test_gate_routes_by_group_and_beats_experts_and_their_average(head_tail_run):
    _, rd, out = head_tail_run
    res = _results(rd)
    for split in ("val", "test"):
        t = res["tables"][split]
        baseline = max(t["head_expert"]["balanced_acc"], t["tail_expert"]["balanced_acc"], t["uniform"]["balanced_acc"])
        assert t["gate"]["balanced_acc"] > baseline + 0.3, t
        # the oracle bounds NLL (no mixture gives y more than the best expert's p_e(y)), not accuracy
        assert all(t["oracle"]["nll"] <= row["nll"] + 1e-6 for row in t.values()), t
        head_w, tail_w = res["load_by_group"][split]["head"], res["load_by_group"][split]["tail"]
        assert head_w[0] > 0.8 and tail_w[1] > 0.8  # head samples go to the head expert, tail to the tail one
        assert "gate routes" in res["verdicts"][split]
    assert "| gate |" in (rd / "artifacts" / "results.md").read_text()
    assert "gate routes on test" in out.stderr or "gate routes on test" in out.stdout


def test_run_directory_holds_the_per_epoch_record(head_tail_run):
    _, rd, _ = head_tail_run
    events = read_events(rd)
    epochs = [e for e in events if e["type"] == "epoch"]
    loads = [e for e in events if e["type"] == "expert_load"]
    assert len(epochs) == len(loads) == 20
    m = epochs[-1]["metrics"]
    for key in ("train/loss", "train/nll", "train/entropy", "train/resp_kl", "train/prior_kl", "train/mix_acc",
                "train/eff_experts", "routed_acc/head_expert",
                "val/head_acc", "val/tail_acc", "val/balanced_acc", "val/nll", "val/ece", "temperature", "lr"):
        assert key in m, key
    assert "train/lb" not in m  # load balancing belongs to the top-k router
    assert [e["metrics"]["temperature"] for e in (epochs[0], epochs[-1])] == pytest.approx([2.0, 0.7])
    assert not any(k.startswith(("load/", "top1/")) for k in m)  # expert load is the expert_load event alone
    assert [e["epoch"] for e in loads] == list(range(1, 21))
    assert loads[-1]["experts"] == ["head_expert", "tail_expert"]
    assert sum(loads[-1]["load"]) == pytest.approx(1, abs=1e-5) and sum(loads[-1]["top1_share"]) == pytest.approx(1)
    # the long-tailed gating split: most samples go to the head expert, the tail ones to the tail expert
    assert loads[-1]["load"][0] > 0.6 and 0.03 < loads[-1]["load"][1] < 0.4
    summary = next(e for e in events if e["type"] == "summary")["metrics"]
    assert summary["test/gate/balanced_acc"] == _results(rd)["tables"]["test"]["gate"]["balanced_acc"]
    history = json.loads((rd / "artifacts" / "training_history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 21))
    best = load_checkpoint(rd / "checkpoints" / "best_gating.pth")
    final = load_checkpoint(rd / "checkpoints" / "final_gating.pth")
    assert final["epoch"] == 20 and best["metrics"]["val/balanced_acc"] == max(h["val/balanced_acc"] for h in history)
    # Resumable: the optimiser's and the schedule's state load into fresh ones, at the end of epoch 20.
    cfg = TrainGatingConfig.model_validate(final["config"])
    model = GatingMLP(final["num_features"], 2, cfg.hidden, cfg.dropout)
    model.load_state_dict(final["model"])
    opt = make_optimizer(model, cfg)
    opt.load_state_dict(final["optimizer"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_cosine(cfg.warmup_epochs, cfg.epochs))
    sched.load_state_dict(final["scheduler"])
    steps = {float(state["step"]) for state in opt.state.values()}
    assert sched.last_epoch == 20 and steps == {20.0 * len(batch_bounds(len(_gating_targets(rd)), cfg.batch_size))}


def _gating_targets(rd: Path):
    inputs = json.loads((rd / "artifacts" / "inputs.json").read_text())
    return range(inputs["splits"]["gating"])


def test_evaluate_gating_reproduces_the_test_table(head_tail_run):
    root, rd, _ = head_tail_run
    out = engine(root, "evaluate-gating", rd.name, "--split", "test")
    _ok(out)
    ev = next(p for p in run_dirs(root) if p != rd)
    run = json.loads((ev / "run.json").read_text())
    assert run["kind"] == "evaluate-gating" and run["config"]["run"] == rd.name
    (load,) = [e for e in read_events(ev) if e["type"] == "expert_load"]
    assert load["epoch"] is None and load["experts"] == ["head_expert", "tail_expert"]
    assert sum(load["load"]) == pytest.approx(1, abs=1e-5)
    got = _results(ev, "results_test")["tables"]["test"]
    want = _results(rd)["tables"]["test"]
    for row in want:
        assert got[row] == pytest.approx(want[row], abs=1e-6), row


def test_evaluate_gating_bad_inputs(head_tail_run):
    root, rd, _ = head_tail_run
    out = engine(root, "evaluate-gating", "no-such-run")
    assert out.returncode == 2 and "no run 'no-such-run'" in out.stderr
    out = engine(root, "evaluate-gating", rd.name, "--split", "tunev")
    assert out.returncode == 2 and "no logits for split 'tunev'" in out.stderr


def test_queued_evaluation_finds_the_training_run_in_its_workspace(head_tail_run):
    root, rd, _ = head_tail_run
    try:
        sub = moe(root, "submit", "--", "evaluate-gating", rd.name, "--split", "val")
        assert sub.returncode == 0, sub.stderr
        done = moe(root, "wait", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        kill_workspace_processes(root)
    queued = [p for p in run_dirs(root) if (p / "artifacts" / "results_val.json").exists()]
    assert len(queued) == 1 and json.loads((queued[0] / "status.json").read_text())["state"] == "succeeded"
    got = _results(queued[0], "results_val")["tables"]["val"]["gate"]
    assert got == pytest.approx(_results(rd)["tables"]["val"]["gate"], abs=1e-6)


def test_top_k_router_trains_with_load_balancing(tmp_path):
    logits = write_head_tail_experts(tmp_path / "logits", scale=4)
    out = engine(tmp_path, "train-gating", "--preset", "quick", "--logits-dir", str(logits), "--router", "top_k",
                 "--top-k", "1", "--experts", "head_expert,tail_expert", "--test-split", "none")
    _ok(out)
    (rd,) = run_dirs(tmp_path)
    m = [e for e in read_events(rd) if e["type"] == "epoch"][-1]["metrics"]
    assert m["train/lb"] >= 1.0 - 1e-6  # E * sum f P is at least 1 (equality when balanced)
    assert m["train/eff_experts"] == pytest.approx(1.0)  # top-1: one expert per sample
    assert m["train/entropy"] == pytest.approx(0.0, abs=1e-6)
    assert set(_results(rd)["tables"]) == {"val"}  # test skipped on request


# --------------------------------------------------------------------------- #
# Two real experts trained on the embedded digits


def _write_expert_logits(run_dir: Path, out_dir: Path) -> dict:
    """What `engine recompute-logits` will do: the best checkpoint's logits per split, as npz."""
    from engine.longtail.config import TrainExpertConfig
    from engine.longtail.data.load import load_image_data
    from engine.longtail.expert import predict
    from engine.longtail.models.resnet_cifar import build_model
    from engine.longtail.data.feed import DeviceImages

    ckpt = load_checkpoint(run_dir / "checkpoints" / "best_ce.pth")
    cfg = TrainExpertConfig.model_validate(ckpt["config"])
    data = load_image_data(cfg)
    model = build_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"])
    model.load_state_dict(ckpt["model"])
    for split in ("gating", "val", "test"):
        logits, y = predict(model, DeviceImages(data.splits[split], torch.device("cpu"), data.mean, data.std))
        write_npz(out_dir / f"{split}_logits.npz", logits.numpy(), y.numpy())
    return ckpt


def test_real_digits_experts_give_the_full_table(tmp_path, finished_run_dir):
    torch.set_num_threads(1)
    second = engine(tmp_path / "experts", *TINY, "--seed", "1")
    _ok(second)
    (second_rd,) = run_dirs(tmp_path / "experts")
    logits = tmp_path / "logits"
    ckpts = {"ce_s0": _write_expert_logits(finished_run_dir, logits / "ce_s0"),
             "ce_s1": _write_expert_logits(second_rd, logits / "ce_s1")}
    out = engine(tmp_path, "train-gating", "--preset", "quick", "--logits-dir", str(logits), "--experts", "ce_s0,ce_s1",
                 "--class-counts", str(finished_run_dir / "artifacts" / "class_groups.json"))
    _ok(out)
    rd = next(p for p in run_dirs(tmp_path))
    res = _results(rd)
    for split in ("val", "test"):
        table = res["tables"][split]
        assert set(table) == {"ce_s0", "ce_s1", "uniform", "gate", "oracle"}
        for row in table.values():
            assert {"acc", "head_acc", "tail_acc", "balanced_acc", "nll", "ece"} <= set(row)
        assert all(table["oracle"]["nll"] <= row["nll"] + 1e-6 for row in table.values()), table
    # The single-expert rows are the experts' own scores: the same checkpoint, the same val split.
    for name, ckpt in ckpts.items():
        assert res["tables"]["val"][name]["balanced_acc"] == pytest.approx(ckpt["metrics"]["val/balanced_acc"], abs=1e-6)
        # Training evaluated in bf16 autocast where the CPU has AMX units; these logits are fp32.
        assert res["tables"]["val"][name]["nll"] == pytest.approx(ckpt["metrics"]["val/nll"], rel=5e-3)


def test_train_gating_reads_a_recompute_logits_run_by_id_or_directory(tmp_path, finished_run_dir):
    """A pipeline passes {run:logits} (the run directory); a person may pass the run id."""
    ws = tmp_path / "ws"
    _ok(engine(ws, "recompute-logits", "--experts", str(finished_run_dir), "--splits", "gating,val,test"))
    (logits_rd,) = run_dirs(ws)
    common = ["--preset", "quick", "--epochs", "2", "--experts", "ce"]
    _ok(engine(ws, "train-gating", "--logits-dir", logits_rd.name, *common))
    _ok(engine(ws, "train-gating", "--logits-dir", str(logits_rd), *common))
    manifest = json.loads((logits_rd / "artifacts" / "logits" / "manifest.json").read_text())
    trained_on = json.loads((finished_run_dir / "artifacts" / "splits" / "class_counts.json").read_text())["train_lt"]
    assert manifest["version"] == 2 and manifest["experts"]["ce"]["train_split"]["class_counts"] == trained_on
    assert manifest["experts"]["ce"]["train_split"]["file"] == str(
        (finished_run_dir / "artifacts" / "splits" / "class_counts.json").resolve())
    gates = [rd for rd in run_dirs(ws) if rd != logits_rd]
    for rd in gates:
        inputs = json.loads((rd / "artifacts" / "inputs.json").read_text())
        assert inputs["logits_dir"] == str(logits_rd / "artifacts" / "logits")
        assert inputs["class_counts"].startswith("class counts of the experts' train split")
        assert load_checkpoint(rd / "checkpoints" / "final_gating.pth")["class_counts"] == trained_on
        assert set(_results(rd)["tables"]["test"]) == {"ce", "uniform", "gate", "oracle"}
    out = engine(ws, "train-gating", "--logits-dir", str(finished_run_dir), *common)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        f"failed: --logits-dir {finished_run_dir} is a train-expert run (succeeded) with no artifacts/logits; "
        "pass a recompute-logits run that has succeeded, or the logits folder itself")
