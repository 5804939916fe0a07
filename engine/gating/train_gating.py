"""train-gating: MAP routing over frozen experts, one phase per function.

Features of the experts' posteriors are built once per split (the experts
are frozen); each epoch then only runs the small MLP, with plain autograd through
:func:`engine.gating.losses.gating_loss`, ``clip_grad_norm_`` and ``torch.optim.AdamW``.
``train_one_epoch`` and ``evaluate`` are the phases; ``run`` wires them to the run
directory and ends with the results table (each expert, uniform average, gate, oracle).
"""

from __future__ import annotations

import copy
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils import clip_grad_norm_, parameters_to_vector, vector_to_parameters

from engine.common.checkpoint import load_checkpoint, save_checkpoint
from engine.common.groups import ClassGroups
from engine.common.seeding import prepare_job
from engine.core.config import JobSpec
from engine.core.errors import JobError
from engine.core.recorder import RunRecorder
from engine.core.rundir import atomic_write_json
from engine.gating import losses
from engine.gating.config import TrainGatingConfig
from engine.gating.data import (
    check_logits_dir,
    has_split,
    load_class_counts,
    load_class_weights,
    load_split,
)
from engine.gating.evaluation import (
    load_by_group,
    mixture_metrics,
    mixture_predict,
    results_table,
    routing_stats,
    save_results,
    uniform_verdict,
)
from engine.gating.features import (
    FeatureNorm,
    PreparedSplit,
    feature_names,
    prepare_split,
)
from engine.gating.losses import TERMS
from engine.gating.model import (
    GatingMLP,
    dropout_masks,
    gate_weights,
    router_temperature,
)

GROUPS = ("head", "tail")  # the prior's groups, from ClassGroups (tail: at most 20 train-LT images)


@dataclass
class TrainTensors:
    """The train split as the optimiser sees it, on the device."""

    x: torch.Tensor  # normalised features (n, D)
    logp_target: torch.Tensor  # (n, E)
    sample_weight: torch.Tensor  # class weight of each sample's target (n,)
    group_onehot: torch.Tensor  # (n, len(GROUPS)) float

    def __len__(self) -> int:
        return len(self.x)


def linear_warmup_cosine(warmup_epochs: int, epochs: int):
    """LR factor per epoch (0-based): linear warm-up to 1, then cosine decay towards 0 at the last epoch."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        span = max(epochs - warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / span))

    return factor


@dataclass
class EpochPlan:
    """One epoch's batches, drawn and gathered before it starts (on the worker, while the epoch
    before it trains): its order, the train tensors in that order, dropout masks, router noise;
    and the buffers the training step fills (loss terms, the routing weights each sample got)."""

    epoch: int
    temperature: float
    order: torch.Tensor  # (n,) the split's samples in the epoch's order
    data: TrainTensors  # gathered in that order
    masks: list[torch.Tensor] | None  # dropout multipliers (n, width) per hidden layer
    noise: torch.Tensor | None  # (n, E) standard normal draws of the top-k router
    bounds: list[tuple[int, int]]
    sums: torch.Tensor  # (1 + len(TERMS),) size-weighted sums of each batch's total loss and terms
    weights: torch.Tensor  # (n, E) the routing weights in training mode, in the epoch's order


def plan_epoch(epoch: int, data: TrainTensors, cfg: TrainGatingConfig, gen: torch.Generator,
               mask_rng: np.random.Generator) -> EpochPlan:
    """Everything random or per-sample, drawn and gathered once per epoch: one randperm indexes the
    on-device tensors. Draws from ``gen`` (order, then router noise) and ``mask_rng`` in a fixed order."""
    n, dev = len(data), data.x.device
    E = data.logp_target.shape[1]
    temperature = router_temperature(epoch, cfg.epochs, cfg.temperature_start, cfg.temperature_end)
    order = torch.randperm(n, generator=gen).to(dev)
    noise = (torch.randn(n, E, generator=gen).to(dev)
             if cfg.router == "top_k" and cfg.noise_std > 0 else None)
    masks = dropout_masks(mask_rng, n, cfg.hidden, cfg.dropout, dev) if cfg.dropout > 0 else None
    gathered = TrainTensors(data.x[order], data.logp_target[order], data.sample_weight[order], data.group_onehot[order])
    return EpochPlan(epoch, temperature, order, gathered, masks, noise, batch_bounds(n, cfg.batch_size),
                     torch.zeros(1 + len(TERMS), device=dev), torch.empty(n, E, device=dev))


def train_one_epoch(model: GatingMLP, opt: torch.optim.Optimizer, plan: EpochPlan, cfg: TrainGatingConfig,
                    log_prior: torch.Tensor, rec: RunRecorder) -> None:
    """One pass over the train split: forward, loss, autograd backward, clipped AdamW step per batch.
    Nothing here waits for the device: the loss values and weights stay in the plan's buffers."""
    model.train()
    params = list(model.parameters())
    d = plan.data
    for start, stop in plan.bounds:
        masks = [m[start:stop] for m in plan.masks] if plan.masks is not None else None
        noise = plan.noise[start:stop] if plan.noise is not None else None
        total, terms, routing = losses.gating_loss(
            model(d.x[start:stop], masks), d.logp_target[start:stop], d.sample_weight[start:stop],
            d.group_onehot[start:stop], cfg, plan.temperature, log_prior, noise=noise)
        opt.zero_grad(set_to_none=True)
        total.backward()
        clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        size = stop - start
        plan.sums[0].add_(total.detach(), alpha=size)
        plan.sums[1:].add_(terms, alpha=size)
        plan.weights[start:stop] = routing.weights.detach()
        rec.check_cancelled()


def make_optimizer(model: GatingMLP, cfg: TrainGatingConfig) -> torch.optim.AdamW:
    """AdamW as one fused kernel where torch has one for the device, else its multi-tensor (foreach) form:
    the gate's steps are tiny, so per-parameter kernels would be most of their cost."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except RuntimeError:  # "`fused=True` requires all the params to be ... on a supported device"
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def epoch_stats(plan: EpochPlan, cfg: TrainGatingConfig) -> tuple[dict[str, float], torch.Tensor]:
    """A trained epoch's mean loss terms (each batch weighted by its size), and the routing weights
    each sample got in it (n, E) in the split's order."""
    sums = (plan.sums / len(plan.order)).tolist()
    stats = {"train/loss": sums[0]}
    on = {"nll": True, "lb": cfg.router == "top_k" and cfg.lambda_lb > 0, "entropy": cfg.lambda_entropy > 0,
          "resp_kl": cfg.lambda_resp > 0, "prior_kl": cfg.lambda_prior > 0}
    stats.update({f"train/{t}": v for t, v in zip(TERMS, sums[1:]) if on[t]})
    in_order = torch.empty_like(plan.weights)
    in_order[plan.order] = plan.weights
    return stats, in_order


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch; a lone leftover sample joins the batch before it
    (a batch of one adds noise, not signal, and no sample is left out of the epoch)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(a, b) for a, b in zip(starts, starts[1:] + [n])]


def evaluate(model: GatingMLP, x: torch.Tensor, prep: PreparedSplit, groups: ClassGroups, cfg,
             temperature: float, prefix: str) -> tuple[dict[str, float], dict]:
    """The gated mixture's scores on a split, and its routing statistics."""
    w = gate_weights(model, x, cfg, temperature)
    return mixture_metrics(prep, w, groups, prefix), routing_stats(w, prep)


@dataclass
class EpochEnd:
    """What a report needs of the training state at the end of its epoch, copied there (training
    goes on meanwhile): the flat parameters, and the optimiser's and scheduler's state for checkpoints."""

    plan: EpochPlan
    weights: torch.Tensor
    optimizer: dict
    scheduler: dict
    lr: float


class EpochWorker:
    """The epoch loop's second thread: it prepares the next epoch and reports the last one.

    Why: an epoch's report (mixtures over every class on train and val, the log line
    and events, checkpoints) and its plan (order, masks, gathered batches) need not
    wait for training; on two cores both run beside it. A report evaluates its own
    model holding a copy of the weights from the end of its epoch, so nothing depends
    on how the threads interleave. The worker runs its tasks in the order they are
    given (the random draws of each epoch's plan happen in epoch order); at most one
    report is in flight: :meth:`report` first waits for the previous one, so an error
    in a report stops training at the next epoch.
    The train/ metrics are those of the weights the loss saw during the epoch (dropout
    and router noise on), as a training accuracy is everywhere; val/ metrics are of the
    eval-mode gate.
    """

    def __init__(self, cfg: TrainGatingConfig, data: TrainTensors, gen: torch.Generator,
                 mask_rng: np.random.Generator, train: PreparedSplit, val: PreparedSplit, val_x: torch.Tensor,
                 groups: ClassGroups, meta: dict, history: list[dict], rec: RunRecorder, threads: int):
        self.cfg, self.data, self.gen, self.mask_rng = cfg, data, gen, mask_rng
        self.train, self.val, self.val_x, self.groups = train, val, val_x, groups
        self.meta, self.history, self.rec = meta, history, rec
        self.model = GatingMLP(meta["num_features"], len(train.experts), cfg.hidden, cfg.dropout).to(val_x.device)
        self.model.requires_grad_(False)
        self.best, self.best_epoch = float("-inf"), 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="gating-epochs", initializer=_worker_settings,
                                       initargs=(threads,))
        self.pending: Future | None = None

    def plan(self, epoch: int) -> Future:
        """:func:`plan_epoch` for ``epoch``, as a future."""
        return self.pool.submit(plan_epoch, epoch, self.data, self.cfg, self.gen, self.mask_rng)

    def report(self, end: EpochEnd) -> None:
        """Hand over a trained epoch (its state already copied)."""
        self.wait()
        self.pending = self.pool.submit(self._report, end)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        """Wait for the report in flight (its error, if any, is raised) and stop the worker."""
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _report(self, end: EpochEnd) -> None:
        cfg, rec, experts, plan = self.cfg, self.rec, self.train.experts, end.plan
        epoch, temperature = plan.epoch, plan.temperature
        vector_to_parameters(end.weights, self.model.parameters())
        stats, train_w = epoch_stats(plan, cfg)
        routing = routing_stats(train_w, self.train)
        _, pred = mixture_predict(self.train, train_w)
        stats["train/mix_acc"] = float((pred == self.train.targets).float().mean())
        stats["train/eff_experts"] = routing["eff_experts"]
        for i, e in enumerate(experts):
            stats[f"routed_acc/{e}"] = routing["routed_acc"][i]
        val_metrics, val_routing = evaluate(self.model, self.val_x, self.val, self.groups, cfg, temperature, "val")
        stats.update(val_metrics)
        stats["val/eff_experts"] = val_routing["eff_experts"]
        stats.update({"temperature": temperature, "lr": end.lr})
        rec.log_epoch(epoch, stats)
        rec.log_expert_load(epoch, experts, routing["mean_weight"], routing["top1_share"])
        self.history.append({"epoch": epoch, **stats})
        state = {**self.meta, "model": self.model.state_dict(), "optimizer": end.optimizer,
                 "scheduler": end.scheduler, "epoch": epoch, "temperature": temperature, "metrics": stats}
        score = stats[TrainGatingConfig.primary_metric]
        if score > self.best:
            self.best, self.best_epoch = score, epoch
            save_checkpoint(state, rec.run_dir.checkpoints / "best_gating.pth")
        if epoch == cfg.epochs:
            save_checkpoint(state, rec.run_dir.checkpoints / "final_gating.pth")


def _worker_settings(threads: int) -> None:
    """What ``run`` set for this job's main thread, for the worker: torch's thread count and
    flushing subnormals are per thread (OpenMP's and the FPU's state), not per process."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def train_epochs(model: GatingMLP, data: TrainTensors, cfg: TrainGatingConfig, train: PreparedSplit,
                 val: PreparedSplit, val_x: torch.Tensor, groups: ClassGroups, log_prior: torch.Tensor,
                 gen: torch.Generator, mask_rng: np.random.Generator, meta: dict, history: list[dict],
                 rec: RunRecorder) -> tuple[float, int]:
    """The epoch loop: train on this thread, plan and report on the other (:class:`EpochWorker`).
    Returns the best val balanced accuracy and its epoch.

    The job's torch threads (``--threads``, default one per core) are split between the two:
    each thread's OpenMP team spins while it waits, so two full teams on the same cores (two
    threads each on two cores) ran the job 2.5x slower than one thread each.
    """
    total = torch.get_num_threads()
    train_threads = max(1, total // 2)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_cosine(cfg.warmup_epochs, cfg.epochs))
    worker = EpochWorker(cfg, data, gen, mask_rng, train, val, val_x, groups, meta, history, rec,
                         threads=max(1, total - train_threads))
    torch.set_num_threads(train_threads)
    try:
        next_plan = worker.plan(1)
        for epoch in range(1, cfg.epochs + 1):
            plan = next_plan.result()
            if epoch < cfg.epochs:
                next_plan = worker.plan(epoch + 1)
            lr = opt.param_groups[0]["lr"]
            train_one_epoch(model, opt, plan, cfg, log_prior, rec)
            sched.step()
            worker.report(EpochEnd(plan, parameters_to_vector(model.parameters()).detach().clone(),
                                   copy.deepcopy(opt.state_dict()), sched.state_dict(), lr))
    finally:
        worker.close()
        torch.set_num_threads(total)
    return worker.best, worker.best_epoch


def _group_index(targets: torch.Tensor, groups: ClassGroups) -> torch.Tensor:
    tail = torch.from_numpy(groups.mask("tail"))
    return tail[targets].long()  # 0 head, 1 tail (GROUPS)


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: TrainGatingConfig = spec.config  # type: ignore[assignment]
    device, gen = prepare_job(cfg)
    # AdamW's second moments of tiny gradients go subnormal within a few hundred steps, and x86
    # cores take ~100x longer per subnormal operand: flushing them to zero halved a CPU step here.
    torch.set_flush_denormal(True)
    mask_rng = np.random.default_rng(cfg.seed)  # dropout masks (see keep_masks)
    experts = cfg.experts

    # -- inputs: every check before any training, so bad input fails in seconds
    if cfg.val_split == cfg.train_split:
        raise JobError(f"--val-split and --train-split are both '{cfg.train_split}'; select the gate on held-out data")
    root = check_logits_dir(cfg.logits_dir, experts)
    kw = dict(labels_dir=cfg.labels_dir, dataset=cfg.dataset)
    train_logits = load_split(root, experts, cfg.train_split, num_classes=cfg.num_classes, **kw)
    C = train_logits.num_classes
    val_logits = load_split(root, experts, cfg.val_split, num_classes=C, **kw)
    class_w, w_note = load_class_weights(cfg.class_weights, C)
    counts, c_note = load_class_counts(cfg.class_counts, root, experts, train_logits.targets, C, cfg.train_share)
    groups = ClassGroups(tuple(int(c) for c in counts))
    print(f"{w_note}; {c_note}", flush=True)
    test_split = cfg.test_split if cfg.test_split and has_split(root, experts, cfg.test_split) else None
    if cfg.test_split and not test_split:
        print(f"note: no '{cfg.test_split}' logits for every expert; the results table covers {cfg.val_split} only", flush=True)

    train = prepare_split(train_logits, cfg.feature_chunk_mb)
    val = prepare_split(val_logits, cfg.feature_chunk_mb)
    del train_logits, val_logits
    norm = FeatureNorm.fit(train.features)
    group = _group_index(train.targets, groups)
    log_prior, present = losses.group_prior(train.expert_correct, group, len(GROUPS), cfg.prior_temperature)
    prior_info = {g: [round(v, 4) for v in log_prior[i].exp().tolist()] for i, g in enumerate(GROUPS) if present[i]}
    print(f"{cfg.train_split}: {train.num_samples} samples, {cfg.val_split}: {val.num_samples}, {C} classes, "
          f"{len(experts)} experts, {train.features.shape[1]} features; group prior {prior_info}", flush=True)
    atomic_write_json(rec.run_dir.artifacts / "inputs.json", {
        "logits_dir": str(root), "experts": experts, "num_classes": C, "feature_names": feature_names(experts),
        "splits": {cfg.train_split: train.num_samples, cfg.val_split: val.num_samples, "test": test_split},
        "class_weights": w_note, "class_counts": c_note, "groups": groups.to_json()["groups"],
        "group_prior": prior_info})

    data = TrainTensors(
        x=norm(train.features).to(device),
        logp_target=train.logp_target.to(device),
        sample_weight=torch.from_numpy(class_w).float()[train.targets].to(device),
        group_onehot=torch.nn.functional.one_hot(group, len(GROUPS)).float().to(device),
    )
    val_x = norm(val.features).to(device)
    log_prior = log_prior.to(device)

    model = GatingMLP(train.features.shape[1], len(experts), cfg.hidden, cfg.dropout).to(device)

    ckpt_dir = rec.run_dir.checkpoints
    meta = {"experts": experts, "num_classes": C, "num_features": int(train.features.shape[1]),
            "hidden": cfg.hidden, "dropout": cfg.dropout, "router": cfg.router, "top_k": cfg.top_k,
            "feature_mean": norm.mean, "feature_std": norm.std, "class_counts": [int(c) for c in counts],
            "config": cfg.model_dump(mode="json")}
    history: list[dict] = []
    try:
        best, best_epoch = train_epochs(model, data, cfg, train, val, val_x, groups, log_prior, gen, mask_rng, meta,
                                        history, rec)
    finally:
        # Once, not per epoch (events.jsonl already holds every epoch as it happens); also after a crash or cancel.
        atomic_write_json(rec.run_dir.artifacts / "training_history.json", history)

    ckpt = load_checkpoint(ckpt_dir / "best_gating.pth", map_location=device)
    model.load_state_dict(ckpt["model"])
    print(f"best val/balanced_acc {best:.4f} at epoch {best_epoch}; results of that gate:", flush=True)
    splits = {cfg.val_split: (val, val_x)}
    if test_split:
        test = prepare_split(load_split(root, experts, test_split, num_classes=C, **kw), cfg.feature_chunk_mb)
        splits[test_split] = (test, norm(test.features).to(device))
    report(model, splits, groups, cfg, ckpt["temperature"], best_epoch, rec)


def report(model: GatingMLP, splits: dict[str, tuple[PreparedSplit, torch.Tensor]], groups: ClassGroups,
           cfg: TrainGatingConfig, temperature: float, best_epoch: int, rec: RunRecorder) -> None:
    """The results table of the best gate beside each expert, the uniform average and the oracle."""
    tables, verdicts, by_group, summary = {}, {}, {}, {"best_epoch": float(best_epoch)}
    for name, (prep, x) in splits.items():
        w = gate_weights(model, x, cfg, temperature)
        tables[name] = results_table(prep, w, groups)
        stats = routing_stats(w, prep)
        by_group[name] = load_by_group(w, prep.targets, groups)
        verdicts[name] = uniform_verdict(stats, tables[name], name) + f"; mean weights by group {by_group[name]}"
        summary[f"{name}/gate/eff_experts"] = stats["eff_experts"]
        summary[f"{name}/gate/tv_from_uniform"] = stats["tv_from_uniform"]
        for row, metrics in tables[name].items():
            summary.update({f"{name}/{row}/{k}": v for k, v in metrics.items()})
    save_results(rec, tables, verdicts, {"best_epoch": best_epoch, "checkpoint": "best_gating.pth",
                                         "experts": cfg.experts, "load_by_group": by_group})
    rec.log_summary(summary)


