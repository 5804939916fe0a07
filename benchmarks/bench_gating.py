"""Gating: 100 epochs at N=10,000, E=3, C=100 against the original loop; memory at iNaturalist scale.

Speed. Ours is the real `train-gating` job run in-process (loading the npz
files, features once, 100 epochs with the per-epoch train and val
evaluation, checkpoints, events, results table). The reference is the
original style of loop: a DataLoader over a TensorDataset of [N, E, C]
logits, batch 128, features rebuilt from the logits every batch (float32,
cheaper than our float64 pass), torch's own dropout, the same model, loss
and optimiser, and a val pass per epoch in the same style. The reference
runs a few epochs; its time per epoch is multiplied to 100 (the per-epoch
work is the same every epoch).

Memory. iNaturalist-2018 scale (N=43,000 gating samples, C=8,142, E=3,
random logits, one val sample per class) through the real job in a
subprocess, a few epochs; peak RSS from the kernel (ru_maxrss of the child).
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N, E, C, EPOCHS, N_VAL = 10_000, 3, 100, 100, 1_000
REF_EPOCHS = 3
INAT_N, INAT_C, INAT_VAL, INAT_EPOCHS = 43_000, 8_142, 8_142, 3
EXPERTS = ["ce", "logit_adjust", "balanced_softmax"]


def write_logits(root: Path, n: int, c: int, split: str, seed: int) -> None:
    """Experts that are each better on a different third of the classes (so routing has something to learn)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    rows = np.arange(n)
    for i, e in enumerate(EXPERTS):
        logits = rng.standard_normal((n, c), dtype=np.float32)
        strong = (y * len(EXPERTS) // c) == i
        logits[rows, y] += np.where(strong, 4.0, 1.5).astype(np.float32)
        (root / e).mkdir(parents=True, exist_ok=True)
        np.savez(root / e / f"{split}_logits.npz", logits=logits, targets=y, predictions=logits.argmax(1))
        del logits


def ours(root: Path, ws: Path, threads: int) -> tuple[float, float]:
    from engine.config import parse_argv
    from engine.jobs import train_gating
    from engine.run import RunDir, RunRecorder

    spec = parse_argv(["train-gating", "--logits-dir", str(root), "--test-split", "none", "--threads", str(threads),
                       "--epochs", str(EPOCHS)])
    rec = RunRecorder(RunDir.create(ws / "runs"), kind=spec.kind, config=spec.config.model_dump(mode="json"),
                      argv=spec.argv, total_epochs=EPOCHS)
    rec._tee_output = lambda: None  # keep the benchmark's output readable
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), rec:
        train_gating.run(spec, rec)
    if rec.exit_code != 0:
        raise RuntimeError(f"train-gating failed: {rec.run_dir.read_status()}")
    return time.perf_counter() - t0, time.process_time() - c0


def reference(root: Path, threads: int) -> tuple[float, float]:
    """Wall and CPU seconds per epoch of the original loop (train + val pass), over REF_EPOCHS epochs."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from engine.gating.config import TrainGatingConfig
    from engine.gating.features import FeatureNorm, posterior_features
    from engine.gating.model import GatingMLP, route
    from engine.jobs.train_gating import gating_loss

    torch.set_num_threads(threads)
    cfg = TrainGatingConfig(logits_dir=str(root))

    def stacked(split):
        arrays = [np.load(root / e / f"{split}_logits.npz") for e in EXPERTS]
        return torch.from_numpy(np.stack([a["logits"] for a in arrays], 1)), torch.from_numpy(arrays[0]["targets"])

    logits, y = stacked("gating")
    val_logits, val_y = stacked("val")
    norm = FeatureNorm.fit(posterior_features(logits.log_softmax(-1)))  # once, to be fair to the reference
    log_prior = torch.full((2, E), -float(np.log(E)))
    model = GatingMLP(7 * E + 3, E, cfg.hidden, cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(0)
    train_dl = DataLoader(TensorDataset(logits, y), batch_size=cfg.batch_size, shuffle=True, generator=gen)
    val_dl = DataLoader(TensorDataset(val_logits, val_y), batch_size=cfg.batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(REF_EPOCHS):
        model.train()
        for lb, yb in train_dl:
            logp = lb.log_softmax(-1)
            x = norm(posterior_features(logp))
            logp_y = logp[torch.arange(len(yb)), :, yb]
            batch = (x, logp_y, torch.ones(len(yb)), torch.nn.functional.one_hot((yb >= C // 2).long(), 2).float())
            total, _ = gating_loss(model(x), batch, cfg, 1.0, log_prior, gen)
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for lb, yb in val_dl:
                logp = lb.log_softmax(-1)
                w = route(model(norm(posterior_features(logp))), "dense", 1.0).weights
                correct += int(((w[..., None] * logp.exp()).sum(1).argmax(-1) == yb).sum())
    return (time.perf_counter() - t0) / REF_EPOCHS, (time.process_time() - c0) / REF_EPOCHS


def step_breakdown(threads: int) -> dict[str, float]:
    """CPU microseconds per batch of 128 for each part of one training step (best of 5 repeats).

    Shows where the time of both loops goes: the MLP and the loss terms are the
    same work in both; collation and per-batch features are the reference's extra.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from engine.gating.config import TrainGatingConfig
    from engine.gating.features import posterior_features
    from engine.gating.model import GatingMLP, dropout_masks
    from engine.jobs.train_gating import gating_loss

    torch.set_num_threads(threads)
    cfg = TrainGatingConfig(logits_dir="unused")
    b = cfg.batch_size
    model = GatingMLP(7 * E + 3, E, cfg.hidden, cfg.dropout).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    x, logp = torch.randn(b, 7 * E + 3), torch.randn(b, E, C).log_softmax(-1)
    batch = (x, logp[:, :, 0], torch.ones(b), torch.nn.functional.one_hot(torch.arange(b) % 2, 2).float())
    masks = dropout_masks(np.random.default_rng(0), b, cfg.hidden, cfg.dropout)
    gen = torch.Generator().manual_seed(0)
    prior = torch.full((2, E), -float(np.log(E)))
    loader = DataLoader(TensorDataset(torch.randn(1280, E, C), torch.zeros(1280, dtype=torch.long)), batch_size=b)

    def mlp():
        model(x, masks).sum().backward()

    def loss_terms():
        z = torch.randn(b, E, requires_grad=True)
        gating_loss(z, batch, cfg, 1.0, prior, gen)[0].backward()

    def optimiser():
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        opt.step()

    def torch_dropout():
        torch.nn.functional.dropout(torch.randn(b, cfg.hidden[0]), cfg.dropout, True)
        torch.nn.functional.dropout(torch.randn(b, cfg.hidden[1]), cfg.dropout, True)

    def collate():
        for _ in loader:
            pass

    def features():
        posterior_features(logp)

    def best(fn, reps=50, per=1):
        fn()
        out = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(reps):
                fn()
            out = min(out, (time.process_time() - t0) / (reps * per) * 1e6)
        return out

    return {
        "MLP forward + backward (both)": best(mlp),
        "loss terms forward + backward (both)": best(loss_terms),
        "grad clipping + fused AdamW (ours)": best(optimiser),
        "torch dropout sampling, 2 layers (reference)": best(torch_dropout),
        "DataLoader indexing + collation (reference)": best(collate, reps=5, per=len(loader)),
        "features from [128, E, C] logits (reference)": best(features),
    }


def inat_peak_rss(tmp: Path) -> tuple[float, float, float, float]:
    """(peak RSS GiB, job wall seconds, size of the logit files GiB, job CPU seconds) at iNaturalist-2018 scale."""
    root = tmp / "inat"
    write_logits(root, INAT_N, INAT_C, "gating", seed=1)
    write_logits(root, INAT_VAL, INAT_C, "val", seed=2)
    size = sum(p.stat().st_size for p in root.rglob("*.npz")) / 2**30
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([str(Path(sys.executable).parent / "engine"), "train-gating", "--preset", "inaturalist2018",
                          "--logits-dir", str(root), "--test-split", "none", "--epochs", str(INAT_EPOCHS),
                          "--warmup-epochs", "1", "--workspace", str(tmp / "ws-inat")],
                         capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"iNaturalist-scale run failed: {out.stderr[-2000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_maxrss / 2**20, wall, size, usage.ru_utime + usage.ru_stime


def run() -> str:
    # One torch thread for both loops: on a shared 2-core machine, two OpenMP threads spin
    # against other processes and made both loops several times slower, not faster.
    threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_logits(tmp / "logits", N, C, "gating", seed=0)
        write_logits(tmp / "logits", N_VAL, C, "val", seed=3)
        load_before = os.getloadavg()[0]
        ref_epoch, ref_cpu_epoch = reference(tmp / "logits", threads)
        our_total, our_cpu = ours(tmp / "logits", tmp / "ws", threads)
        load_after = os.getloadavg()[0]
        ref_total, ref_cpu = ref_epoch * EPOCHS, ref_cpu_epoch * EPOCHS
        parts = step_breakdown(threads)
        rss, wall, size, inat_cpu = inat_peak_rss(tmp)
    rows = "\n".join(f"| {k} | {v:.0f} |" for k, v in parts.items())
    d, (h1, h2) = 7 * E + 3, (256, 128)
    mlp_gflop = 3 * 2 * 128 * (d * h1 + h1 * h2 + h2 * E) * EPOCHS * -(-N // 128) / 1e9
    shared = parts["MLP forward + backward (both)"] + parts["loss terms forward + backward (both)"]
    shared_share = shared / (shared + sum(v for k, v in parts.items() if "(reference)" in k))
    floor = (parts["MLP forward + backward (both)"] + parts["loss terms forward + backward (both)"]) * 1e-6 * EPOCHS * -(-N // 128)
    return f"""## Gating (train-gating)

Speed: 100 epochs at N={N:,} gating samples, E={E}, C={C} (val {N_VAL:,}), batch 128, torch threads: {threads}.

| loop | 100 epochs, wall (s) | 100 epochs, CPU (s) | vs reference (wall) | vs reference (CPU) |
|---|---:|---:|---:|---:|
| reference: DataLoader over [N, E, C] logits, features every batch ({REF_EPOCHS} epochs measured, time per epoch x {EPOCHS}) | {ref_total:.1f} | {ref_cpu:.1f} | 1.0x | 1.0x |
| ours: the whole `train-gating` job (load, features once, 100 epochs with train+val evaluation, checkpoints, table) | {our_total:.1f} | {our_cpu:.1f} | {ref_total / our_total:.1f}x | {ref_cpu / our_cpu:.1f}x |

CPU seconds are what one idle core would need (one torch thread, so CPU time is
not inflated by parallelism); wall seconds include waiting for the shared cores.
Target: at least 10x faster than the reference and under 3 s.

Where a batch's time goes (CPU microseconds per batch of 128, best of 5, same process):

| part | us per batch |
|---|---:|
{rows}

The MLP's forward and backward pass and the loss terms are the same work in both loops
and bound ours from below: {floor:.1f} s for the 7,900 steps of 100 epochs at these
per-batch costs, before any evaluation. The MLP alone is {mlp_gflop:.0f} GFLOP over 100 epochs
(forward plus a backward pass of about twice the forward's work), so the 3 s target asks for
{mlp_gflop / 3:.0f} GFLOP/s from a 2-core CPU before the loss terms, the optimiser and the
per-epoch evaluation; the 10x target asks for the shared MLP and loss work to be a tenth of the
reference's batch, while it is {shared_share:.0%} of it here. Load average of the
shared machine during the measurement: {load_before:.1f} before, {load_after:.1f} after
(2 cores; other users' jobs slow both loops alike, so the ratio holds better than the seconds).

Memory at iNaturalist-2018 scale: N={INAT_N:,} gating samples and {INAT_VAL:,} val samples, C={INAT_C:,},
E={E}, random logits ({size:.1f} GiB of npz files), {INAT_EPOCHS} epochs of the real job in a subprocess:
**peak RSS {rss:.2f} GiB** (target: within 8 GiB), wall {wall:.0f} s, CPU {inat_cpu:.0f} s. Features are built in
float64 blocks of at most 32 MiB; the logits become float32 probabilities in place.
"""
