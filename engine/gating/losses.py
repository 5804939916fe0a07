"""The gating loss, one function per term; each returns a scalar averaged over the batch.

:func:`gating_loss` puts them together; training differentiates it with autograd
(a new term is one function here, and nothing else to derive).

Notation: w (n, E) routing weights, log w their logs (-inf where top-k drops an
expert), log p_e(y) (n, E) each expert's log-probability of the true class.
"""

from __future__ import annotations

import torch

from engine.gating.model import Routing, route

# log w is -inf where top-k drops an expert; where it multiplies a zero weight,
# a finite floor keeps 0 * log 0 at 0 in both the value and the gradient.
_LOG_FLOOR = -1e4


def _floored(log_w: torch.Tensor) -> torch.Tensor:
    return log_w.clamp_min(_LOG_FLOOR)


def mixture_nll(log_w: torch.Tensor, logp_target: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """-log sum_e w_e p_e(y), a class-weighted mean: sum_i c_{y_i} l_i / sum_i c_{y_i} (as F.nll_loss's weight=)."""
    nll = -torch.logsumexp(log_w + logp_target, dim=-1)
    if sample_weight is None:
        return nll.mean()
    return (sample_weight * nll).sum() / sample_weight.sum()


def load_balance(dense_probs: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Switch-style E * sum_e f_e P_e (Fedus et al. 2021) for top-k routing.

    f_e: share of the n*k routing slots given to expert e (no gradient);
    P_e: mean router probability of e. Equals 1 when both are uniform.
    """
    E = dense_probs.shape[-1]
    f = kept.float().mean(0) / kept.sum(-1).float().mean()
    return E * (f * dense_probs.mean(0)).sum()


def routing_entropy(w: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """Mean per-sample entropy H(w) = -sum_e w_e log w_e (nats)."""
    return -(w * _floored(log_w)).sum(-1).mean()


def responsibilities(log_w: torch.Tensor, logp_target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """q = softmax(log r / T), r_e = w_e p_e(y) / sum_j w_j p_j(y): the posterior over which expert explains y."""
    return ((log_w + logp_target) / temperature).softmax(-1)


def responsibility_kl(log_w: torch.Tensor, logp_target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean KL(q || w) with q the detached responsibilities (an EM-style target for the gate)."""
    q = responsibilities(log_w.detach(), logp_target, temperature)
    log_q = _floored(q.clamp_min(0).log())
    return (q * (log_q - _floored(log_w))).sum(-1).mean()


def group_prior(expert_correct: torch.Tensor, group: torch.Tensor, num_groups: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prior over experts per group, log softmax(acc_{g,e} / T), and which groups have samples.

    ``expert_correct`` (n, E) bool, ``group`` (n,) group index of each sample's class.
    """
    onehot = torch.nn.functional.one_hot(group, num_groups).double()  # (n, G)
    count = onehot.sum(0)
    acc = (onehot.T @ expert_correct.double()) / count.clamp_min(1)[:, None]  # (G, E)
    return (acc / temperature).log_softmax(-1).float(), count > 0


def group_prior_kl(w: torch.Tensor, group_onehot: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Mean over the groups present in the batch of KL(mean_{i in g} w_i || prior_g).

    ``group_onehot`` (n, G) float, ``log_prior`` (G, E).
    """
    count = group_onehot.sum(0)  # (G,)
    mean_w = (group_onehot.T @ w) / count.clamp_min(1)[:, None]  # (G, E)
    kl = (mean_w * (mean_w.clamp_min(1e-12).log() - log_prior)).sum(-1)
    present = (count > 0).to(w.dtype)
    return (kl * present).sum() / present.sum().clamp_min(1)


TERMS = ("nll", "lb", "entropy", "resp_kl", "prior_kl")


def gating_loss(logits: torch.Tensor, logp_target: torch.Tensor, sample_weight: torch.Tensor | None,
                group_onehot: torch.Tensor, cfg, temperature: float, log_prior: torch.Tensor,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, Routing]:
    """Total loss, the raw value of each of TERMS (0 for one switched off) and the routing the loss saw.

    ``logits`` (n, E) the router's output in train mode; ``noise`` (n, E) the top-k router's
    standard normal draws (else drawn from ``generator``); ``group_onehot`` (n, G) float.
    """
    r = route(logits, cfg.router, temperature, cfg.top_k, cfg.noise_std, generator, train=True, noise=noise)
    zero = logits.new_zeros(())
    nll = mixture_nll(r.log_weights, logp_target, sample_weight)
    lb = load_balance(r.dense_probs, r.kept) if cfg.router == "top_k" and cfg.lambda_lb > 0 else zero
    ent = routing_entropy(r.weights, r.log_weights) if cfg.lambda_entropy > 0 else zero
    resp = responsibility_kl(r.log_weights, logp_target, cfg.resp_temperature) if cfg.lambda_resp > 0 else zero
    prior = group_prior_kl(r.weights, group_onehot, log_prior) if cfg.lambda_prior > 0 else zero
    total = nll + cfg.lambda_lb * lb + cfg.lambda_entropy * ent + cfg.lambda_resp * resp + cfg.lambda_prior * prior
    return total, torch.stack([nll, lb, ent, resp, prior]).detach(), r
