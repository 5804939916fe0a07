"""The gating loss's gradient with respect to the router logits in closed form, and its value per epoch.

Same loss as :func:`engine.gating.losses.gating_loss` (the autograd
definition, one function per term in :mod:`engine.gating.losses`); tests hold
the two together. Why by hand: a batch is 128 x E numbers, so autograd's
graph and the ~60 tiny kernels of a term-by-term backward cost more than the
arithmetic. Every term is a function of a = log w, so their gradients add up
in one (B, E) tensor before a single softmax backward; whatever depends only
on the batch's composition (class weights, group counts) is computed once per
epoch; a step computes no loss value, it records what the values need
(w, group means) into epoch buffers, and :meth:`EpochLoss.terms` turns them
into the per-term means once per epoch (lse and r come back from w there).

Derivatives, per sample i of a batch of B (c_i: class weight / batch sum):
  nll       -sum_i c_i lse_i,  lse = log sum_e w_e p_e(y)         d/da = -c_i r,  r = softmax(a + log p(y))
  entropy   -sum_e w_e a_e, batch mean                           d/da = -w (a + 1) / B
  resp_kl   sum_e q_e (log q_e - a_e), batch mean, q detached    d/da = -q / B   (q = r when T = 1)
  prior_kl  sum_g s_g KL(m_g || prior_g), m_g the mean w of group g, s_g = 1 / (groups present)
            d/dw_i = s_g (log m_g + 1 - log prior_g) / count_g   (d/da = w d/dw)
  lb        E sum_e f_e mean_i P_ie, f detached, P = softmax(z / T)   d/dP = E f / B
and a = log_softmax(z / T) over the kept experts: d/dz = (g - w sum_e g_e) / T.
"""

from __future__ import annotations

import torch

from engine.gating.losses import _LOG_FLOOR

TERMS = ("nll", "lb", "entropy", "resp_kl", "prior_kl")


class EpochLoss:
    """One epoch's batches of the train split: constants per epoch, a gradient per step, term means at the end.

    ``logp`` (n, E): log p_e(y) in the epoch's order; ``sample_weight`` (n,) class weights;
    ``group`` (n,) int64; ``bounds`` [(start, stop)] of each batch; ``noise`` (n, E)
    standard normal draws for the top-k router (None: no noise).
    """

    def __init__(self, cfg, logp: torch.Tensor, sample_weight: torch.Tensor, group: torch.Tensor, num_groups: int,
                 bounds: list[tuple[int, int]], log_prior: torch.Tensor, temperature: float,
                 noise: torch.Tensor | None = None):
        n, E = logp.shape
        dev, dt = logp.device, logp.dtype
        self.cfg, self.logp, self.group, self.bounds, self.log_prior = cfg, logp, group, bounds, log_prior
        self.inv_t = 1.0 / temperature
        self.noise = noise * cfg.noise_std if noise is not None and cfg.router == "top_k" else None
        self.top_k = cfg.router == "top_k"
        nb = len(bounds)
        sizes = torch.tensor([b - a for a, b in bounds], device=dev)
        batch_of = torch.repeat_interleave(torch.arange(nb, device=dev), sizes)  # (n,)
        size_of = sizes.to(dt)[batch_of]
        batch_sw = torch.zeros(nb, device=dev, dtype=dt).index_add_(0, batch_of, sample_weight)
        self.coef = sample_weight / batch_sw[batch_of]  # F.nll_loss(weight=)'s normalisation, per batch
        self.nll_coef = self.coef * size_of  # batch b weighs |b| / n in the epoch's mean
        resp_on = cfg.lambda_resp > 0 and cfg.resp_temperature == 1.0
        # -d/da of nll (and of resp_kl when q = r) is r times this
        # (1 / T of the softmax backward is folded into these coefficients)
        self.neg_r_coef = (self.coef + (cfg.lambda_resp / size_of if resp_on else 0.0))[:, None] * -self.inv_t
        self.ent_coef = [-cfg.lambda_entropy * self.inv_t / (b - a) for a, b in bounds]  # one number per batch
        self.resp_coef = [-cfg.lambda_resp * self.inv_t / (b - a) for a, b in bounds]
        # per (batch, group) cell: sample counts, and each present group's share of the prior term
        cell = batch_of * num_groups + group
        count = torch.zeros(nb * num_groups, device=dev, dtype=dt).index_add_(0, cell, torch.ones_like(sample_weight))
        present = (count.view(nb, num_groups) > 0).to(dt)
        self.group_share = present / present.sum(1, keepdim=True).clamp_min(1)  # (nb, G)
        inv_count = 1.0 / count.clamp_min(1)
        # a batch's group means as one product, mean_rows[:, batch] @ w (rows: one-hot / count), and
        # the prior's gradient as another, prior_rows[batch] @ d (d/dm per group, one-hot x coefficient)
        onehot = torch.nn.functional.one_hot(group, num_groups).to(dt)
        self.mean_rows = (onehot * inv_count[cell][:, None]).T.contiguous()  # (G, n)
        self.prior_rows = onehot * (cfg.lambda_prior * self.inv_t * self.group_share.reshape(-1) * inv_count)[cell][:, None]
        # what the term values need, written by the steps
        self.weights = torch.empty(n, E, device=dev, dtype=dt)
        self.resp = torch.empty(n, E, device=dev, dtype=dt) if cfg.resp_temperature != 1.0 else None  # q log(q / w)
        self.mean_w = torch.empty(len(bounds), num_groups, E, device=dev, dtype=dt)
        self.slots = torch.zeros(len(bounds), E, device=dev, dtype=dt)  # top-k: f
        self.dense_mean = torch.zeros(len(bounds), E, device=dev, dtype=dt)  # top-k: mean P

    def grad(self, b: int, z: torch.Tensor) -> torch.Tensor:
        """d loss_b / d z for batch ``b``'s router logits ``z`` (B, E).

        Terms of the form c_i w_i (a multiple of a sample's own weights) vanish in the
        softmax backward (w sums to 1), so the +1 of d/dw (w log w) and of the prior's
        d/dm (m log m) are left out.
        """
        cfg, (start, stop) = self.cfg, self.bounds[b]
        w = self.weights[start:stop]
        if self.top_k:
            noisy = z if self.noise is None else z + self.noise[start:stop]
            kept = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, noisy.topk(cfg.top_k, dim=-1).indices, True)
            a = (noisy * self.inv_t).masked_fill_(~kept, float("-inf")).log_softmax(-1)
        else:
            a = (z * self.inv_t).log_softmax(-1)
        torch.exp(a, out=w)
        s = a + self.logp[start:stop]  # log w_e p_e(y); -inf where top-k dropped e
        if cfg.lambda_resp > 0 and cfg.resp_temperature != 1.0:
            log_r = s.log_softmax(-1)
            log_q = (log_r / cfg.resp_temperature).log_softmax(-1)
            q = log_q.exp()
            torch.mul(q, log_q.clamp_min(_LOG_FLOOR) - a.clamp_min(_LOG_FLOOR), out=self.resp[start:stop])
            g = log_r.exp_().mul_(self.neg_r_coef[start:stop]).add_(q, alpha=self.resp_coef[b])
        else:
            g = s.softmax(-1).mul_(self.neg_r_coef[start:stop])  # r, the responsibilities, times -d/da's coefficient
        if cfg.lambda_entropy > 0:
            g.addcmul_(a.clamp_min(_LOG_FLOOR) if self.top_k else a, w, value=self.ent_coef[b])  # 0 log 0 = 0
        if cfg.lambda_prior > 0:
            mean_w = torch.mm(self.mean_rows[:, start:stop], w, out=self.mean_w[b])  # (G, E)
            d_mean = mean_w.clamp_min(1e-12).log_().sub_(self.log_prior)
            # where a group's mean is clamped, every w of it is 0 and so is its gradient
            g.addcmul_(torch.mm(self.prior_rows[start:stop], d_mean), w)
        grad = g.addcmul_(w, g.sum(-1, keepdim=True), value=-1.0)
        if self.top_k and cfg.lambda_lb > 0:
            dense = (z * self.inv_t).softmax(-1)
            f = torch.sum(kept, 0, dtype=z.dtype, out=self.slots[b]).div_((stop - start) * cfg.top_k)
            torch.mean(dense, 0, out=self.dense_mean[b])
            d_dense = f * (z.shape[1] / (stop - start))  # (E,), the same for every sample
            grad += dense.mul_(d_dense - dense @ d_dense[:, None]).mul_(cfg.lambda_lb * self.inv_t)
        return grad

    def batch_terms(self, b: int) -> torch.Tensor:
        """(5,) the terms of batch ``b`` as gating_loss gives them (after :meth:`grad` ran on it)."""
        start, stop = self.bounds[b]
        return self._terms(slice(start, stop), slice(b, b + 1), stop - start)

    def terms(self) -> torch.Tensor:
        """(5,) each term's batch values averaged over the epoch, weighted by batch size."""
        return self._terms(slice(None), slice(None), len(self.logp))

    def _terms(self, rows: slice, batches: slice, n: int) -> torch.Tensor:
        cfg = self.cfg
        zero = self.weights.new_zeros(())
        sizes = torch.tensor([b - a for a, b in self.bounds[batches]], dtype=zero.dtype, device=zero.device)
        w, logp = self.weights[rows], self.logp[rows]
        s = w.log() + logp  # the step's a + log p(y), back from the weights it recorded
        lse = torch.logsumexp(s, -1, keepdim=True)  # log sum_e w_e p_e(y)
        nll = -(self.nll_coef[rows] @ lse[:, 0]) / n  # sum over b of |b| / n * (-sum_i c_i lse_i)
        ent = -torch.special.xlogy(w, w).sum() / n if cfg.lambda_entropy > 0 else zero
        resp = zero
        if cfg.lambda_resp > 0:
            # q = r: sum_e r_e (log r_e - a_e) = sum_e r_e (log p_e(y) - lse), 0 where r_e = 0
            per = (s - lse).exp_() * (logp - lse) if cfg.resp_temperature == 1.0 else self.resp[rows]
            resp = per.sum() / n
        prior = zero
        if cfg.lambda_prior > 0:
            m = self.mean_w[batches]
            kl = (m * (m.clamp_min(1e-12).log() - self.log_prior)).sum(-1)  # (batches, G)
            prior = sizes @ (kl * self.group_share[batches]).sum(-1) / n
        lb = zero
        if self.top_k and cfg.lambda_lb > 0:
            E = w.shape[1]
            lb = sizes @ (E * (self.slots[batches] * self.dense_mean[batches]).sum(-1)) / n
        return torch.stack([nll, lb, ent, resp, prior])

    def total(self, terms: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        lam = terms.new_tensor([1.0, cfg.lambda_lb, cfg.lambda_entropy, cfg.lambda_resp, cfg.lambda_prior])
        return lam @ terms
