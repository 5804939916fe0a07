"""Units of the long-tail engine: losses, the MoE head, temperature scaling, reliability bins."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.common.calibration import fit_temperature, reliability_bins
from engine.longtail.losses import make_loss
from engine.longtail.models import build_network
from engine.longtail.models.moe_head import MoEHead


def test_prior_losses_shift_the_logits_by_the_log_prior():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(32, 3, generator=g), torch.randint(0, 3, (32,), generator=g)
    counts = [100, 10, 1]
    prior = torch.tensor(counts, dtype=torch.float32) / 111
    la = make_loss("logit_adjust", counts, 1.0, torch.device("cpu"))(z, y)
    assert torch.allclose(la, F.cross_entropy(z + prior.log(), y))
    la2 = make_loss("logit_adjust", counts, 2.0, torch.device("cpu"))(z, y)
    assert torch.allclose(la2, F.cross_entropy(z + 2 * prior.log(), y))
    # balanced softmax: log counts differ from log prior by a constant, which softmax ignores
    bs = make_loss("balanced_softmax", counts, 1.0, torch.device("cpu"))(z, y)
    assert torch.allclose(bs, la, atol=1e-6)
    assert torch.allclose(make_loss("ce", counts, 1.0, torch.device("cpu"))(z, y), F.cross_entropy(z, y))


def test_moe_head_routes_top_k_and_measures_balance():
    head = MoEHead(in_dim=8, num_classes=5, experts=4, top_k=2, hidden=16)
    feats = torch.randn(64, 8)
    out = head(feats)
    assert out.shape == (64, 5)
    assert abs(float(head.last_load.sum()) - 1) < 1e-6
    # uniform gate probabilities give the minimum load-balance term, 1
    torch.nn.init.zeros_(head.gate.weight)
    torch.nn.init.zeros_(head.gate.bias)
    head(feats)
    assert abs(float(head.aux_loss.detach()) - 1) < 1e-6
    # a gate that sends everything to expert 0 and 1 scores E/k = 2
    head.gate.bias.data = torch.tensor([10.0, 10.0, -10.0, -10.0])
    head(feats)
    assert abs(float(head.aux_loss.detach()) - 2) < 1e-3 and head.last_load.tolist()[:2] == [0.5, 0.5]


def test_every_backbone_builds_with_features_and_fc():
    for arch, size in (("resnet32", 16), ("resnet18", 16), ("resnet50", 32)):
        net = build_network(arch, 7, 3)
        assert net(torch.randn(2, 3, size, size)).shape == (2, 7)
        assert net.features(torch.randn(2, 3, size, size)).shape == (2, net.feature_dim)
    moe = build_network("resnet32", 7, 1, {"experts": 3, "top_k": 1, "hidden": 8})
    assert moe(torch.randn(2, 1, 16, 16)).shape == (2, 7)


def test_temperature_undoes_a_known_overconfidence():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2000,), generator=g)
    z = torch.randn(2000, 10, generator=g) + 3 * F.one_hot(y, 10)
    t1 = fit_temperature(z, y)
    t3 = fit_temperature(3 * z, y)  # the same model, three times too confident
    assert abs(t3 / t1 - 3) < 0.01
    assert F.cross_entropy(3 * z / t3, y) < F.cross_entropy(3 * z, y)
    assert fit_temperature(z * 1e30, y) <= 20  # degenerate logits do not blow up the fit


def test_reliability_bins_count_every_sample():
    probs = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.3, 0.7], [0.02, 0.98]])
    y = torch.tensor([0, 1, 1, 1])
    bins = reliability_bins(probs, y)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    top = bins[-1]
    assert top["count"] == 2 and top["accuracy"] == 1.0 and abs(top["confidence"] - 0.965) < 1e-6
    mid = [b for b in bins if b["lo"] < 0.55 <= b["hi"]][0]
    assert mid["count"] == 1 and mid["accuracy"] == 0.0
