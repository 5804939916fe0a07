"""The rejectors of Narasimhan et al. (ICLR 2024) and Chow's rule: pure torch, no I/O.

With group weights beta, alpha and mu per group and w_k = K beta_k / alpha_k,

    classify  h(x) = argmax_y w_[y] eta_y(x)
    reject    iff max_y w_[y] eta_y(x) < sum_y' (w_[y'] - mu_[y']) eta_y'(x) - c.

w and mu are constant within a group, so the rule needs of a posterior only its
largest probability and the argmax within each group, and each group's mass:
:class:`GroupStats`, (N, K) instead of (N, C). Everything after that reduction is
batched over B parameter rows at once, each row one (target rate, mu) pair: the
fixed point of alpha, the percentile thresholds and the group errors are a few
(B, N, K) tensor operations per step instead of a Python loop per rate and grid
value (benchmarks/bench_reject.py holds that loop as the reference).

Chow's rule is the same rule with alpha = 1, beta = 1/K and mu = 1: w = 1 and the
right-hand side is -c, so its score is max_y eta_y(x) exactly (no sum of
probabilities that is 1 only up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# alpha_k is an acceptance share; a group rejected entirely would give w_k = inf.
ALPHA_FLOOR = 1e-6


@dataclass
class GroupStats:
    """What the rule needs of one split's posteriors, per sample and group."""

    top: torch.Tensor  # (N, K) float64: max over y in G_k of eta_y(x)
    correct: torch.Tensor  # (N, K) bool: the argmax within G_k is the label
    mass: torch.Tensor  # (N, K) float64: sum over y in G_k of eta_y(x)
    group: torch.Tensor  # (N,) int64: the group of the label
    weight: torch.Tensor | None = None  # (N,) float64 error weight of each sample (reweighted test); None: 1

    @property
    def num_samples(self) -> int:
        return len(self.group)

    @property
    def num_groups(self) -> int:
        return self.top.shape[1]

    def onehot(self) -> torch.Tensor:
        """(N, K) float64 membership of each sample's label in each group."""
        return torch.nn.functional.one_hot(self.group, self.num_groups).double()

    def group_sizes(self) -> torch.Tensor:
        return torch.bincount(self.group, minlength=self.num_groups)


def group_stats(probs: torch.Tensor, targets: torch.Tensor, class_group: torch.Tensor, num_groups: int) -> GroupStats:
    """Reduce posteriors ``probs`` (n, C) over the classes of each group; ``class_group`` (C,) maps class -> group.

    The columns are put in group order once (no copy when each group's classes are already one run, as
    classes sorted by count are), and each group is then a slice: its max, argmax and sum read it once.
    Masking each group in turn read and wrote the whole block K times (7x slower at C = 8142)."""
    n = len(probs)
    order = torch.argsort(class_group, stable=True)
    if not torch.equal(order, torch.arange(len(order))):
        probs = probs.index_select(1, order)
    bounds = torch.bincount(class_group, minlength=num_groups).cumsum(0).tolist()
    top = torch.empty(n, num_groups, dtype=torch.float64)
    correct = torch.empty(n, num_groups, dtype=torch.bool)
    mass = torch.empty(n, num_groups, dtype=torch.float64)
    start = 0
    for k, stop in enumerate(bounds):
        if stop > start:
            value, arg = probs[:, start:stop].max(dim=1)
            top[:, k] = value
            correct[:, k] = order[arg + start] == targets
            mass[:, k] = probs[:, start:stop].sum(1, dtype=torch.float64)
        else:  # a group without classes: nothing to predict, no mass (the job refuses such groups)
            top[:, k], correct[:, k], mass[:, k] = -1.0, False, 0.0
        start = stop
    return GroupStats(top, correct, mass, class_group[targets])


def concat_stats(parts: list[GroupStats]) -> GroupStats:
    """Row chunks of one split, in order, as one."""
    return GroupStats(torch.cat([p.top for p in parts]), torch.cat([p.correct for p in parts]),
                      torch.cat([p.mass for p in parts]), torch.cat([p.group for p in parts]))


# --------------------------------------------------------------------------- #
# The rule, batched over parameter rows


def rule_weights(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """w_k = K beta_k / alpha_k for rows (B, K)."""
    return alpha.shape[-1] * beta / alpha.clamp_min(ALPHA_FLOOR)


def scores(stats: GroupStats, w: torch.Tensor, mu: torch.Tensor,
           with_right: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For parameter rows w, mu (B, K): the score s = max_y w_[y] eta_y - sum_y' (w - mu)_[y'] eta_y' (B, N),
    rejected iff s < -c, and whether h(x) is right (B, N; None unless ``with_right``: the fixed point of
    alpha counts acceptances only).

    The max over groups is a running maximum over the K (2 or 3) columns: (B, N) passes, where a
    (B, N, K) product, max and gather took 3x longer."""
    best = w[:, :1] * stats.top[:, 0]
    right = stats.correct[:, 0].expand(len(w), -1).clone() if with_right else None
    for k in range(1, stats.num_groups):
        cand = w[:, k : k + 1] * stats.top[:, k]
        if with_right:
            better = cand > best
            best = torch.where(better, cand, best)
            right = torch.where(better, stats.correct[:, k], right)
        else:
            best = torch.maximum(best, cand)
    return best - (w - mu) @ stats.mass.T, right


def percentile_thresholds(s: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """Per row b the threshold t_b rejecting (s < t_b) the share rates[b] of that row's samples:
    the round(r N)-th smallest score, so the achieved rate is within 1/(2N) of the target when scores
    do not tie there. -t is the rule's c. Labels play no part.

    The rows are sorted by numpy (no copy: the tensor's own memory): its vectorised sort took a
    twelfth of torch's CPU sort on (221, 1000) float64 rows, and torch has no selection of a
    different k per row."""
    n = s.shape[1]
    k = torch.round(rates.double() * n).long().clamp_(0, n - 1)
    ordered = np.sort(s.detach().cpu().numpy(), axis=1)
    return torch.from_numpy(ordered[np.arange(len(k)), k.numpy()]).to(s.device)


def accept_at(s: torch.Tensor, rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accepted samples (B, N) of each row at its target rate, and the row's threshold t (c = -t)."""
    t = percentile_thresholds(s, rates)
    return s >= t[:, None], t


@dataclass
class GroupRates:
    """Per row (B, K): the error among accepted samples of each group, and each group's coverage; per row the
    share rejected."""

    error: torch.Tensor
    coverage: torch.Tensor
    rejected: torch.Tensor  # (B,)

    def balanced(self) -> torch.Tensor:
        return self.error.mean(-1)

    def worst(self) -> torch.Tensor:
        return self.error.max(-1).values


def group_rates(stats: GroupStats, accept: torch.Tensor, right: torch.Tensor, empty_error: float) -> GroupRates:
    """e_k = (weighted) errors among the accepted samples of group k / (weighted) accepted samples of group k;
    ``empty_error`` where a group has no accepted sample."""
    onehot = stats.onehot()
    acc = accept.double()
    weighted = acc if stats.weight is None else acc * stats.weight
    n_acc = weighted @ onehot
    n_wrong = (weighted * (~right)) @ onehot
    error = torch.where(n_acc > 0, n_wrong / n_acc.clamp_min(1e-300), torch.full_like(n_acc, empty_error))
    coverage = (acc @ onehot) / stats.group_sizes().double().clamp_min(1)
    return GroupRates(error, coverage, 1 - acc.mean(1))


# --------------------------------------------------------------------------- #
# Fitting


def alpha_fixed_point(stats: GroupStats, beta: torch.Tensor, mu: torch.Tensor, rates: torch.Tensor, iters: int,
                      damping: float, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's inner loop for every row at once: alpha_k = K P(y in G_k) to start, then up to ``iters``
    times: c by percentile for the row's rate, alpha <- (1 - d) alpha + d K P(accepted, y in G_k). A row stops
    once no alpha_k moves by ``tol`` or more. Returns alpha (B, K) and the updates each row took (B,)."""
    B, K = beta.shape
    onehot = stats.onehot()
    n = stats.num_samples
    alpha = (K * onehot.mean(0)).expand(B, K).clone()
    steps = torch.zeros(B, dtype=torch.long)
    active = torch.arange(B)
    for _ in range(iters):
        s, _ = scores(stats, rule_weights(alpha[active], beta[active]), mu[active], with_right=False)
        accept, _ = accept_at(s, rates[active])
        target = K * (accept.double() @ onehot) / n
        move = damping * (target - alpha[active])
        alpha[active] += move
        steps[active] += 1
        active = active[move.abs().max(-1).values >= tol]
        if len(active) == 0:
            break
    return alpha, steps


@dataclass
class Fitted:
    """A fitted rejector per target rate (rows R): its alpha, mu, beta, and the selection objective on S2."""

    alpha: torch.Tensor  # (R, K)
    mu: torch.Tensor  # (R, K)
    beta: torch.Tensor  # (R, K)
    objective: torch.Tensor  # (R,) sum_k beta_k e_k on S2 at the chosen mu
    steps: torch.Tensor  # (R,) alpha updates at the chosen mu


def mu_grid(lambdas: list[float], num_groups: int) -> torch.Tensor:
    """mu rows (L, K): mu_0 = 0 (adding a constant to every mu_k only moves c), the others every combination of
    grid values; K = 2 gives the paper's [0, lambda]."""
    grid = torch.tensor(lambdas, dtype=torch.float64)
    rest = torch.cartesian_prod(*[grid] * (num_groups - 1)).reshape(-1, num_groups - 1)
    return torch.cat([torch.zeros(len(rest), 1, dtype=torch.float64), rest], dim=1)


def cs_plugin(s1: GroupStats, s2: GroupStats, beta: torch.Tensor, rates: torch.Tensor, mus: torch.Tensor, iters: int,
              damping: float, tol: float, empty_error: float) -> Fitted:
    """Algorithm 1 (CS-plug-in) for every target rate: alpha by the fixed point on S1 for each mu of the grid,
    then per rate the mu with the lowest sum_k beta_k e_k on S2 (c again by percentile on S2)."""
    R, L = len(rates), len(mus)
    rates_b = rates.repeat_interleave(L)
    beta_b = beta.repeat_interleave(L, dim=0)
    mu_b = mus.repeat(R, 1)
    alpha, steps = alpha_fixed_point(s1, beta_b, mu_b, rates_b, iters, damping, tol)
    s, right = scores(s2, rule_weights(alpha, beta_b), mu_b)
    accept, _ = accept_at(s, rates_b)
    objective = (beta_b * group_rates(s2, accept, right, empty_error).error).sum(-1).view(R, L)
    best, pick = objective.min(dim=1)  # ties: the first grid value
    rows = torch.arange(R) * L + pick
    return Fitted(alpha[rows], mu_b[rows], beta.clone(), best, steps[rows])


def eg_step(beta: torch.Tensor, error: torch.Tensor, step: float) -> torch.Tensor:
    """Exponentiated gradient on the simplex: beta_k exp(xi e_k), normalised per row."""
    new = beta * torch.exp(step * error)
    return new / new.sum(-1, keepdim=True)


def worst_group_plugin(s1: GroupStats, s2: GroupStats, rates: torch.Tensor, mus: torch.Tensor, rounds: int,
                       step: float, iters: int, damping: float, tol: float, empty_error: float) -> Fitted:
    """Algorithm 2: beta uniform; each round the CS-plug-in with beta, its group errors on S2, and an EG step
    on beta; the last round's rejector is kept (with the beta it was fitted for)."""
    R, K = len(rates), s1.num_groups
    beta = torch.full((R, K), 1.0 / K, dtype=torch.float64)
    fit = None
    for t in range(rounds):
        fit = cs_plugin(s1, s2, beta, rates, mus, iters, damping, tol, empty_error)
        if t + 1 < rounds:  # the last update would fit nothing
            beta = eg_step(beta, evaluate(s2, fit.alpha, fit.mu, fit.beta, rates, empty_error)[0].error, step)
    assert fit is not None
    return fit


def chow(rates: torch.Tensor, num_groups: int) -> Fitted:
    """Chow's rule as the same rule: reject iff max_y eta_y(x) < t (alpha = 1, beta = 1/K, mu = 1: w = 1)."""
    R, K = len(rates), num_groups
    ones = torch.ones(R, K, dtype=torch.float64)
    return Fitted(ones, ones.clone(), ones / K, torch.full((R,), float("nan"), dtype=torch.float64),
                  torch.zeros(R, dtype=torch.long))


def evaluate(stats: GroupStats, alpha: torch.Tensor, mu: torch.Tensor, beta: torch.Tensor, rates: torch.Tensor,
             empty_error: float) -> tuple[GroupRates, torch.Tensor]:
    """A fitted rejector (rows R) on one split, c by the percentile of that split's own scores: its group
    rates and its c (R,)."""
    s, right = scores(stats, rule_weights(alpha, beta), mu)
    accept, t = accept_at(s, rates)
    return group_rates(stats, accept, right, empty_error), -t


def aurc(x: torch.Tensor, error: torch.Tensor, normalised: bool = False) -> torch.Tensor:
    """The trapezoid of error (..., R) over x (R,), on [x_0, x_last]; divided by that width if ``normalised``."""
    area = torch.trapezoid(error, x, dim=-1)
    return area / (x[-1] - x[0]) if normalised else area
