"""The hand-written gating step against autograd and torch.optim: same values, same gradients, same updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.gating.backprop import AdamW, FlatParams, Step, clip_scale
from engine.gating.config import TrainGatingConfig
from engine.gating.loss_grad import EpochLoss
from engine.gating.model import GatingMLP, keep_masks
from engine.gating.losses import gating_loss
from engine.gating.train_gating import batch_bounds

B, E, G = 64, 4, 2


def batch(seed: int, one_group: bool = False):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(B, E, 10, generator=g, dtype=torch.float64).log_softmax(-1)[..., 0]
    sw = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    group = torch.zeros(B, dtype=torch.int64) if one_group else torch.randint(0, G, (B,), generator=g)
    log_prior = torch.randn(G, E, generator=g, dtype=torch.float64).log_softmax(-1)
    z = 2 * torch.randn(B, E, generator=g, dtype=torch.float64)
    return z, logp, sw, group, log_prior


def autograd_reference(z, logp, sw, group, log_prior, cfg, temperature, noise_seed):
    """gating_loss: term by term from engine.gating.losses, differentiated by autograd."""
    z = z.clone().requires_grad_(True)
    onehot = torch.nn.functional.one_hot(group, G).to(z.dtype)
    total, terms = gating_loss(z, (None, logp, sw, onehot), cfg, temperature, log_prior,
                               torch.Generator().manual_seed(noise_seed))
    total.backward()
    return total.detach(), terms, z.grad


CASES = [
    ("dense", {}),
    ("dense", {"resp_temperature": 0.5}),
    ("dense", {"lambda_entropy": 0.0, "lambda_resp": 0.0, "lambda_prior": 0.0}),
    ("top_k", {"top_k": 2}),
    ("top_k", {"top_k": 1, "resp_temperature": 0.7}),
    ("top_k", {"top_k": 3, "noise_std": 0.0}),
]


@pytest.mark.parametrize("router,over", CASES)
@pytest.mark.parametrize("one_group", [False, True])
def test_closed_form_loss_and_gradient_match_autograd(router, over, one_group):
    cfg = TrainGatingConfig(logits_dir="x", experts=[f"e{i}" for i in range(E)], router=router,
                            **{"lambda_entropy": 0.3, "lambda_resp": 0.2, "lambda_prior": 0.4, "lambda_lb": 0.5, **over})
    z, logp, sw, group, log_prior = batch(1, one_group=one_group)
    temperature = 1.3
    total, terms, grad = autograd_reference(z, logp, sw, group, log_prior, cfg, temperature, noise_seed=7)
    # the router's noise as gating_loss draws it (engine.gating.model.top_k_route)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(7), dtype=z.dtype)
    loss = EpochLoss(cfg, logp, sw, group, G, [(0, B)], log_prior, temperature, noise if router == "top_k" else None)
    got = loss.grad(0, z)
    # float64 throughout, but load_balance's slot shares are float32 (kept.float()): 1e-7 relative
    torch.testing.assert_close(got, grad, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(loss.batch_terms(0), terms.detach(), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(loss.total(loss.batch_terms(0)), total, rtol=1e-7, atol=1e-12)
    assert torch.allclose(loss.weights.sum(-1), torch.ones(B, dtype=z.dtype))
    if router == "top_k":
        assert ((loss.weights > 0).sum(-1) == cfg.top_k).all()


@pytest.mark.parametrize("router", ["dense", "top_k"])
def test_epoch_terms_are_the_size_weighted_mean_of_batch_terms(router):
    """Batches of one epoch (a lone last sample joins the batch before it) each match gating_loss on their own."""
    cfg = TrainGatingConfig(logits_dir="x", experts=[f"e{i}" for i in range(E)], router=router, lambda_lb=0.5)
    z, logp, sw, group, log_prior = batch(2)
    bounds = batch_bounds(B, 21)  # 64 = 21 + 21 + 22
    assert bounds == [(0, 21), (21, 42), (42, 64)]
    loss = EpochLoss(cfg, logp, sw, group, G, bounds, log_prior, 0.9, torch.zeros(B, E, dtype=z.dtype))
    per_batch = []
    for b, (start, stop) in enumerate(bounds):
        got = loss.grad(b, z[start:stop])
        sub = (z[start:stop], logp[start:stop], sw[start:stop], group[start:stop], log_prior)
        cfg0 = cfg.model_copy(update={"noise_std": 0.0})
        _, terms, grad = autograd_reference(*sub, cfg0, 0.9, noise_seed=0)
        torch.testing.assert_close(got, grad, rtol=1e-6, atol=1e-9)  # float32 slot shares in load_balance
        torch.testing.assert_close(loss.batch_terms(b), terms, rtol=1e-7, atol=1e-12)
        per_batch.append(terms * (stop - start))
    torch.testing.assert_close(loss.terms(), sum(per_batch) / B, rtol=1e-7, atol=1e-12)


def test_mlp_backward_matches_autograd_with_dropout():
    torch.manual_seed(0)
    model = GatingMLP(13, E, [32, 16], dropout=0.25).double().train()
    ref = GatingMLP(13, E, [32, 16], dropout=0.25).double().train()
    ref.load_state_dict(model.state_dict())
    params = FlatParams(model)
    step = Step(model, params)
    x = torch.randn(B, 13, dtype=torch.float64)
    masks = keep_masks(np.random.default_rng(0), B, [32, 16], 0.25)
    upstream = torch.randn(B, E, dtype=torch.float64)

    out = step.forward(x, masks)
    step.backward(upstream)
    ref_out = ref(x, [m.double() for m in masks.as_float()])
    (ref_out * upstream).sum().backward()

    torch.testing.assert_close(out, ref_out.detach())
    for (name, p), g in zip(ref.named_parameters(), params.grads):
        torch.testing.assert_close(g, p.grad, msg=name)
    # the module reads the flat buffer: an update there is an update of the model
    params.data.add_(1.0)
    assert torch.equal(model.out.bias, ref.out.bias + 1.0)


def test_flat_adamw_with_clipping_matches_torch():
    torch.manual_seed(0)
    model = GatingMLP(7, 3, [16], dropout=0.0)
    ref = GatingMLP(7, 3, [16], dropout=0.0)
    ref.load_state_dict(model.state_dict())
    params = FlatParams(model)
    opt = AdamW(params, lr=1e-2, weight_decay=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=1e-2)
    for i in range(6):
        grads = [torch.randn_like(p) * (10.0 if i % 2 else 0.01) for p in ref.parameters()]  # clipped and not
        for p, g, flat_g in zip(ref.parameters(), grads, params.grads):
            p.grad = g.clone()
            flat_g.copy_(g)
        opt.lr = ref_opt.param_groups[0]["lr"] = 1e-2 * (i + 1) / 6  # a schedule moves both
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 1.0)
        ref_opt.step()
        opt.step(clip_scale(params.grad, 1.0))
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
