"""The gating training step on the CPU as C (kernels.c's gate_steps, several batches a call): the
same arithmetic as :class:`engine.gating.backprop.Step`, :meth:`EpochLoss.grad`, ``clip_scale``
and :class:`AdamW` together, on the same epoch plan and the same flat parameters.

The C code gets raw pointers, so everything it touches is contiguous float32 on the
CPU and stays alive as long as it may be called: the buffers for one batch are
allocated here once, an epoch's arrays are pinned by :meth:`begin_epoch` until the next.
"""

from __future__ import annotations

import ctypes

import torch

from engine.gating import native
from engine.gating.backprop import AdamW, Step
from engine.gating.loss_grad import EpochLoss


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeStep:
    """The C step over one model's flat parameters and optimiser state (both updated in place)."""

    def __init__(self, step: Step, opt: AdamW, max_norm: float, max_rows: int):
        """``max_rows``: the largest batch (batch_bounds may add a lone leftover sample to the last)."""
        self.lib = native.load()
        self.opt = opt
        layers = len(step.weights)
        if layers > native.MAX_LAYERS:
            raise native.NativeUnavailable(f"the C step takes at most {native.MAX_LAYERS - 1} hidden layers")
        tensors = [*step.weights, *step.biases, opt.p.data, opt.p.grad, opt.exp_avg, opt.exp_avg_sq]
        if any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() for t in tensors):
            raise native.NativeUnavailable("the C step needs contiguous float32 parameters on the CPU")
        widths = [step.weights[0].shape[1], *(w.shape[0] for w in step.weights)]
        self.acts = [torch.empty(max_rows, n) for n in widths[1:]]  # hidden activations, then the router logits z
        self.gins = [torch.empty(max_rows, n) for n in widths[1:-1]]
        self.grad_z = torch.empty(max_rows, widths[-1])
        a = self.args = native.StepArgs()
        a.sgemm, a.layers = native.sgemm(), layers
        a.width[: layers + 1] = widths
        for name, ts in (("weight", step.weights), ("bias", step.biases), ("weight_grad", step.grads[0::2]),
                         ("bias_grad", step.grads[1::2]), ("act", self.acts), ("gin", self.gins)):
            getattr(a, name)[: len(ts)] = [t.data_ptr() for t in ts]
        a.p, a.g, a.m, a.v = (t.data_ptr() for t in (opt.p.data, opt.p.grad, opt.exp_avg, opt.exp_avg_sq))
        a.n_params, a.step = opt.p.data.numel(), int(opt.step_t)
        a.weight_decay, (a.beta1, a.beta2), a.eps, a.max_norm = opt.weight_decay, opt.betas, opt.eps, max_norm
        a.loss.z, a.loss.grad, a.loss.bias_grad = self.acts[-1].data_ptr(), self.grad_z.data_ptr(), step.grads[-1].data_ptr()
        self.args_ref = ctypes.byref(a)
        self.max_rows = max_rows
        self.epoch_refs: list[torch.Tensor] = []

    def begin_epoch(self, loss: EpochLoss, x: torch.Tensor, keep: list[torch.Tensor] | None, scale: float) -> None:
        """Point the step at this epoch's arrays: ``x`` (n, D) and dropout's ``keep`` masks (n, width)
        per hidden layer in the epoch's order, and its loss constants; the learning rate is read now."""
        cfg, a, la = loss.cfg, self.args, self.args.loss
        if max(stop - start for start, stop in loss.bounds) > self.max_rows:
            raise ValueError(f"a batch is larger than the {self.max_rows} rows the C step's buffers hold")
        G, E = loss.mean_w.shape[1:]
        f32 = dict(dtype=torch.float32)
        refs = {
            "logp": loss.logp.contiguous(), "neg_r_coef": loss.neg_r_coef.reshape(-1).contiguous(),
            "ent_coef": torch.tensor(loss.ent_coef, **f32), "resp_coef": torch.tensor(loss.resp_coef, **f32),
            "log_prior": loss.log_prior.float().contiguous(), "group": loss.group.contiguous(),
            "weights": loss.weights, "mean_w": loss.mean_w, "slots": loss.slots, "dense_mean": loss.dense_mean,
            # prior_rows and mean_rows are one-hot rows scaled per sample: their one non-zero each
            "prior_coef": loss.prior_rows.sum(1), "inv_count": loss.mean_rows.sum(0),
            "noise": loss.noise.contiguous() if loss.noise is not None else None, "resp": loss.resp,
        }
        la.E, la.G, la.k = E, G, cfg.top_k
        la.top_k = int(loss.top_k)
        la.lb = int(loss.top_k and cfg.lambda_lb > 0)
        la.entropy, la.prior = int(cfg.lambda_entropy > 0), int(cfg.lambda_prior > 0)
        la.resp_tempered = int(cfg.lambda_resp > 0 and cfg.resp_temperature != 1.0)
        la.inv_t, la.lb_coef, la.inv_resp_t = loss.inv_t, cfg.lambda_lb * loss.inv_t, 1.0 / cfg.resp_temperature
        for name, t in refs.items():
            setattr(la, name, _ptr(t))
        x = x.contiguous()
        keep = [k.contiguous() for k in keep] if keep is not None else []
        a.x, a.scale, a.lr = x.data_ptr(), scale, self.opt.lr
        a.keep[: a.layers - 1] = [k.data_ptr() for k in keep] or [None] * (a.layers - 1)
        self.bounds = torch.tensor(loss.bounds, dtype=torch.int64)
        self.epoch_refs = [t for t in (*refs.values(), x, *keep) if t is not None]

    def batches(self, b0: int, b1: int) -> None:
        """Forward, loss gradient, backward, clipping and AdamW for each of the epoch's batches [b0, b1)."""
        self.lib.gate_steps(self.args_ref, self.bounds.data_ptr(), b0, b1)

    def end_epoch(self) -> None:
        """The optimiser's step count caught up, for checkpoints and the torch step."""
        self.opt.step_t.fill_(self.args.step)
