"""One training step of the gating MLP by hand: forward, backward, clipping and AdamW on one flat buffer.

Why not autograd and torch.optim: a step is ~15 MFLOP on tensors of at most
128 x 256, so per-kernel and per-tensor overheads rule. Here the parameters
are views of one flat tensor (clipping is one norm, AdamW one fused kernel),
the backward pass is six matrix products written into the flat gradient, and
no graph is built. :class:`GatingMLP` keeps working unchanged on the same
memory (evaluation, ``state_dict``, checkpoints). Tests compare every
gradient with autograd and the optimiser with ``torch.optim.AdamW``.
"""

from __future__ import annotations

import torch

from engine.gating.model import GatingMLP, KeepMasks

_relu_backward = torch.ops.aten.threshold_backward  # grad where the ReLU output is > 0, else 0


class FlatParams:
    """The model's parameters re-pointed at one flat buffer, with a flat gradient beside it."""

    def __init__(self, model: GatingMLP):
        params = list(model.parameters())
        self.data = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.data)
        self.grads: list[torch.Tensor] = []
        offset = 0
        for p in params:
            n = p.numel()
            p.requires_grad_(False)  # gradients come from Step.backward; no autograd graph is ever built
            p.data = self.data[offset : offset + n].view_as(p)
            self.grads.append(self.grad[offset : offset + n].view_as(p))
            offset += n


class AdamW:
    """torch.optim.AdamW (Loshchilov & Hutter 2019; torch's defaults betas (0.9, 0.999), eps 1e-8)
    as one fused kernel on the flat buffer; the clipping factor rides along as its grad_scale."""

    def __init__(self, params: FlatParams, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.p = params
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = torch.zeros_like(params.data)
        self.exp_avg_sq = torch.zeros_like(params.data)
        self.step_t = torch.zeros((), dtype=torch.float32, device=params.data.device)

    def step(self, grad_scale: torch.Tensor | None = None) -> None:
        """``grad_scale``: the gradient is divided by it first, in place (as torch.amp's unscaling)."""
        self.step_t += 1  # the kernel reads the step count for bias correction; torch.optim increments it first
        torch._fused_adamw_([self.p.data], [self.p.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.step_t],
                            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=self.weight_decay,
                            eps=self.eps, amsgrad=False, maximize=False, grad_scale=grad_scale)


def clip_scale(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """max(1, ||g|| / max_norm): dividing by it is torch's clip_grad_norm_ (which multiplies by
    max_norm / (||g|| + 1e-6) clamped at 1); no host sync."""
    return (torch.linalg.vector_norm(grad) + 1e-6).div_(max_norm).clamp_(min=1.0)


class Step:
    """Forward and backward of :class:`GatingMLP` for one batch, gradients into ``params.grad``.

    Dropout multiplies a hidden layer's output by a 0/1 keep mask; its 1 / (1 - p) goes
    into the next matrix product's alpha, in both passes.
    """

    def __init__(self, model: GatingMLP, params: FlatParams):
        layers = [*model.hidden, model.out]
        # views of the flat buffer, fetched once: Module attribute lookups cost as much as a small kernel
        self.weights = [layer.weight for layer in layers]
        self.weights_t = [w.T for w in self.weights]
        self.biases = [layer.bias for layer in layers]
        self.grads = params.grads  # weight, bias per layer, in parameters() order
        self.acts: list[torch.Tensor] = []
        self.alpha = [1.0] * len(self.weights)  # the scale of each layer's input

    def forward(self, x: torch.Tensor, masks: KeepMasks | None) -> torch.Tensor:
        """Router logits (B, E) in train mode; ``masks`` from :func:`engine.gating.model.keep_masks`."""
        self.acts = [x]
        self.alpha = [1.0] + [masks.scale if masks is not None else 1.0] * (len(self.weights) - 1)
        h, last = x, len(self.weights) - 1
        for i in range(last + 1):
            h = torch.addmm(self.biases[i], h, self.weights_t[i], alpha=self.alpha[i])
            if i < last:
                h.relu_()
                if masks is not None:
                    h.mul_(masks.keep[i])
                self.acts.append(h)
        return h

    def backward(self, grad_out: torch.Tensor) -> None:
        g = grad_out
        for i in range(len(self.weights) - 1, -1, -1):
            inp, alpha = self.acts[i], self.alpha[i]
            weight_grad = self.grads[2 * i]
            torch.addmm(weight_grad, g.T, inp, beta=0, alpha=alpha, out=weight_grad)
            torch.sum(g, 0, out=self.grads[2 * i + 1])
            if i:
                # alpha * g @ W (beta=0: inp only lends its shape), then 0 where the ReLU or dropout gave 0
                g = _relu_backward(torch.addmm(inp, g, self.weights[i], beta=0, alpha=alpha), inp, 0)
