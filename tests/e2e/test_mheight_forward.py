"""The m-height prediction paths: per-code outputs, sparse dispatch, forward.c against torch, model formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.common.checkpoint import load_checkpoint, save_checkpoint
from engine.mheight.data import MAX_M, MINOR_FEATURES, feature_dim
from engine.mheight.models import build, set_input_stats
from tests.helpers import engine, read_events, run_dirs

FDIM = feature_dim() + MINOR_FEATURES


def _model(model="sparse_moe", experts=4, top_k=2, hidden=16, depth=2, p_input=False, norm=False, act="relu",
           gate_hidden=0, seed=0, base_scale=1.0):
    torch.manual_seed(seed)
    expert = {"arch": "fc", "fdim": FDIM, "p_input": p_input, "norm": norm, "act": act, "hidden": hidden, "depth": depth}
    m = build({"model": model, "expert": expert, "pairs": [], "num_experts": experts, "top_k": top_k,
               "gate_hidden": gate_hidden})
    g = torch.Generator().manual_seed(seed)
    N = 203  # not a multiple of forward.c's blocks
    inputs = (torch.randn(N, 6, 6, generator=g), torch.randn(N, FDIM, generator=g) * 3 + 1,
              torch.randint(2, 7, (N,), generator=g), torch.randint(2, 7, (N,), generator=g))
    set_input_stats(m, inputs[0], inputs[1])
    with torch.no_grad():
        m.group_base.normal_(generator=g).mul_(base_scale)
        if model == "sparse_moe":
            m.net.log_temp.fill_(0.4)  # a temperature other than 1, folded into forward.c's gate
    return m.eval(), inputs


CASES = [dict(model="fc", hidden=16), dict(model="fc", hidden=24, depth=3, p_input=True), dict(top_k=2),
         dict(top_k=1, hidden=32, depth=1), dict(experts=3, top_k=2, hidden=24, depth=3, p_input=True),
         dict(experts=2, top_k=2), dict(model="fc", base_scale=40.0)]  # softplus far into both tails


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_the_c_forward_pass_is_the_torch_one(case):
    from engine.fast.forward import CForward

    model, inputs = _model(**case)
    with torch.inference_mode():
        want = model(*inputs)
        got = CForward(model)(*inputs)
    assert got.shape == want.shape == (len(inputs[1]), MAX_M)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [dict(model="fc"), dict(top_k=1), dict(top_k=2)], ids=["fc", "top1", "top2"])
def test_the_c_forward_pass_keeps_nans_where_torch_does(case):
    """A NaN input or weight (a diverged last.pth) must come out NaN, as in torch: the C ReLU and
    softplus used to turn it into 0 and ln 2, so a broken model scored like a working one."""
    from engine.fast.forward import CForward

    model, (P, feats, k, r) = _model(**case)
    feats = feats.clone()
    feats[:5, 0] = float("nan")
    with torch.no_grad():
        broken = model.net if case.get("model") == "fc" else model.net.experts[1]
        broken.head.weight[3, 0] = float("nan")
    with torch.inference_mode():
        want = model(P, feats, k, r)
        got = CForward(model)(P, feats, k, r)
    assert want.isnan().any(1).sum() > 5  # the NaN inputs, and the codes the broken expert saw
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_sparse_dispatch_is_the_dense_mixture():
    """Inference runs each expert on its routed codes only; training runs all and mixes by the
    sparse weights. Both are the same function of the inputs."""
    for top_k in (1, 2):
        model, inputs = _model(top_k=top_k, experts=4, norm=True, act="gelu")
        with torch.no_grad():
            sparse = model.eval()(*inputs)
            load = model.net.last_load.clone()
            dense = model.train()(*inputs)
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
        assert load.sum() == pytest.approx(1.0) and (load > 0).sum() >= 2


def test_what_the_c_path_covers_and_what_falls_back(monkeypatch, capsys):
    from engine.fast import forward
    from engine.fast.builder import KernelUnavailable
    from engine.fast.forward import forward_for

    assert forward.unsupported(_model()[0]) is None
    assert "LayerNorm" in forward.unsupported(_model(norm=True)[0])
    assert "GELU" in forward.unsupported(_model(act="gelu")[0])
    assert "gate MLP" in forward.unsupported(_model(gate_hidden=8)[0])
    assert isinstance(forward_for(_model()[0], "auto", "cpu"), forward.CForward)
    assert capsys.readouterr().out == "forward: C (engine/fast/forward.c)\n"
    slow = _model(model="fc", norm=True)[0]
    assert forward_for(slow, "auto", "cpu") is None and "forward: torch (forward.c does not cover" in capsys.readouterr().out
    assert forward_for(_model()[0], "off", "cpu") is None
    assert capsys.readouterr().out == "forward: torch (--cpu-kernels off, device cpu)\n"
    assert forward_for(_model()[0], "auto", "cuda") is None  # a GPU runs the torch modules
    assert capsys.readouterr().out == "forward: torch (--cpu-kernels auto, device cuda)\n"

    def no_compiler():
        raise KernelUnavailable("C compiler 'cc' failed to run")

    monkeypatch.setattr(forward, "_kernel", no_compiler)
    assert forward_for(_model()[0], "auto", "cpu") is None
    assert capsys.readouterr().out == "forward: torch (C compiler 'cc' failed to run)\n"


@pytest.mark.parametrize("kernels", ["auto", "off"])
def test_minor_stats_read_padded_codes_and_write_into_wider_rows(kernels):
    from engine.fast.minors import minor_stats

    rng = np.random.default_rng(3)
    padded = np.zeros((37, 6, 6), dtype=np.float32)
    padded[:, :4, :5] = rng.integers(-100, 101, (37, 4, 5))
    want = minor_stats(np.ascontiguousarray(padded[:, :4, :5]), kernels) * np.float32(0.1)
    out = np.full((37, 40), 7.0, dtype=np.float32)
    minor_stats(padded[:, :4, :5], kernels, out=out[:, 5:5 + want.shape[1]], scale=0.1)
    np.testing.assert_array_equal(out[:, 5:5 + want.shape[1]], want)
    assert (out[:, :5] == 7).all() and (out[:, 5 + want.shape[1]:] == 7).all()  # nothing written beside it


FAST = ["--model", "fc", "--minor-features", "--no-p-input", "--act", "relu", "--no-norm", "--hidden", "16",
        "--depth", "2", "--preset", "quick", "--epochs", "2"]


def _summary(rd):
    return [e for e in read_events(rd) if e["type"] == "summary"][0]["metrics"]


def test_evaluate_predicts_the_same_through_c_and_torch(tmp_path, data_run):
    out = engine(tmp_path, "mheight", "train", *FAST, "--data", str(data_run))
    assert out.returncode == 0, out.stderr
    trained = run_dirs(tmp_path)[-1]
    preds = {}
    for impl in ("auto", "off"):
        out = engine(tmp_path, "mheight", "evaluate", str(trained), "--data", str(data_run), "--cpu-kernels", impl)
        assert out.returncode == 0, out.stderr
        assert ("forward: C" in out.stdout) == (impl == "auto")
        rd = run_dirs(tmp_path)[-1]
        with np.load(rd / "artifacts" / "predictions.npz") as z:
            preds[impl] = {k: z[k] for k in z.files}
        s = _summary(rd)
        assert s["predict_per_s"] > 0 and s["input_seconds"] > 0 and s["forward_seconds"] > 0
    for key in ("n", "k", "m", "target"):
        np.testing.assert_array_equal(preds["auto"][key], preds["off"][key])
    # off: the minor features in numpy too (within float32 rounding of C's), the forward pass in torch
    np.testing.assert_allclose(preds["auto"]["prediction"], preds["off"]["prediction"], rtol=1e-4, atol=1e-4)
    assert len(preds["auto"]["m"]) == (~np.isinf(preds["auto"]["target"])).sum() > 0


def test_bad_fast_options_get_one_line(tmp_path, data_run):
    cases = [(["--no-p-input"], "--no-p-input leaves the model nothing but (n, k) to read: add --minor-features"),
             (["--model", "resnet2d", "--no-p-input", "--minor-features"], "--no-p-input needs fc (resnet2d reads P"),
             (["--model", "sparse_moe", "--no-p-input", "--minor-features"], "or --expert-arch fc for sparse_moe")]
    for args, message in cases:
        out = engine(tmp_path, "mheight", "train", "--data", str(data_run), *args)
        assert out.returncode == 2 and message in out.stderr.strip().splitlines()[-1], out.stderr


def test_a_per_label_checkpoint_is_refused_in_one_line(tmp_path, data_run):
    """Format 1 models took m as an input and gave one output: evaluate and finetune refuse them."""
    out = engine(tmp_path, "mheight", "train", *FAST, "--data", str(data_run))
    assert out.returncode == 0, out.stderr
    rd = run_dirs(tmp_path)[-1]
    best = rd / "checkpoints" / "best.pth"
    ckpt = load_checkpoint(best)
    assert ckpt["model_format"] == 2
    del ckpt["model_format"]
    save_checkpoint(ckpt, best)
    for args in (("evaluate", str(rd), "--data", str(data_run)),
                 ("finetune", "--preset", "quick", "--data", str(data_run), "--experts", f"{rd},{rd}")):
        out = engine(tmp_path, "mheight", *args)
        assert out.returncode == 2, out.stderr
        assert "is an m-height model of format 1 (one forward pass per label)" in out.stderr.strip().splitlines()[-1]
        assert run_dirs(tmp_path)[-1] != rd
