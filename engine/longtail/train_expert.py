"""train-expert: one long-tail expert, one phase per function.

``train_one_epoch`` and ``evaluate`` are the phases of an epoch; ``run`` wires
them to the run directory: metrics per epoch, ``best_<loss>.pth``, a
resumable ``last.pth`` every epoch, then temperature scaling on ``val``
(``final_calibrated_<loss>.pth``), a reliability diagram and the test scores
of the best model.

Training stages: one ("train") for every loss but ``decoupling``, which has
"stage1" (plain CE, the whole network) and "crt" (classifier re-training:
frozen backbone, re-initialised ``fc``, class-balanced sampling, its own
schedule). Epochs are counted across stages; each epoch event names its stage.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from engine.common.calibration import (
    draw_reliability,
    fit_temperature,
    reliability_bins,
)
from engine.common.checkpoint import load_checkpoint, save_checkpoint
from engine.common.device import autocast, uses_bf16, uses_channels_last
from engine.common.groups import ClassGroups
from engine.common.metrics import classification_metrics
from engine.common.schedules import warmup_multistep
from engine.common.seeding import prepare_job
from engine.common.timing import Stopwatch
from engine.core.config import JobSpec
from engine.core.errors import Cancelled, JobError
from engine.core.recorder import RunRecorder
from engine.core.rundir import atomic_write, atomic_write_json
from engine.longtail.config import TrainExpertConfig
from engine.longtail.data.feed import make_feed
from engine.longtail.data.load import load_image_data
from engine.longtail.expert import build_expert, predict
from engine.longtail.losses import make_loss


@dataclass(frozen=True)
class Stage:
    name: str
    first_epoch: int  # 1-based, global
    epochs: int

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1


def stages(cfg: TrainExpertConfig) -> list[Stage]:
    if cfg.loss == "decoupling":
        return [Stage("stage1", 1, cfg.epochs), Stage("crt", cfg.epochs + 1, cfg.crt_epochs)]
    return [Stage("train", 1, cfg.epochs)]


def stage_of(epoch: int, plan: list[Stage]) -> Stage:
    return next(s for s in plan if s.first_epoch <= epoch <= s.last_epoch)



def enter_stage(model: nn.Module, stage: Stage, reinit: bool) -> None:
    """cRT: freeze everything but ``fc``; re-initialise ``fc`` when the stage starts afresh."""
    frozen = stage.name == "crt"
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name.startswith("fc."))
    if frozen and reinit:
        model.fc.reset_parameters()


def make_optimizer(model: nn.Module, cfg: TrainExpertConfig, stage: Stage):
    if stage.name == "crt":
        params = list(model.fc.parameters())
        opt = torch.optim.SGD(params, lr=cfg.crt_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        factor = warmup_multistep(0, cfg.crt_lr_milestones, cfg.lr_gamma)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        factor = warmup_multistep(cfg.warmup_epochs, cfg.lr_milestones, cfg.lr_gamma)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def check_finite(stats: dict[str, float], epoch: int, cfg: TrainExpertConfig, device: torch.device) -> None:
    """A NaN or Inf loss poisons every later epoch: stop the run with what to try, not train on."""
    bad = [k for k in ("train/loss", "val/nll") if k in stats and not math.isfinite(stats[k])]
    if bad:
        hint = "lower --lr"
        if uses_bf16(device, cfg.amp):
            hint += " or train in float32 (--no-amp)"
        raise JobError(f"{' and '.join(bad)} became {stats[bad[0]]} in epoch {epoch}; {hint}")


def train_one_epoch(model: nn.Module, forward, feed, opt: torch.optim.Optimizer, loss_fn, cfg: TrainExpertConfig,
                    stage: Stage, gen: torch.Generator, hflip: bool, rec: RunRecorder) -> dict[str, float]:
    device = feed.device
    frozen = stage.name == "crt"
    model.train()
    if frozen:
        model.eval()  # the backbone's BatchNorm statistics stay as stage 1 left them
        model.fc.train()
    clock = Stopwatch(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    moe = getattr(model, "fc", None) if cfg.loss == "moe_head" else None
    load_sum = torch.zeros(cfg.moe_experts, device=device) if moe is not None else None
    top1_sum = torch.zeros(cfg.moe_experts, device=device) if moe is not None else None
    balance_sum = torch.zeros((), device=device)
    seen = steps = 0
    for xb, yb in feed.train_batches(cfg.batch_size, gen, cfg.augment, hflip, balanced=frozen):
        with autocast(device, cfg.amp):
            if frozen:
                with torch.no_grad():
                    feats = model.features(xb)
                logits = model.fc(feats.float())
            else:
                logits = forward(xb)
            loss = loss_fn(logits, yb)
            if moe is not None:
                loss = loss + cfg.moe_balance_coef * moe.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # Accumulate on the device: a .item() per step would sync the GPU every batch.
        loss_sum += loss.detach() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        if moe is not None:
            load_sum += moe.last_load
            top1_sum += moe.last_top1
            balance_sum += moe.aux_loss.detach()
        seen += len(yb)
        steps += 1
        rec.check_cancelled()
    secs = clock.seconds()
    stats = {
        "train/loss": float(loss_sum) / max(seen, 1),
        "train/acc": float(correct) / max(seen, 1),
        "train/images_per_s": seen / max(secs, 1e-9),
    }
    if moe is not None:
        stats["train/moe_balance"] = float(balance_sum) / max(steps, 1)
        # (names, mean routing weight, top-1 share) of the epoch: the expert_load event's fields
        stats["_load"] = moe.expert_names, (load_sum / max(steps, 1)).tolist(), (top1_sum / max(steps, 1)).tolist()
    return stats



def evaluate(model: nn.Module, feed, groups: ClassGroups, prefix: str, amp: bool = False) -> dict[str, float]:
    logits, targets = predict(model, feed, amp)
    return classification_metrics(logits, targets, groups, prefix)


def calibrate(model: nn.Module, val, test, groups: ClassGroups, amp: bool, name: str, artifacts: Path) -> tuple[float, dict]:
    """Fit the temperature on val; write the reliability diagram of test before and after scaling."""
    val_logits, val_y = predict(model, val, amp)
    temperature = fit_temperature(val_logits, val_y)
    test_logits, test_y = predict(model, test, amp)
    scores = classification_metrics(test_logits, test_y, groups, "test")
    scaled = classification_metrics(test_logits / temperature, test_y, groups, "test")
    scores.update({"test/nll_calibrated": scaled["test/nll"], "test/ece_calibrated": scaled["test/ece"],
                   "temperature": temperature})
    before = reliability_bins(test_logits.softmax(1), test_y)
    after = reliability_bins((test_logits / temperature).softmax(1), test_y)
    atomic_write_json(artifacts / f"reliability_{name}.json", {
        "split": "test", "bins": len(after), "temperature": temperature,
        "ece_before": scores["test/ece"], "ece_after": scores["test/ece_calibrated"],
        "before": before, "after": after})
    img = draw_reliability(after, f"{name} on test, T={temperature:.2f}, ECE {scores['test/ece_calibrated']:.3f}")
    atomic_write(artifacts / f"reliability_{name}.png", lambda f: img.save(f, format="PNG"))
    return temperature, scores


def rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": gen.get_state(),
             "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_source(path: str) -> tuple[Path, Path]:
    """(last.pth, the folder with its best checkpoint) of a run directory or a last.pth file."""
    p = Path(path).expanduser()
    last = p / "checkpoints" / "last.pth" if p.is_dir() else p
    if not last.is_file():
        raise JobError(f"--resume {path}: no {last}; pass a train-expert run directory or its checkpoints/last.pth")
    return last, last.parent


def check_resumable(ckpt: dict, meta: dict, path: Path) -> None:
    for key in ("arch", "loss", "num_classes", "dataset", "splits"):
        if ckpt.get(key) != meta.get(key):
            raise JobError(f"--resume {path}: it was trained with {key}={ckpt.get(key)!r}, these settings give "
                           f"{meta.get(key)!r}; use the settings of the run you resume")


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: TrainExpertConfig = spec.config  # type: ignore[assignment]
    device, gen = prepare_job(cfg)
    np.random.seed(cfg.seed)

    data = load_image_data(cfg)
    print(data.describe(), flush=True)
    artifacts = rec.run_dir.artifacts
    atomic_write_json(artifacts / "class_groups.json", data.groups.to_json())
    data.index.write(artifacts / "splits", data.source_targets)
    if data.streamed and cfg.arch != "resnet50":
        print(f"note: {cfg.arch} is a 32 px network; file lists usually train --arch resnet50", flush=True)
    cl = uses_channels_last(device, cfg.amp)
    feed = lambda split: make_feed(data, split, device, cl, cfg.image_size, cfg.workers)  # noqa: E731
    train, val = feed("expert"), feed("val")

    model = build_expert(cfg, data.num_classes, data.channels).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if cfg.compile else model
    loss_fn = make_loss(cfg.loss, data.splits["expert"].class_counts(data.num_classes), cfg.tau, device)
    plan = stages(cfg)
    for s in plan:
        if s.name != "crt" and any(m >= s.epochs for m in cfg.lr_milestones):
            print(f"note: lr milestones {cfg.lr_milestones} at or past epoch {s.epochs} never apply", flush=True)

    expert = cfg.loss
    ckpt_dir = rec.run_dir.checkpoints
    meta = {"arch": cfg.arch, "loss": cfg.loss, "expert": expert, "num_classes": data.num_classes,
            "in_channels": data.channels, "feature_dim": model.feature_dim, "dataset": data.name,
            "splits": data.index.fingerprint, "config": cfg.model_dump(mode="json")}
    best, best_epoch, start = float("-inf"), 0, 1
    stage = plan[0]
    enter_stage(model, stage, reinit=False)
    opt, sched = make_optimizer(model, cfg, stage)
    if cfg.resume:
        last_path, src_dir = resume_source(cfg.resume)
        ckpt = load_checkpoint(last_path, map_location=device)
        check_resumable(ckpt, meta, last_path)
        model.load_state_dict(ckpt["model"])
        start = ckpt["epoch"] + 1
        best, best_epoch = ckpt["best"], ckpt["best_epoch"]
        if start > plan[-1].last_epoch:
            raise JobError(f"--resume {cfg.resume}: it already finished epoch {ckpt['epoch']}; raise --epochs to train on")
        stage = stage_of(start, plan)
        enter_stage(model, stage, reinit=stage.name != ckpt["stage"])
        opt, sched = make_optimizer(model, cfg, stage)
        if stage.name == ckpt["stage"]:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], gen)
        best_file = src_dir / f"best_{expert}.pth"
        if best_file.is_file():
            save_checkpoint(load_checkpoint(best_file), ckpt_dir / f"best_{expert}.pth")
        rec.event("resumed", source=str(last_path), epoch=ckpt["epoch"])
        print(f"resumed from {last_path} after epoch {ckpt['epoch']} ({ckpt['stage']})", flush=True)

    epoch = start - 1
    try:
        for epoch in range(start, plan[-1].last_epoch + 1):
            if epoch > stage.last_epoch:
                stage = stage_of(epoch, plan)
                enter_stage(model, stage, reinit=True)
                opt, sched = make_optimizer(model, cfg, stage)
                rec.event("phase", epoch=epoch, phase=stage.name)
                print(f"stage {stage.name}: frozen backbone, re-initialised classifier, class-balanced sampling",
                      flush=True)
            lr = opt.param_groups[0]["lr"]
            stats = train_one_epoch(model, forward, train, opt, loss_fn, cfg, stage, gen, data.hflip, rec)
            sched.step()
            load = stats.pop("_load", None)
            stats.update(evaluate(model, val, data.groups, "val", cfg.amp))
            stats["lr"] = lr
            if load is not None:
                rec.log_expert_load(epoch, *load)
            rec.log_epoch(epoch, stats, phase=stage.name)
            check_finite(stats, epoch, cfg, train.device)  # before any checkpoint: a NaN model is never saved
            score = stats[TrainExpertConfig.primary_metric]
            if score > best:
                best, best_epoch = score, epoch
                save_checkpoint({**meta, "model": model.state_dict(), "epoch": epoch, "metrics": stats},
                                ckpt_dir / f"best_{expert}.pth")
            save_checkpoint({**meta, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "epoch": epoch, "stage": stage.name,
                             "best": best, "best_epoch": best_epoch, "rng": rng_state(gen)},
                            ckpt_dir / "last.pth")
    except Cancelled:
        print(f"stopping: checkpoints/last.pth holds epoch {epoch - 1}; continue with "
              f"`engine train-expert ... --resume {rec.run_dir.path}`", flush=True)
        raise

    best_ckpt = load_checkpoint(ckpt_dir / f"best_{expert}.pth", map_location=device)
    model.load_state_dict(best_ckpt["model"])
    test = feed("test")
    temperature, scores = calibrate(model, val, test, data.groups, cfg.amp, expert, artifacts)
    save_checkpoint({**best_ckpt, "temperature": temperature}, ckpt_dir / f"final_calibrated_{expert}.pth")
    print(f"best {TrainExpertConfig.primary_metric} {best:.4f} at epoch {best_epoch}; temperature {temperature:.3f} "
          "fitted on val; test scores of that model:", flush=True)
    rec.log_summary(scores)
