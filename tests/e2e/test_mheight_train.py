"""m-height models and jobs on tiny generated data: train, finetune, evaluate, symmetry handling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.common.checkpoint import load_checkpoint
from engine.mheight.data import augment, canonicalize, feature_dim
from tests.helpers import engine, epoch_events, read_events, run_dirs

QUICK = ["--preset", "quick", "--epochs", "2"]


def _train(ws, data_run, *args):
    out = engine(ws, "mheight", "train", *QUICK, "--data", str(data_run), *args)
    return out, run_dirs(ws)[-1]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_run):
    """Single models trained once for the module: two fc (seeds 1, 2) and a resnet2d."""
    ws = tmp_path_factory.mktemp("mhpre")
    runs = {}
    for name, args in {"fc1": ("--model", "fc", "--seed", "1"), "fc2": ("--model", "fc", "--seed", "2"),
                       "resnet2d": ("--model", "resnet2d")}.items():
        out, rd = _train(ws, data_run, *args)
        assert out.returncode == 0, out.stderr
        runs[name] = rd
    return runs


@pytest.mark.parametrize("model", ["fc", "resnet2d", "vit", "hard_moe", "sparse_moe"])
def test_every_model_trains_and_logs_group_metrics(tmp_path, data_run, pretrained, model):
    if model in ("fc", "resnet2d"):
        rd = pretrained["fc1" if model == "fc" else model]
    else:
        out, rd = _train(tmp_path, data_run, "--model", model)
        assert out.returncode == 0, out.stderr
    epochs = epoch_events(rd)
    assert len(epochs) == 2
    m = epochs[-1]["metrics"]
    groups = [k for k in m if k.startswith("val/log2_mse_n")]
    assert {"val/log2_mse_n6k3m1", "val/log2_mse_n7k3m4"} <= set(groups)
    # the headline is the mean over (n, k, m) groups, as the grader scores it
    assert m["val/log2_mse"] == pytest.approx(np.mean([m[k] for k in groups]), rel=1e-5)
    ckpt = load_checkpoint(rd / "checkpoints" / "best.pth")
    assert ckpt["spec"]["model"] == model and ckpt["scale"] == 100.0
    loads = [e for e in read_events(rd) if e["type"] == "expert_load"]
    if model.endswith("moe"):
        assert len(loads) == 2
        experts = 2 if model == "hard_moe" else 6  # hard: one per (n, k) pair
        assert len(loads[0]["load"]) == experts and sum(loads[0]["load"]) == pytest.approx(1.0, abs=1e-5)
        names = ["n6k3", "n7k3"] if model == "hard_moe" else [f"e{i}" for i in range(6)]
        assert loads[0]["experts"] == names
        assert not [k for k in m if k.startswith("load/")]  # the event alone carries the load
    else:
        assert not loads


def test_training_reduces_the_loss(tmp_path, data_run):
    out, rd = _train(tmp_path, data_run, "--model", "fc", "--epochs", "8", "--hidden", "128")
    assert out.returncode == 0, out.stderr
    losses = [e["metrics"]["train/log2_mse"] for e in epoch_events(rd)]
    assert losses[-1] < 0.9 * losses[0]
    summary = [e for e in read_events(rd) if e["type"] == "summary"][0]["metrics"]
    assert summary["val/log2_mse_group_mean_baseline"] > 0 and summary["predict_per_s"] > 0


def test_an_untrained_model_predicts_the_per_group_training_mean(tmp_path, data_run):
    from engine.mheight.data import CodeSet
    from engine.mheight.fit import group_means, load_split, predict
    from engine.mheight.models import build, model_spec
    from engine.core.config import resolve

    cfg = resolve("mheight-train", preset="quick", fields={"data": str(data_run), "model": "fc"})
    train_l, _ = load_split(cfg)
    train = CodeSet.from_labels(train_l, train_l.finite_groups(), 100.0, True, torch.device("cpu"))
    model = build(model_spec(cfg, "fc", []))
    torch.nn.init.zeros_(model.net.head.weight), torch.nn.init.zeros_(model.net.head.bias)
    means, _ = group_means(train)
    model.set_group_means(means, 1.0)
    pred, _, group = train.flat(predict(model, train))
    want = torch.tensor([means[train.groups[g]] for g in group.tolist()])
    assert len(pred) == train.labels > len(train) and torch.allclose(pred, want, atol=1e-4)


def test_finetune_starts_from_the_pretrained_experts_then_evaluate(tmp_path, data_run, pretrained):
    ws = tmp_path / "ws"
    experts = [pretrained["fc1"], pretrained["fc2"]]

    from engine.mheight.finetune import load_experts
    from engine.mheight.models import build

    spec, states, base, scale, canonical = load_experts([str(e) for e in experts], torch.device("cpu"))
    moe = build({"model": "sparse_moe", "expert": spec, "pairs": [], "num_experts": 2, "top_k": 2, "gate_hidden": 128})
    for e, st in enumerate(states):
        moe.net.experts[e].load_state_dict(st)
    single = build({"model": "fc", "expert": spec, "pairs": []})
    single.load_state_dict(load_checkpoint(experts[1] / "checkpoints" / "best.pth")["model"])
    single.eval(), moe.eval()
    P, feats = torch.randn(4, 6, 6), torch.randn(4, feature_dim())
    k, r = torch.full((4,), 3), torch.full((4,), 3)
    assert torch.allclose(moe.net.experts[1](P, feats, k, r), single.net(P, feats, k, r))

    out = engine(ws, "mheight", "finetune", *QUICK, "--experts", f"{experts[0]},{experts[1]}", "--data", str(data_run))
    assert out.returncode == 0, out.stderr
    ft = run_dirs(ws)[-1]
    assert json.loads((ft / "status.json").read_text())["state"] == "succeeded"
    assert load_checkpoint(ft / "checkpoints" / "best.pth")["spec"]["model"] == "sparse_moe"
    assert len([e for e in read_events(ft) if e["type"] == "expert_load"]) == 2

    out = engine(ws, "mheight", "evaluate", str(ft), "--data", str(data_run))
    assert out.returncode == 0, out.stderr
    ev = run_dirs(ws)[-1]
    summary = [e for e in read_events(ev) if e["type"] == "summary"][0]["metrics"]
    with np.load(ev / "artifacts" / "predictions.npz", allow_pickle=False) as z:
        se = (z["prediction"] - z["target"]) ** 2
        groups = {(n, k, m) for n, k, m in zip(z["n"], z["k"], z["m"])}
        per = [se[(z["n"] == n) & (z["k"] == k) & (z["m"] == m)].mean() for n, k, m in groups]
    assert summary["test/log2_mse"] == pytest.approx(float(np.mean(per)), rel=1e-5)
    assert summary["infinite_labels_skipped"] > 0  # m = n-k has singular-minor codes


def test_finetune_refuses_mixed_architectures(tmp_path, data_run, pretrained):
    ws = tmp_path / "ws"
    a, b = pretrained["fc1"], pretrained["resnet2d"]
    out = engine(ws, "mheight", "finetune", *QUICK, "--experts", f"{a},{b}", "--data", str(data_run))
    assert out.returncode == 2
    assert "differ in architecture (fc vs resnet2d)" in out.stderr.strip().splitlines()[-1]


def test_finetune_names_the_option_its_fc_experts_differ_in(tmp_path, pretrained):
    """Two fc experts, one trained with --no-norm: the refusal used to say they differ in architecture
    ('fc vs others') and to train them with the same --model, which they had."""
    from engine.common.checkpoint import save_checkpoint
    from engine.mheight.finetune import load_experts
    from engine.core.errors import JobError

    a = pretrained["fc1"] / "checkpoints" / "best.pth"
    ckpt = load_checkpoint(a)
    ckpt["spec"]["expert"]["norm"] = False
    save_checkpoint(ckpt, tmp_path / "no_norm.pth")
    with pytest.raises(JobError, match=r"differ in norm \(True vs False\); train them with the same --model, sizes and options$"):
        load_experts([str(a), str(tmp_path / "no_norm.pth")], torch.device("cpu"))


def test_hard_moe_refuses_an_unknown_pair_and_bad_data_paths(tmp_path, data_run):
    ws = tmp_path / "ws"
    out, rd = _train(ws, data_run, "--model", "hard_moe", "--pairs", "6x3", "--epochs", "1")
    assert out.returncode == 0, out.stderr
    out = engine(ws, "mheight", "evaluate", str(rd), "--data", str(data_run))
    assert out.returncode == 2
    assert "hard_moe has experts for (n, k) in [(6, 3)] only; the data holds [(7, 3)]" in out.stderr
    out = engine(ws, "mheight", "train", "--data", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_canonical_form_is_shared_by_a_codes_signed_permutations():
    g = torch.Generator().manual_seed(0)
    P = torch.zeros(64, 6, 6)
    P[:, :4, :5] = torch.randn(64, 4, 5, generator=g)
    k, r = torch.full((64,), 4), torch.full((64,), 5)
    moved = augment(P, k, r, g)
    assert not torch.allclose(moved, P)
    assert (moved[:, 4:] == 0).all() and (moved[:, :, 5:] == 0).all()  # padding stays padding
    assert torch.allclose(moved.abs().flatten(1).sort(1).values, P.abs().flatten(1).sort(1).values)
    assert torch.allclose(canonicalize(moved), canonicalize(P))


def test_augmented_codes_keep_their_height():
    from engine.mheight.solver import heights_batch

    g = torch.Generator().manual_seed(1)
    P = torch.zeros(8, 6, 6, dtype=torch.float64)
    P[:, :4, :5] = torch.randint(-100, 101, (8, 4, 5), generator=g).double()
    moved = augment(P, torch.full((8,), 4), torch.full((8,), 5), g)
    a = heights_batch(P[:, :4, :5], [2, 3, 4])
    b = heights_batch(moved[:, :4, :5], [2, 3, 4])
    assert torch.allclose(a, b, rtol=1e-10) and math.isfinite(float(a.sum()))


def test_minor_features_are_log_determinants_of_square_submatrices():
    from engine.mheight.data import MINOR_STATS, input_features

    P = np.zeros((1, 6, 6), dtype=np.float32)
    P[0, :2, :2] = [[1, 2], [3, 4]]  # 1x1 minors 1, 2, 3, 4; the 2x2 minor -2
    f = input_features(P, np.array([4]), np.array([2]), True)[0, feature_dim():] * 10
    logs = np.log2([1, 2, 3, 4])
    # min, mean, std; log2 is approximated to within 0.086 (exact at powers of 2)
    assert f[:MINOR_STATS].tolist() == pytest.approx([logs.min(), logs.mean(), logs.std()], abs=0.09)
    assert f[0] == 0.0 and f[MINOR_STATS:2 * MINOR_STATS].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-6)
    assert (f[2 * MINOR_STATS:] == 0).all()  # no 3x3 minors in a 2 x 2 P


def test_columns_constant_in_training_are_centred_not_scaled():
    """An expert trained on one (n, k) (--pairs) sees constant pair columns; scaled by 1 / (0 + 1e-3) they
    reached its first layer 1,000x too large for any other (n, k), and a sparse MoE fine-tuned from two
    such --no-norm experts started at a train Log2-MSE of 83 (2.7 with the columns only centred)."""
    from engine.mheight.data import input_features
    from engine.mheight.models import Standardize

    P = np.zeros((64, 6, 6), dtype=np.float32)
    P[:, :3, :4] = np.random.default_rng(0).integers(-100, 101, (64, 3, 4))
    seen = torch.from_numpy(input_features(P, np.full(64, 6), np.full(64, 3), True))  # 6x3 only
    other = torch.from_numpy(input_features(P, np.full(64, 7), np.full(64, 3), True))
    inputs = Standardize(seen.shape[1])
    inputs.set(seen)
    F0 = feature_dim()
    torch.testing.assert_close((other[:, :F0] - inputs.mean[:F0]) * inputs.inv_std[:F0], other[:, :F0] - seen[:, :F0])


def test_train_and_evaluate_with_minor_features(tmp_path, data_run):
    from engine.common.checkpoint import save_checkpoint
    from engine.mheight.data import MINOR_FEATURE_VERSION

    out, rd = _train(tmp_path, data_run, "--model", "fc", "--minor-features")
    assert out.returncode == 0, out.stderr
    best = rd / "checkpoints" / "best.pth"
    ckpt = load_checkpoint(best)
    assert ckpt["minor_features"] and ckpt["spec"]["expert"]["fdim"] > feature_dim()
    assert ckpt["minor_feature_version"] == MINOR_FEATURE_VERSION
    out = engine(tmp_path, "mheight", "evaluate", str(rd), "--data", str(data_run))
    assert out.returncode == 0, out.stderr
    summary = [e for e in read_events(run_dirs(tmp_path)[-1]) if e["type"] == "summary"][0]["metrics"]
    assert summary["input_seconds"] > 0 and summary["forward_seconds"] > 0 and math.isfinite(summary["test/log2_mse"])

    # a checkpoint from before feature versions (version 1 features) is refused in one line, for
    # evaluation and as a fine-tuning expert: its model would read numbers it never saw
    del ckpt["minor_feature_version"]
    save_checkpoint(ckpt, best)
    for args in (("evaluate", str(rd), "--data", str(data_run)),
                 ("finetune", *QUICK, "--data", str(data_run), "--experts", f"{rd},{rd}")):
        out = engine(tmp_path, "mheight", *args)
        assert out.returncode != 0
        err = [ln for ln in out.stderr.splitlines() if "minor features version 1" in ln]
        assert len(err) == 1 and f"computes version {MINOR_FEATURE_VERSION}: retrain it" in err[0], out.stderr
