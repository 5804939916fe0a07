"""train-expert: one long-tail expert, one phase per function.

``train_one_epoch`` and ``evaluate`` are the phases; ``run`` wires them to the
run directory (metrics per epoch, best and last checkpoints, final test
scores of the best model).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.checkpoint import save_checkpoint
from engine.config import JobSpec, TrainExpertConfig
from engine.data.images import load_image_data
from engine.data.longtail import ClassGroups
from engine.metrics import classification_metrics
from engine.models.resnet_cifar import build_model
from engine.run import RunRecorder, atomic_write_json
from engine.training import DeviceImages, Stopwatch, pick_device, seed_everything, warmup_multistep


def train_one_epoch(model: nn.Module, data: DeviceImages, opt: torch.optim.Optimizer, cfg: TrainExpertConfig,
                    gen: torch.Generator, hflip: bool, rec: RunRecorder) -> dict[str, float]:
    model.train()
    clock = Stopwatch(data.device)
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device)
    seen = 0
    for xb, yb in data.train_batches(cfg.batch_size, gen, cfg.augment, hflip):
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # Accumulate on the device: a .item() per step would sync the GPU every batch.
        loss_sum += loss.detach() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
        rec.check_cancelled()
    secs = clock.seconds()
    return {
        "train/loss": float(loss_sum) / max(seen, 1),
        "train/acc": float(correct) / max(seen, 1),
        "train/images_per_s": seen / max(secs, 1e-9),
    }


@torch.inference_mode()
def predict(model: nn.Module, data: DeviceImages) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, targets = [], []
    for xb, yb in data.eval_batches():
        logits.append(model(xb).float().cpu())
        targets.append(yb.cpu())
    return torch.cat(logits), torch.cat(targets)


def evaluate(model: nn.Module, data: DeviceImages, groups: ClassGroups, prefix: str) -> dict[str, float]:
    logits, targets = predict(model, data)
    return classification_metrics(logits, targets, groups, prefix)


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: TrainExpertConfig = spec.config  # type: ignore[assignment]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    gen = seed_everything(cfg.seed)

    data = load_image_data(cfg)
    print(data.describe(), flush=True)
    atomic_write_json(rec.run_dir.artifacts / "class_groups.json", data.groups.to_json())
    cl = device.type == "cuda"  # channels_last pays off with cuDNN, not on the CPU
    train = DeviceImages(data.splits["expert"], device, data.mean, data.std, channels_last=cl)
    val = DeviceImages(data.splits["val"], device, data.mean, data.std, channels_last=cl)

    model = build_model(cfg.arch, data.num_classes, data.channels).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_multistep(cfg.warmup_epochs, cfg.lr_milestones, cfg.lr_gamma))
    if any(m >= cfg.epochs for m in cfg.lr_milestones):
        print(f"note: lr milestones {cfg.lr_milestones} at or past epoch {cfg.epochs} never apply", flush=True)

    expert = cfg.loss
    ckpt_dir = rec.run_dir.checkpoints
    meta = {"arch": cfg.arch, "num_classes": data.num_classes, "in_channels": data.channels,
            "dataset": data.name, "config": cfg.model_dump()}
    best, best_epoch = float("-inf"), 0
    for epoch in range(1, cfg.epochs + 1):
        lr = opt.param_groups[0]["lr"]
        stats = train_one_epoch(model, train, opt, cfg, gen, data.hflip, rec)
        sched.step()
        stats.update(evaluate(model, val, data.groups, "val"))
        stats["lr"] = lr
        rec.log_epoch(epoch, stats)
        score = stats[TrainExpertConfig.primary_metric]
        if score > best:
            best, best_epoch = score, epoch
            save_checkpoint({**meta, "model": model.state_dict(), "epoch": epoch, "metrics": stats},
                            ckpt_dir / f"best_{expert}.pth")
        save_checkpoint({**meta, "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "epoch": epoch,
                         "rng": {"torch": torch.get_rng_state(), "generator": gen.get_state()}},
                        ckpt_dir / "last.pth")

    from engine.checkpoint import load_checkpoint

    model.load_state_dict(load_checkpoint(ckpt_dir / f"best_{expert}.pth", map_location=device)["model"])
    test = DeviceImages(data.splits["test"], device, data.mean, data.std, channels_last=cl)
    print(f"best {TrainExpertConfig.primary_metric} {best:.4f} at epoch {best_epoch}; test scores of that model:", flush=True)
    rec.log_summary(evaluate(model, test, data.groups, "test"))
