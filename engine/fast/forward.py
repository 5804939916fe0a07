"""The C prediction path (forward.c) of the m-height models built for speed.

It covers fc nets with ReLU and no LayerNorm (``--act relu --no-norm``), alone or as the
experts of a sparse MoE with a linear gate (``--gate-hidden 0``); ``unsupported`` says why
any other model is not, and ``forward_for`` picks the path a job predicts with. The torch
modules stay the definition and run everywhere else; tests/test_mheight_forward.py holds
the two together.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from engine.fast.builder import KernelUnavailable, build
from engine.fast.switch import CpuKernels, use_c
from engine.mheight.data import MAX_M
from engine.mheight.models import FC, Regressor, SparseMoE, Standardize, net_input

SOURCE = Path(__file__).with_name("forward.c")
V = 16  # forward.c's vector width: every layer's output is padded to a multiple of it
CB = 16  # forward.c's codes per block
XS = 80  # forward.c's widest input or layer, in floats


def _padded(n: int) -> int:
    return -(-n // V) * V


def _linears(fc: FC) -> list[nn.Linear]:
    """An fc net's layers in order, the head last."""
    return [m for m in fc.body if isinstance(m, nn.Linear)] + [fc.head]


def unsupported(model: Regressor) -> str | None:
    """None when forward.c computes ``model``, else what it lacks, as a phrase."""
    net = model.net
    if isinstance(net, SparseMoE):
        if not isinstance(net.gate, nn.Linear):
            return "a gate MLP (train it with --gate-hidden 0)"
        if len(net.experts) > V:
            return f"more than {V} experts"
        experts = list(net.experts)
    elif isinstance(net, FC):
        experts = [net]
    else:
        return f"{type(net).__name__} models (it covers fc and sparse MoEs of fc)"
    for e in experts:
        if not isinstance(e, FC):
            return f"{type(e).__name__} experts (it covers fc)"
        if any(not isinstance(m, (nn.Linear, nn.ReLU)) for m in e.body):
            return "LayerNorm or GELU layers (it covers fc trained with --no-norm --act relu)"
        layers = _linears(e)
        if max(layers[0].in_features, *(_padded(m.out_features) for m in layers)) > XS:
            return f"inputs or layers wider than {XS} (it covers --hidden up to {XS // V * V})"
    return None


@cache
def _kernel() -> ctypes.CDLL:
    lib = build(SOURCE)
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.moe_forward.argtypes = [ptr, i64, i64, i64, ptr, ptr, i64, ptr, ptr, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.moe_forward.restype = None
    return lib


def _fold(layer: nn.Linear, inputs: Standardize | None, in_width: int, scale: float = 1.0) -> list[np.ndarray]:
    """[W (in_width, out padded), b (out padded)] of layer, standardisation folded in, zero-padded."""
    w, b = layer.weight.detach().float(), layer.bias.detach().float()
    if inputs is not None:
        w = w * inputs.inv_std
        b = b - w @ inputs.mean
    out = _padded(w.shape[0])
    W = np.zeros((in_width, out), dtype=np.float32)
    W[:w.shape[1], :w.shape[0]] = (w.T / scale).cpu().numpy()
    B = np.zeros(out, dtype=np.float32)
    B[:w.shape[0]] = (b / scale).cpu().numpy()
    return [W.ravel(), B]


class CForward:
    """``model``'s forward pass through forward.c: same inputs, same (N, MAX_M) output."""

    def __init__(self, model: Regressor):
        why = unsupported(model)
        if why is not None:
            raise ValueError(f"forward.c does not cover {why}")
        self.lib = _kernel()
        net = model.net
        moe = isinstance(net, SparseMoE)
        experts = list(net.experts) if moe else [net]
        self.p_input = experts[0].p_input
        self.E, self.K = len(experts), (net.top_k if moe else 1)
        linears = _linears(experts[0])
        self.widths = np.array([linears[0].in_features] + [_padded(m.out_features) for m in linears], dtype=np.int64)
        packed = []
        for e in experts:
            for i, layer in enumerate(_linears(e)):
                packed += _fold(layer, e.inputs if i == 0 else None, int(self.widths[i]))
        self.params = np.ascontiguousarray(np.concatenate(packed))
        self.stride = len(self.params) // self.E
        if moe:
            self.gate_w, self.gate_b = _fold(net.gate, net.gate_inputs, int(self.widths[0]), scale=net.temperature)
            self.gate_b[self.E:] = -np.inf  # padding experts never win
        else:
            self.gate_w = self.gate_b = np.zeros(1, dtype=np.float32)
        Mo = int(self.widths[-1])
        table = model.group_base.detach().float().cpu()
        self.base_cols = table.shape[1]
        base = np.zeros((table.shape[0] * table.shape[1], Mo), dtype=np.float32)
        base[:, :MAX_M] = table.reshape(-1, MAX_M).numpy()
        self.base = base
        self.iscratch = np.empty(0, dtype=np.int64)
        self.fscratch = np.empty(0, dtype=np.float32)

    def __call__(self, P: torch.Tensor, feats: torch.Tensor, k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        X = np.ascontiguousarray(net_input(P, feats, self.p_input).numpy(), dtype=np.float32)
        k, r = (np.ascontiguousarray(t.numpy(), dtype=np.int64) for t in (k, r))
        N, Mo = len(X), int(self.widths[-1])
        # routing tables, kept between calls: fresh ones each call are fresh pages each call
        ints, floats = 2 * N * self.K + self.E + 1, 2 * N * self.K + 3 * CB * XS
        if len(self.iscratch) < ints or len(self.fscratch) < floats:
            self.iscratch, self.fscratch = np.empty(ints, dtype=np.int64), np.empty(floats, dtype=np.float32)
        out = np.empty((N, Mo), dtype=np.float32)
        counts = np.zeros(self.E, dtype=np.int64)  # codes routed to each expert (the kernel needs somewhere to count)
        ptr = lambda a: a.ctypes.data  # noqa: E731
        self.lib.moe_forward(ptr(X), N, self.E, self.K, ptr(self.gate_w), ptr(self.gate_b), len(self.widths) - 2,
                             ptr(self.widths), ptr(self.params), self.stride, ptr(self.base), self.base_cols, ptr(k),
                             ptr(r), ptr(out), ptr(counts), ptr(self.iscratch), ptr(self.fscratch))
        return torch.from_numpy(out)[:, :MAX_M]


def forward_for(model: Regressor, kernels: CpuKernels, device_type: str) -> CForward | None:
    """The forward pass ``predict`` should use: forward.c's where ``kernels`` and the device allow it and
    it covers ``model``, else None (the model's own); it says which in one line."""
    if not use_c(kernels, device_type):
        print(f"forward: torch (--cpu-kernels {kernels}, device {device_type})", flush=True)
        return None
    why = unsupported(model)
    if why is not None:
        print(f"forward: torch (forward.c does not cover {why})", flush=True)
        return None
    try:
        forward = CForward(model)
    except KernelUnavailable as exc:
        print(f"forward: torch ({exc})", flush=True)
        return None
    print("forward: C (engine/fast/forward.c)", flush=True)
    return forward
