"""fit-reject's rule against direct computations on small tensors, the methods on constructed
posteriors, a whole run on synthetic logits, and one line with exit 2 for each kind of bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from engine.reject import rule
from tests.gating_synth import write_npz
from tests.helpers import engine, read_events, run_dirs

RATES = torch.tensor([round(0.05 * i, 2) for i in range(17)], dtype=torch.float64)
LAMBDAS = [-5, -2, -1, 0, 1, 2, 3, 5, 6, 8, 11, 15, 20]


@pytest.fixture(autouse=True)
def one_thread():
    """As the job fits: one torch thread (two on two shared cores are slower for these sizes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_posteriors(n: int, C: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    eta = torch.randn(n, C, generator=g, dtype=torch.float64).mul(2).softmax(-1)
    return eta, torch.randint(0, C, (n,), generator=g)


def _class_group(C: int, K: int) -> torch.Tensor:
    return torch.arange(C) * K // C  # contiguous blocks: 0..0, 1..1, ...


# --------------------------------------------------------------------------- #
# The rule, term by term


def test_group_stats_are_the_per_group_max_argmax_and_mass():
    eta, y = _random_posteriors(40, 7, 0)
    cg = torch.tensor([0, 1, 0, 2, 1, 2, 2])
    st = rule.group_stats(eta, y, cg, 3)
    for i in range(40):
        for k in range(3):
            classes = [c for c in range(7) if cg[c] == k]
            best = max(classes, key=lambda c: eta[i, c])
            assert st.top[i, k] == eta[i, best]
            assert bool(st.correct[i, k]) == (best == int(y[i]))
            assert float(st.mass[i, k]) == pytest.approx(float(eta[i, classes].sum()))
        assert st.group[i] == cg[y[i]]


@pytest.mark.parametrize("K", [2, 3])
def test_the_rule_classifies_and_rejects_as_written(K):
    """h(x) = argmax_y w_[y] eta_y; reject iff max_y w_[y] eta_y < sum_y' (w_[y'] - mu_[y']) eta_y' - c,
    computed class by class over the full (N, C) posterior."""
    C, n = 9, 60
    eta, y = _random_posteriors(n, C, K)
    cg = _class_group(C, K)
    st = rule.group_stats(eta, y, cg, K)
    g = torch.Generator().manual_seed(7)
    alpha = torch.rand(4, K, generator=g, dtype=torch.float64) + 0.2
    beta = torch.rand(4, K, generator=g, dtype=torch.float64)
    beta /= beta.sum(-1, keepdim=True)
    mu = torch.randn(4, K, generator=g, dtype=torch.float64)
    s, right = rule.scores(st, rule.rule_weights(alpha, beta), mu)
    for b in range(4):
        w = K * beta[b] / alpha[b]
        w_y, mu_y = w[cg], mu[b][cg]  # per class
        for i in range(n):
            weighted = w_y * eta[i]
            h = int(weighted.argmax())
            rhs = float(((w_y - mu_y) * eta[i]).sum())
            assert bool(right[b, i]) == (h == int(y[i]))
            assert float(s[b, i]) == pytest.approx(float(weighted.max()) - rhs, abs=1e-12)
            c = 0.1 * b - 0.2
            assert bool(s[b, i] < -c) == (float(weighted.max()) < rhs - c)


def test_chow_is_the_rule_with_w_1_and_scores_by_the_top_probability():
    eta, y = _random_posteriors(50, 6, 1)
    st = rule.group_stats(eta, y, _class_group(6, 2), 2)
    fit = rule.chow(RATES[:3], 2)
    s, right = rule.scores(st, rule.rule_weights(fit.alpha, fit.beta), fit.mu)
    assert torch.equal(s, eta.max(-1).values.expand(3, -1))  # exactly: no sum of probabilities in it
    assert torch.equal(right[0], eta.argmax(-1) == y)


def test_percentile_threshold_rejects_the_target_share_within_1_over_n():
    g = torch.Generator().manual_seed(3)
    for n in (7, 37, 1000):
        s = torch.randn(len(RATES), n, generator=g, dtype=torch.float64)
        accept, t = rule.accept_at(s, RATES)
        achieved = 1 - accept.double().mean(1)
        assert (achieved - RATES).abs().max() <= 1 / n
        # the threshold is a percentile of the scores alone: the lowest round(r n) are rejected
        for b, r in enumerate(RATES.tolist()):
            k = min(round(r * n), n - 1)
            assert set(torch.argsort(s[b])[:k].tolist()) == set((~accept[b]).nonzero()[:, 0].tolist())
            assert t[b] == s[b].sort().values[k]


def test_group_errors_count_accepted_samples_only_and_weights_and_empty_groups():
    st = rule.GroupStats(top=torch.zeros(6, 2, dtype=torch.float64), correct=torch.zeros(6, 2, dtype=torch.bool),
                         mass=torch.zeros(6, 2, dtype=torch.float64), group=torch.tensor([0, 0, 0, 1, 1, 1]))
    accept = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    right = torch.tensor([[1, 0, 0, 1, 1, 1], [1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    r = rule.group_rates(st, accept, right, empty_error=1.0)
    assert r.error.tolist() == [[0.5, 0.0], [1.0, 1 / 3]]  # row 2: no head sample accepted -> empty_error
    assert r.coverage.tolist() == [[2 / 3, 1 / 3], [0.0, 1.0]]
    assert r.rejected.tolist() == [0.5, 0.5]
    assert r.balanced().tolist() == [0.25, pytest.approx(2 / 3)] and r.worst().tolist() == [0.5, 1.0]
    st.weight = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert rule.group_rates(st, accept, right, 1.0).error[0].tolist() == [0.25, 0.0]  # 1 wrong of weight 1 / 4


def test_alpha_fixed_point_ends_at_k_times_the_accepted_share_of_each_group():
    eta, y = _random_posteriors(300, 10, 4)
    st = rule.group_stats(eta, y, _class_group(10, 2), 2)
    L = 3
    rates = RATES[[2, 8, 14]].repeat_interleave(L)
    beta = torch.full((len(rates), 2), 0.5, dtype=torch.float64)
    mu = rule.mu_grid([0, 2, 6], 2).repeat(3, 1)
    alpha, steps = rule.alpha_fixed_point(st, beta, mu, rates, iters=200, damping=0.5, tol=1e-6)
    # A discrete acceptance set can flip between two neighbours for ever (no fixed point exists); the
    # loop then stops after `iters` updates. Most rows converge.
    done = steps < 200
    assert done.sum() >= 7, steps
    s, _ = rule.scores(st, rule.rule_weights(alpha, beta), mu)
    accept, _ = rule.accept_at(s, rates)
    share = 2 * (accept.double() @ st.onehot()) / 300  # K P(accepted, y in G_k)
    assert torch.allclose(alpha[done], share[done], atol=1e-5)
    # one step from the start: alpha_0 = K P(y in G_k), then the damped update
    a1, _ = rule.alpha_fixed_point(st, beta, mu, rates, iters=1, damping=0.5, tol=1e-6)
    a0 = (2 * st.onehot().mean(0)).expand_as(a1)
    s0, _ = rule.scores(st, rule.rule_weights(a0, beta), mu)
    acc0, _ = rule.accept_at(s0, rates)
    assert torch.allclose(a1, 0.5 * a0 + 0.5 * 2 * (acc0.double() @ st.onehot()) / 300)


def test_cs_plugin_keeps_the_mu_with_the_lowest_weighted_error_on_s2():
    """Against a direct loop: per rate, every mu of the grid fitted and scored on its own."""
    s1 = rule.group_stats(*_random_posteriors(200, 8, 5), _class_group(8, 2), 2)
    s2 = rule.group_stats(*_random_posteriors(200, 8, 6), _class_group(8, 2), 2)
    rates = RATES[[1, 6, 12]]
    beta = torch.tensor([[0.5, 0.5], [0.3, 0.7], [0.8, 0.2]], dtype=torch.float64)
    mus = rule.mu_grid([-1, 0, 3, 8], 2)
    fit = rule.cs_plugin(s1, s2, beta, rates, mus, 20, 0.5, 1e-4, 1.0)
    for r in range(3):
        objectives = []
        for mu in mus:
            a, _ = rule.alpha_fixed_point(s1, beta[r : r + 1], mu[None], rates[r : r + 1], 20, 0.5, 1e-4)
            res, _ = rule.evaluate(s2, a, mu[None], beta[r : r + 1], rates[r : r + 1], 1.0)
            objectives.append(float((beta[r] * res.error[0]).sum()))
        best = int(np.argmin(objectives))
        assert fit.mu[r].tolist() == mus[best].tolist() and float(fit.objective[r]) == pytest.approx(objectives[best])


def test_eg_step_multiplies_by_exp_of_the_errors_and_normalises():
    beta = torch.tensor([[0.5, 0.5], [0.2, 0.8]], dtype=torch.float64)
    err = torch.tensor([[0.1, 0.4], [0.0, 1.0]], dtype=torch.float64)
    got = rule.eg_step(beta, err, 1.0)
    for b in range(2):
        raw = [float(beta[b, k]) * math.exp(float(err[b, k])) for k in range(2)]
        assert got[b].tolist() == pytest.approx([v / sum(raw) for v in raw])
    assert rule.eg_step(beta, err, 2.0)[0, 1] > got[0, 1]  # a larger step moves further to the worse group


def test_aurc_is_the_trapezoid_not_normalised():
    e = 0.37
    const = torch.full((17,), e, dtype=torch.float64)
    assert float(rule.aurc(RATES, const)) == pytest.approx(0.8 * e)
    assert float(rule.aurc(RATES, const, normalised=True)) == pytest.approx(e)
    assert float(rule.aurc(RATES, 1 - RATES)) == pytest.approx(0.8 - 0.8**2 / 2)  # exact for a line


def test_mu_grid_is_zero_for_the_first_group_and_every_combination_after():
    assert rule.mu_grid([1, 6, 11], 2).tolist() == [[0, 1], [0, 6], [0, 11]]
    grid = rule.mu_grid(LAMBDAS, 3)
    assert grid.shape == (169, 3) and (grid[:, 0] == 0).all() and len({tuple(r) for r in grid.tolist()}) == 169


# --------------------------------------------------------------------------- #
# The methods on constructed posteriors


def _long_tail_posteriors(per_class: int, seed: int, C: int = 10) -> rule.GroupStats:
    """Balanced samples seen through a model trained on a long tail: eta ~ pi_train * likelihood with
    pi_train 0.18 per head class, 0.02 per tail class. Tail samples come out unsure (and often wrong:
    the prior pulls them to a head class), so Chow's rule rejects mostly tail."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C).repeat_interleave(per_class)
    logit = torch.randn(len(y), C, generator=g, dtype=torch.float64)
    logit[torch.arange(len(y)), y] += 3.0
    prior = torch.tensor([0.18] * 5 + [0.02] * 5, dtype=torch.float64)
    eta = logit.softmax(-1) * prior
    return rule.group_stats(eta / eta.sum(-1, keepdim=True), y, _class_group(C, 2), 2)


def test_plugin_beats_chow_where_chow_rejects_the_tail():
    s1, s2, test = _long_tail_posteriors(100, 1), _long_tail_posteriors(100, 2), _long_tail_posteriors(200, 3)
    half = torch.full((len(RATES), 2), 0.5, dtype=torch.float64)
    fits = {"chow": rule.chow(RATES, 2),
            "plugin_balanced": rule.cs_plugin(s1, s2, half, RATES, rule.mu_grid(LAMBDAS, 2), 20, 0.5, 1e-4, 1.0),
            "plugin_worst": rule.worst_group_plugin(s1, s2, RATES, rule.mu_grid([1, 6, 11], 2), 25, 1.0, 10, 0.5,
                                                    1e-4, 1.0)}
    res = {m: rule.evaluate(test, f.alpha, f.mu, f.beta, RATES, 1.0)[0] for m, f in fits.items()}
    chow = res["chow"]
    # Chow's rejections are mostly tail samples (half of the test set) at every rate up to 0.4
    tail_share = (1 - chow.coverage[1:9, 1]) * 0.5 / chow.rejected[1:9]
    assert (tail_share > 0.85).all(), tail_share
    bal = res["plugin_balanced"].balanced()
    assert (bal[1:] < chow.balanced()[1:]).all(), (bal, chow.balanced())
    assert bal[0] == pytest.approx(float(chow.balanced()[0]))  # at rate 0 on balanced S1, alpha = 1: Chow's classifier
    area = {m: (float(rule.aurc(RATES, r.balanced())), float(rule.aurc(RATES, r.worst()))) for m, r in res.items()}
    assert area["plugin_balanced"][0] < area["chow"][0]
    assert min(area, key=lambda m: area[m][1]) == "plugin_worst", area
    # the worst-group plug-in's beta stayed on the simplex and, where the tail is the worse group (low
    # rates), moved to it
    beta = fits["plugin_worst"].beta
    assert torch.allclose(beta.sum(-1), torch.ones(len(RATES), dtype=torch.float64)) and (beta[:8, 1] > 0.5).all()


# --------------------------------------------------------------------------- #
# The job on synthetic logits: outputs, and bad inputs


COUNTS = [200, 150, 100, 60, 40, 20, 15, 12, 10, 8]  # head 0-4 (> 20 images), tail 5-9


def _write_logits(root, experts=("a", "b"), splits=("tunev", "val", "test"), per_class=(6, 6, 20), seed=0):
    rng = np.random.default_rng(seed)
    prior = np.log(np.asarray(COUNTS) / sum(COUNTS))
    for split, n in zip(splits, per_class):
        y = rng.permutation(np.repeat(np.arange(10), n))
        for i, e in enumerate(experts):
            z = rng.normal(0, 1, (len(y), 10)) + prior * (0.5 + i)
            z[np.arange(len(y)), y] += 2.5
            write_npz(root / e / f"{split}_logits.npz", z, y)
    (root / "class_counts.json").write_text(json.dumps({"train_lt": COUNTS}))
    return root


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_run_on_synthetic_logits_writes_consistent_outputs(tmp_path):
    logits = _write_logits(tmp_path / "logits")
    out = engine(tmp_path, "fit-reject", "--preset", "quick", "--logits-dir", str(logits), "--experts", "a,b",
                 "--splits-dir", str(logits / "class_counts.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    (rd,) = run_dirs(tmp_path)
    art = rd / "artifacts" / "reject"
    curves = _rows(art / "curves.csv")
    assert set(curves[0]) == {"source", "method", "split", "target_rate", "rejection_rate", "balanced_error",
                              "worst_error", "coverage_head", "coverage_tail", "error_head", "error_tail"}
    assert len(curves) == 3 * 3 * 3 * 17  # sources uniform,a,b x methods x splits x rates
    for r in curves:
        rate, n = float(r["target_rate"]), {"tunev": 60, "val": 60, "test": 200}[r["split"]]
        assert abs(float(r["rejection_rate"]) - rate) <= 1 / n + 1e-9
        errs = [float(r["error_head"]), float(r["error_tail"])]
        assert float(r["balanced_error"]) == pytest.approx(sum(errs) / 2, abs=2e-6)
        assert float(r["worst_error"]) == pytest.approx(max(errs), abs=1e-6)
    aurc = _rows(art / "aurc.csv")
    assert len(aurc) == 27 and {r["axis"] for r in aurc} == {"target_rate"} and {r["normalised"] for r in aurc} == {"false"}
    for a in aurc:  # each AURC is the trapezoid of its own curve
        pts = [r for r in curves if (r["source"], r["method"], r["split"]) == (a["source"], a["method"], a["split"])]
        x = np.array([float(r["target_rate"]) for r in pts])
        for col, key in (("aurc_balanced", "balanced_error"), ("aurc_worst", "worst_error")):
            yv = np.array([float(r[key]) for r in pts])
            assert float(a[col]) == pytest.approx(float(np.sum((yv[1:] + yv[:-1]) / 2 * np.diff(x))), abs=1e-5)
        assert float(a["r_max"]) == 0.8
    fit = json.loads((art / "fit.json").read_text())
    assert fit["convention"]["normalised"] is False and fit["convention"]["r_max"] == 0.8
    assert fit["groups"]["classes"] == {"head": [0, 1, 2, 3, 4], "tail": [5, 6, 7, 8, 9]}
    for source in ("uniform", "a", "b"):
        for method in ("chow", "plugin_balanced", "plugin_worst"):
            entry = fit["fits"][source][method]
            assert len(entry["alpha"]) == len(entry["mu"]) == len(entry["beta"]) == 17
            assert set(entry["c"]) == {"tunev", "val", "test"}
    assert (art / "risk_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = read_events(rd)
    summary = next(e for e in events if e["type"] == "summary")["metrics"]
    test_aurc = {(a["source"], a["method"]): float(a["aurc_balanced"]) for a in aurc if a["split"] == "test"}
    assert summary["test/aurc_balanced"] == pytest.approx(min(test_aurc.values()), abs=1e-5)
    assert summary["test/aurc_balanced/uniform/plugin_worst"] == pytest.approx(test_aurc[("uniform", "plugin_worst")],
                                                                              abs=1e-5)
    (verdict,) = [e for e in events if e["type"] == "verdict"]
    assert verdict["split"] == "test" and "no gate beside the uniform average" in verdict["text"]
    per_rate = [e for e in events if e["type"] == "epoch"]
    assert [e["epoch"] for e in per_rate] == list(range(1, 18))
    assert per_rate[-1]["metrics"]["test/target_rate"] == 0.8 and "test/balanced_error/a/chow" in per_rate[-1]["metrics"]
    run = json.loads((rd / "run.json").read_text())
    assert run["primary_metric"] == "test/aurc_balanced" and run["metric_goals"]["test/aurc_worst"] == "min"


def _fails(tmp_path, *args) -> str:
    out = engine(tmp_path, "fit-reject", *args)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr
    return last


def test_bad_inputs_fail_in_one_line_with_exit_code_2(tmp_path):
    logits = _write_logits(tmp_path / "logits")
    common = ["--logits-dir", str(logits), "--experts", "a,b", "--splits-dir", str(logits)]
    # rates outside [0, 1) and an unknown method: refused before any run directory is made
    assert _fails(tmp_path, *common, "--rates", "0,0.5,1") == "error: --rates: rates must lie in [0, 1), got 1.0"
    assert _fails(tmp_path, *common, "--methods", "chow,oracle") == (
        "error: --methods 'oracle' is not one of: chow, plugin_balanced, plugin_worst")
    assert run_dirs(tmp_path) == []
    assert _fails(tmp_path, *common, "--source", "c") == (
        "failed: unknown source 'c'; choose from all, uniform, a, b")
    assert "--source gate needs a gate" in _fails(tmp_path, *common, "--source", "gate")
    # experts whose targets differ on a split
    y = np.load(logits / "b" / "val_logits.npz")
    write_npz(logits / "b" / "val_logits.npz", y["logits"], np.roll(y["targets"], 1))
    msg = _fails(tmp_path, *common)
    assert msg.startswith("failed: experts disagree on the targets of split 'val'"), msg
    # a source without tunev logits
    no_tunev = _write_logits(tmp_path / "no_tunev", splits=("val", "test"), per_class=(6, 20))
    msg = _fails(tmp_path, "--logits-dir", str(no_tunev), "--experts", "a,b", "--splits-dir", str(no_tunev))
    assert msg.startswith("failed: no 'tunev' logits for expert 'a'") and "recompute-logits --splits" in msg, msg
    # a group with no sample in S1: tunev holds head classes only
    head_only = _write_logits(tmp_path / "head_only")
    z = np.load(head_only / "a" / "tunev_logits.npz")
    keep = z["targets"] < 5
    for e in ("a", "b"):
        f = np.load(head_only / e / "tunev_logits.npz")
        write_npz(head_only / e / "tunev_logits.npz", f["logits"][keep], f["targets"][keep])
    msg = _fails(tmp_path, "--logits-dir", str(head_only), "--experts", "a,b", "--splits-dir", str(head_only))
    assert msg.startswith("failed: group 'tail' has no sample in split 'tunev'"), msg
    for rd in run_dirs(tmp_path):  # each started run says why, in its status
        status = json.loads((rd / "status.json").read_text())
        assert status["state"] == "failed" and status["exit_code"] == 2 and "\n" not in status["error"]


def test_every_aurc_and_error_key_ranks_lower_first():
    """The per (source, method) keys end in a method's name, which says nothing of a goal: the goal
    declared for the key above them holds (engine.core.config.goal_for)."""
    from engine.core.config import goal_for
    from engine.reject.config import FitRejectConfig

    goals = FitRejectConfig.metric_goals
    for key in ("test/aurc_balanced", "test/aurc_worst/gate/plugin_worst", "val/aurc_balanced/ce/chow",
                "test/balanced_error/uniform/plugin_balanced", "test/worst_error/gate/chow"):
        assert goal_for(key, goals) == "min", key
    assert goal_for("test/aurc_balanced_gain", goals) == "max"  # a prefix is a whole path segment, not a string
