"""Gating pieces against direct computations from their formulas, on small random tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.gating import losses
from engine.gating.data import SplitLogits
from engine.gating.features import FeatureNorm, num_features, posterior_features, prepare_split
from engine.gating.model import GatingMLP, dropout_masks, route, router_temperature
from engine.gating.train_gating import linear_warmup_cosine


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    n, E, C = 6, 3, 5
    router_logits = torch.randn(n, E, generator=g)
    logp = torch.randn(n, E, C, generator=g).log_softmax(-1)
    y = torch.randint(0, C, (n,), generator=g)
    logp_y = logp[torch.arange(n), :, y]
    return router_logits, logp_y, y


def test_mixture_nll_is_the_class_weighted_mean_of_minus_log_mixture(batch):
    r, logp_y, y = batch
    w = r.softmax(-1)
    cw = torch.tensor([0.5, 2.0, 1.0, 1.0, 0.5])
    got = losses.mixture_nll(w.log(), logp_y, cw[y])
    direct = [-math.log(sum(w[i, e] * math.exp(logp_y[i, e]) for e in range(3))) for i in range(len(y))]
    expect = sum(cw[y[i]] * direct[i] for i in range(len(y))) / cw[y].sum()
    assert float(got) == pytest.approx(float(expect), rel=1e-5)
    assert float(losses.mixture_nll(w.log(), logp_y)) == pytest.approx(float(np.mean(direct)), rel=1e-5)


def test_load_balance_is_switch_style(batch):
    r, _, _ = batch
    out = route(r, "top_k", 1.0, k=2, noise_std=0.0, train=False)
    n, E = r.shape
    f = [sum(bool(out.kept[i, e]) for i in range(n)) / (n * 2) for e in range(E)]
    P = [float(out.dense_probs[:, e].mean()) for e in range(E)]
    assert float(losses.load_balance(out.dense_probs, out.kept)) == pytest.approx(E * sum(a * b for a, b in zip(f, P)), rel=1e-5)
    # uniform dispatch and probabilities give exactly 1
    assert float(losses.load_balance(torch.full((4, 2), 0.5), torch.ones(4, 2, dtype=torch.bool))) == pytest.approx(1.0)


def test_routing_entropy(batch):
    r, _, _ = batch
    w = r.softmax(-1)
    direct = np.mean([-sum(float(w[i, e]) * math.log(float(w[i, e])) for e in range(3)) for i in range(len(w))])
    assert float(losses.routing_entropy(w, w.log())) == pytest.approx(direct, rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_responsibility_kl(batch, T):
    r, logp_y, _ = batch
    w = r.softmax(-1)
    kls = []
    for i in range(len(w)):
        resp = [float(w[i, e]) * math.exp(float(logp_y[i, e])) for e in range(3)]
        resp = [v / sum(resp) for v in resp]
        q = [v ** (1 / T) for v in resp]  # softmax(log r / T)
        q = [v / sum(q) for v in q]
        kls.append(sum(q[e] * (math.log(q[e]) - math.log(float(w[i, e]))) for e in range(3)))
    assert float(losses.responsibility_kl(w.log(), logp_y, T)) == pytest.approx(float(np.mean(kls)), rel=1e-4)


def test_responsibility_target_is_detached(batch):
    r, logp_y, _ = batch
    r = r.clone().requires_grad_()
    losses.responsibility_kl(r.log_softmax(-1), logp_y).backward()
    # gradient of KL(q || w) w.r.t. the router logits with q fixed is w - q
    w = r.detach().softmax(-1)
    q = losses.responsibilities(w.log(), logp_y)
    assert torch.allclose(r.grad, (w - q) / len(w), atol=1e-6)


def test_group_prior_and_its_kl():
    correct = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 1], [0, 1]], dtype=torch.bool)
    group = torch.tensor([0, 0, 0, 1, 1])  # three head samples, two tail
    log_prior, present = losses.group_prior(correct, group, 2, temperature=0.1)
    assert present.tolist() == [True, True]
    acc = [[1.0, 1 / 3], [0.0, 1.0]]
    for g in range(2):
        z = [math.exp(a / 0.1) for a in acc[g]]
        assert log_prior[g].exp().tolist() == pytest.approx([v / sum(z) for v in z], rel=1e-5)

    w = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = losses.group_prior_kl(w, onehot, log_prior)
    expect = 0.0
    for g, rows in ((0, [0, 1]), (1, [2, 3])):
        m = w[rows].mean(0)
        expect += sum(float(m[e]) * (math.log(float(m[e])) - float(log_prior[g, e])) for e in range(2))
    assert float(got) == pytest.approx(expect / 2, rel=1e-5)
    # a group absent from the batch is left out of the mean, not counted as zero
    only_head = losses.group_prior_kl(w[:2], onehot[:2], log_prior)
    m = w[:2].mean(0)
    assert float(only_head) == pytest.approx(sum(float(m[e]) * (math.log(float(m[e])) - float(log_prior[0, e])) for e in range(2)), rel=1e-5)


def test_top_k_router_masks_all_but_the_k_largest_noisy_logits():
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    out = route(logits, "top_k", 0.7, k=2, noise_std=1.0, generator=torch.Generator().manual_seed(7), train=True)
    noisy = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(7))
    top = noisy.topk(2, -1).indices
    assert (out.kept.sum(-1) == 2).all()
    assert torch.equal(out.kept, torch.zeros_like(out.kept).scatter_(-1, top, True))
    assert (out.weights[~out.kept] == 0).all() and torch.isinf(out.log_weights[~out.kept]).all()
    kept_logits = noisy.gather(-1, top) / 0.7
    assert torch.allclose(out.weights.gather(-1, top), kept_logits.softmax(-1), atol=1e-6)
    assert torch.allclose(out.dense_probs, (logits / 0.7).softmax(-1))  # P_e of load balancing: no noise, no mask
    # evaluation: no noise, so the kept experts are the top-k of the clean logits
    ev = route(logits, "top_k", 0.7, k=2, noise_std=1.0, train=False)
    assert torch.equal(ev.kept, torch.zeros_like(ev.kept).scatter_(-1, logits.topk(2, -1).indices, True))


def test_every_term_has_finite_gradients_through_the_top_k_mask(batch):
    r, logp_y, y = batch
    r = r.clone().requires_grad_()
    out = route(r, "top_k", 1.0, k=1, noise_std=1.0, generator=torch.Generator().manual_seed(0))
    onehot = torch.nn.functional.one_hot(y % 2, 2).float()
    total = (losses.mixture_nll(out.log_weights, logp_y) + losses.load_balance(out.dense_probs, out.kept)
             + losses.routing_entropy(out.weights, out.log_weights) + losses.responsibility_kl(out.log_weights, logp_y)
             + losses.group_prior_kl(out.weights, onehot, torch.full((2, 3), -math.log(3))))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(r.grad).all() and r.grad.abs().sum() > 0


@pytest.mark.parametrize("router,k", [("dense", 1), ("top_k", 2), ("top_k", 1)])
def test_the_training_loss_passes_gradcheck(router, k):
    """gating_loss in float64: autograd's gradient against finite differences (training differentiates
    this function; there is no other gradient of it). The terms whose targets are detached by design
    (responsibility KL's q, load balance's f) have no finite-difference counterpart: they are off here,
    and test_responsibility_target_is_detached covers the detaching."""
    from engine.gating.config import TrainGatingConfig

    cfg = TrainGatingConfig(logits_dir="x", experts=["a", "b", "c"], router=router, top_k=k,
                            lambda_entropy=0.3, lambda_resp=0.0, lambda_prior=0.4, lambda_lb=0.0)
    g = torch.Generator().manual_seed(3)
    n = 8
    logits = 2 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    logp = torch.randn(n, 3, 5, generator=g, dtype=torch.float64).log_softmax(-1)[..., 0]
    sw = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    onehot = torch.nn.functional.one_hot(torch.arange(n) % 2, 2).double()
    log_prior = torch.randn(2, 3, generator=g, dtype=torch.float64).log_softmax(-1)
    noise = torch.randn(n, 3, generator=g, dtype=torch.float64)

    def total(z):
        return losses.gating_loss(z, logp, sw, onehot, cfg, 1.3, log_prior, noise=noise)[0]

    assert torch.autograd.gradcheck(total, logits.requires_grad_(), eps=1e-6, atol=1e-6)


def test_dense_router_is_a_tempered_softmax(batch):
    r, _, _ = batch
    out = route(r, "dense", 2.0)
    assert torch.allclose(out.weights, (r / 2.0).softmax(-1)) and out.kept is None


def test_temperature_anneals_linearly_from_2_to_0_7():
    temps = [router_temperature(e, 11, 2.0, 0.7) for e in range(1, 12)]
    assert temps[0] == pytest.approx(2.0) and temps[-1] == pytest.approx(0.7)
    assert np.allclose(np.diff(temps), -0.13)
    assert router_temperature(1, 1, 2.0, 0.7) == pytest.approx(0.7)


def test_learning_rate_warms_up_then_follows_a_cosine():
    f = linear_warmup_cosine(5, 100)
    assert [f(e) for e in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(5) == pytest.approx(1.0) and f(52) == pytest.approx(0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert f(99) < 0.001


def test_dropout_masks_keep_the_rate_and_scale():
    masks = dropout_masks(np.random.default_rng(0), 4000, [256, 128], 0.1)
    assert [m.shape for m in masks] == [(4000, 256), (4000, 128)]
    for m in masks:
        values = m.unique().tolist()
        assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.9, rel=1e-4)
        assert float((m == 0).float().mean()) == pytest.approx(0.1, abs=0.003)
    model = GatingMLP(5, 3, [8], 0.5).train()
    x = torch.randn(10, 5)
    zero = [torch.zeros(10, 8)]
    assert torch.allclose(model(x, zero), model.out.bias.expand(10, 3))  # every hidden unit dropped


def _direct_features(probs: np.ndarray) -> np.ndarray:
    """The 7E + 3 features of one sample from its (E, C) probabilities, written out plainly."""
    E, C = probs.shape
    pbar = probs.mean(0)
    rows = []
    for p in probs:
        s = np.sort(p)[::-1]
        topk = s[: min(5, C)].sum()
        rows += [-(p * np.log(p)).sum(), topk, 1 - topk, s[0], s[0] - s[1],
                 p @ pbar / (np.linalg.norm(p) * np.linalg.norm(pbar)), (p * np.log(p / pbar)).sum()]
    maxes = probs.max(1)
    return np.array(rows + [-(pbar * np.log(pbar)).sum(), probs.var(0).mean(), maxes.max() - maxes.min()])


def test_features_match_their_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(4, 3, 7))
    feats = posterior_features(torch.from_numpy(logits).log_softmax(-1))
    assert feats.shape == (4, num_features(3)) == (4, 24)
    for i in range(4):
        p = np.exp(logits[i]) / np.exp(logits[i]).sum(-1, keepdims=True)
        assert np.allclose(feats[i].numpy(), _direct_features(p), atol=1e-10)


def test_chunked_preparation_equals_one_block_and_leaves_probabilities(monkeypatch):
    from engine.gating import features as fmod

    rng = np.random.default_rng(1)
    n, E, C = 37, 3, 11
    y = rng.integers(0, C, n)

    def split():
        r = np.random.default_rng(2)
        return SplitLogits("val", ["a", "b", "c"], [r.normal(0, 3, (n, C)).astype(np.float32) for _ in range(E)], y)

    raw = split().logits
    whole = prepare_split(split(), chunk_mb=64)
    assert fmod.chunk_rows(E, C, 64) > n  # one block
    monkeypatch.setattr(fmod, "chunk_rows", lambda *a: 5)  # 8 blocks, the last one short
    chunked = prepare_split(split(), chunk_mb=1)
    assert torch.allclose(whole.features, chunked.features, atol=1e-6)
    assert torch.equal(whole.expert_pred, chunked.expert_pred)
    direct_logp = torch.from_numpy(np.stack(raw, 1)).double().log_softmax(-1)
    assert torch.allclose(chunked.logp_target, direct_logp[torch.arange(n), :, torch.from_numpy(y)].float(), atol=1e-6)
    for e in range(E):
        assert np.allclose(chunked.probs[e], direct_logp[:, e].exp().numpy(), atol=1e-6)
        assert np.allclose(chunked.probs[e].sum(1), 1, atol=1e-5)


def test_chunk_rows_bound_the_float64_block():
    from engine.gating.features import chunk_rows

    rows = chunk_rows(3, 8142, 32)
    assert rows * 3 * 8142 * 8 <= 32 << 20 < (rows + 1) * 3 * 8142 * 8


def test_feature_norm_standardises_and_keeps_constant_features_at_zero():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    norm = FeatureNorm.fit(x)
    assert torch.allclose(norm(x), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))


def test_verdict_says_when_the_gate_is_close_to_uniform():
    from engine.gating.evaluation import routing_stats, uniform_verdict
    from engine.gating.features import PreparedSplit

    n = 8
    prep = PreparedSplit("val", ["a", "b"], torch.zeros(n, 17), torch.zeros(n, 2), torch.zeros(n, 2, dtype=torch.int64),
                         torch.zeros(n, dtype=torch.int64), [])
    table = {"a": {"balanced_acc": 0.6}, "b": {"balanced_acc": 0.5}, "uniform": {"balanced_acc": 0.7},
             "gate": {"balanced_acc": 0.71}, "oracle": {"balanced_acc": 0.9}}
    near = routing_stats(torch.tensor([[0.52, 0.48]] * n), prep)
    assert near["tv_from_uniform"] == pytest.approx(0.02) and near["eff_experts"] == pytest.approx(1.998, abs=1e-3)
    text = uniform_verdict(near, table, "val")
    assert "close to uniform" in text and "+0.0100" in text and "best single expert 0.6000" in text
    assert "it beats the uniform average" in text
    far = routing_stats(torch.tensor([[0.9, 0.1]] * n), prep)
    table["gate"]["balanced_acc"] = 0.702
    text = uniform_verdict(far, table, "val")
    assert "gate routes" in text and "it does not beat the uniform average" in text


def test_gating_configs_parse_presets_and_the_positional_run():
    from engine.core.config import parse_argv
    from engine.core.errors import ConfigError
    from engine.gating.config import TrainGatingConfig

    c = TrainGatingConfig()
    assert (c.hidden, c.dropout, c.temperature_start, c.temperature_end, c.lr, c.weight_decay) == ([256, 128], 0.1, 2.0, 0.7, 1e-3, 1e-4)
    assert (c.lambda_lb, c.lambda_entropy, c.lambda_resp, c.lambda_prior, c.prior_temperature) == (1e-2, 0.01, 0.1, 0.05, 0.1)
    assert (c.epochs, c.batch_size, c.grad_clip, c.noise_std) == (100, 128, 1.0, 1.0)
    spec = parse_argv(["train-gating", "--preset", "inaturalist2018", "--router", "top_k", "--top-k", "1"])
    assert spec.config.num_classes == 8142 and spec.config.logits_dir == "outputs/logits/inaturalist2018"
    assert spec.config.experts == ["ce", "logit_adjust", "balanced_softmax"]
    spec = parse_argv(["evaluate-gating", "251125-001200-ab12", "--split", "val", "--workspace", "/w"])
    assert spec.config.run == "251125-001200-ab12" and spec.config.split == "val"
    assert spec.argv == ["evaluate-gating", "251125-001200-ab12", "--split", "val"]
    with pytest.raises(ConfigError, match="top_k 4 is more than the 3 experts"):
        parse_argv(["train-gating", "--router", "top_k", "--top-k", "4"])
