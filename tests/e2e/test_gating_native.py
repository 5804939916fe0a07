"""The C kernels of the gating step (engine/gating/kernels.c) against the torch step they stand in for."""

from __future__ import annotations

import copy
import json
import subprocess

import numpy as np
import pytest
import torch

from engine.gating import native
from engine.gating.backprop import AdamW, FlatParams, Step, clip_scale
from engine.gating.config import TrainGatingConfig
from engine.gating.loss_grad import EpochLoss
from engine.gating.model import GatingMLP, keep_masks
from engine.gating.native_step import NativeStep
from engine.gating.train_gating import batch_bounds
from tests.gating_synth import write_head_tail_experts
from tests.helpers import BIN, engine, env_for, run_dirs

N, D, E, G, BATCH = 100, 9, 4, 2, 32  # 100 = 32 + 32 + 36 rows: the last batch is longer

CASES = [
    ("dense", {}),
    ("dense", {"resp_temperature": 0.5, "dropout": 0.0}),
    ("dense", {"lambda_entropy": 0.0, "lambda_resp": 0.0, "lambda_prior": 0.0}),
    ("top_k", {"top_k": 2}),
    ("top_k", {"top_k": 1, "resp_temperature": 0.7}),
    ("top_k", {"top_k": 3, "noise_std": 0.0, "lambda_lb": 0.0}),
]


def epoch_inputs(cfg: TrainGatingConfig, seed: int = 0):
    """One epoch's x, masks and EpochLoss twice over (one per step), float32 as in the job."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    logp = torch.randn(N, E, 10, generator=g).log_softmax(-1)[..., 0]
    sw = torch.rand(N, generator=g) + 0.5
    group = torch.randint(0, G, (N,), generator=g)
    log_prior = torch.randn(G, E, generator=g).log_softmax(-1)
    noise = torch.randn(N, E, generator=g) if cfg.router == "top_k" else None
    bounds = batch_bounds(N, BATCH)
    keep = keep_masks(np.random.default_rng(seed), N, cfg.hidden, cfg.dropout) if cfg.dropout > 0 else None

    def loss():
        return EpochLoss(cfg, logp, sw, group, G, bounds, log_prior, 1.3, noise)

    return x, keep, bounds, loss


def batches(x, keep, bounds):
    sizes = [b - a for a, b in bounds]
    return list(zip(x.split(sizes), keep.split(sizes) if keep is not None else [None] * len(sizes)))


def run_native(step, opt, cfg, x, keep, bounds, loss, batches_run=None):
    nat = NativeStep(step, opt, cfg.grad_clip, max_rows=max(b - a for a, b in bounds))
    nat.begin_epoch(loss, x, keep.keep if keep else None, keep.scale if keep else 1.0)
    nat.batches(0, len(bounds[:batches_run]))
    nat.end_epoch()


def twins(cfg: TrainGatingConfig):
    """The torch step and the native one, on two copies of one model."""
    torch.manual_seed(0)
    model = GatingMLP(D, E, cfg.hidden, cfg.dropout)
    sides = []
    for m in (model, copy.deepcopy(model)):
        params = FlatParams(m)
        sides.append((params, Step(m, params), AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)))
    return sides


@pytest.mark.parametrize("router,over", CASES)
def test_native_epoch_matches_the_torch_step(router, over):
    """Three batches (one of them longer): parameters, optimiser state and the loss's
    per-epoch buffers (which the epoch's term values come from) agree with the torch step."""
    cfg = TrainGatingConfig(logits_dir="x", experts=[f"e{i}" for i in range(E)], router=router, hidden=[24, 16],
                            lr=1e-2, weight_decay=0.3, grad_clip=0.05, **{"lambda_lb": 0.5, "lambda_prior": 0.4, **over})
    x, keep, bounds, make_loss = epoch_inputs(cfg)
    (p_ref, step, opt_ref), (p_nat, step_nat, opt_nat) = twins(cfg)
    loss_ref, loss_nat = make_loss(), make_loss()

    for b, (xb, mb) in enumerate(batches(x, keep, bounds)):
        step.backward(loss_ref.grad(b, step.forward(xb, mb)))
        opt_ref.step(clip_scale(p_ref.grad, cfg.grad_clip))
    run_native(step_nat, opt_nat, cfg, x, keep, bounds, loss_nat)

    close = dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p_nat.data, p_ref.data, **close)
    torch.testing.assert_close(opt_nat.exp_avg, opt_ref.exp_avg, **close)
    torch.testing.assert_close(opt_nat.exp_avg_sq, opt_ref.exp_avg_sq, rtol=1e-4, atol=1e-9)
    assert int(opt_nat.step_t) == int(opt_ref.step_t) == len(bounds)
    torch.testing.assert_close(loss_nat.terms(), loss_ref.terms(), **close)
    lb = router == "top_k" and cfg.lambda_lb > 0
    written = {"weights": True, "mean_w": cfg.lambda_prior > 0, "slots": lb, "dense_mean": lb,
               "resp": cfg.lambda_resp > 0 and cfg.resp_temperature != 1.0}  # the others are never read
    for name in (name for name, on in written.items() if on):
        torch.testing.assert_close(getattr(loss_nat, name), getattr(loss_ref, name), **close, msg=name)
    assert sum(written.values()) > 1 or cfg.lambda_prior == 0


def test_one_step_gradient_matches_with_clipping_off_and_on():
    """The flat gradient after one batch (before AdamW consumes it, clipping divides it in place)."""
    for clip in (1e6, 1e-3):
        cfg = TrainGatingConfig(logits_dir="x", experts=[f"e{i}" for i in range(E)], router="top_k",
                                hidden=[24, 16], grad_clip=clip)
        x, keep, bounds, make_loss = epoch_inputs(cfg, seed=3)
        (p_ref, step, opt_ref), (p_nat, step_nat, opt_nat) = twins(cfg)
        xb, mb = batches(x, keep, bounds)[0]
        step.backward(make_loss().grad(0, step.forward(xb, mb)))
        scale = clip_scale(p_ref.grad, cfg.grad_clip)
        opt_ref.step(scale)
        run_native(step_nat, opt_nat, cfg, x, keep, bounds, make_loss(), batches_run=1)
        torch.testing.assert_close(p_nat.grad, p_ref.grad, rtol=1e-4, atol=1e-7)  # both divided by the clip scale
        assert (float(scale) > 1.0) == (clip < 1.0)


def _history(ws):
    (rd,) = run_dirs(ws)
    return rd, json.loads((rd / "artifacts" / "training_history.json").read_text())


def test_the_c_step_and_the_torch_step_train_the_same_gate(tmp_path):
    """The whole job either way: per-epoch losses and val metrics agree (the same products, the
    same random draws; only the order of a few float32 sums differs)."""
    logits = write_head_tail_experts(tmp_path / "logits")
    histories = {}
    for cpu_step in ("c", "torch"):
        ws = tmp_path / cpu_step
        out = engine(ws, "train-gating", "--logits-dir", str(logits), "--experts", "head_expert,tail_expert",
                     "--class-counts", str(logits / "class_counts.json"), "--epochs", "4", "--warmup-epochs", "1",
                     "--router", "top_k", "--top-k", "1", "--cpu-step", cpu_step)
        assert out.returncode == 0, out.stderr[-2000:]
        assert ("step: C kernels" in out.stdout) == (cpu_step == "c"), out.stdout
        histories[cpu_step] = _history(ws)[1]
    for ours, ref in zip(histories["c"], histories["torch"], strict=True):
        for key in ("train/loss", "train/nll", "train/lb", "train/prior_kl", "val/balanced_acc", "val/nll"):
            assert ours[key] == pytest.approx(ref[key], rel=1e-3, abs=1e-5), (ours["epoch"], key)


def test_without_a_compiler_auto_says_so_and_c_fails_in_one_line(tmp_path):
    logits = write_head_tail_experts(tmp_path / "logits", scale=2)
    args = ["train-gating", "--logits-dir", str(logits), "--experts", "head_expert,tail_expert",
            "--class-counts", str(logits / "class_counts.json"), "--epochs", "1", "--warmup-epochs", "0"]
    no_cc = env_for(tmp_path, CC="/nonexistent/cc", MOE_TUI_CACHE=str(tmp_path / "cache"))

    def run(ws, *extra):
        return subprocess.run([str(BIN / "engine"), *args, *extra, "--workspace", str(ws)], capture_output=True,
                              text=True, timeout=300, env={**no_cc, "MOE_TUI_WORKSPACE": str(ws)},
                              stdin=subprocess.DEVNULL)

    out = run(tmp_path / "auto")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "step: torch ops, about 2x slower on the CPU (C compiler '/nonexistent/cc' failed to run" in out.stdout

    out = run(tmp_path / "c", "--cpu-step", "c")
    assert out.returncode != 0
    error = out.stderr.strip().splitlines()[-1]
    assert "--cpu-step c: C compiler '/nonexistent/cc' failed to run" in error and "--cpu-step torch" in error
    (rd,) = run_dirs(tmp_path / "c")
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "failed" and "--cpu-step c" in status["error"]
