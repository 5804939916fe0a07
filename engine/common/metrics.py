"""Classification metrics for long-tailed evaluation, from logits and targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.common.groups import ClassGroups

ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017)


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of samples."""
    conf, pred = probs.max(dim=1)
    return ece_from_confidence(conf, pred == targets, bins)


def ece_from_confidence(conf: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE from each sample's top confidence and whether its prediction was right.

    For predictions produced in chunks (mixtures over many classes), where the
    full probability matrix is never held at once.
    """
    conf, correct = conf.float().cpu(), correct.float().cpu()
    # Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 cannot occur.
    idx = (conf * bins).ceil().long().clamp_(1, bins) - 1
    acc = torch.zeros(bins).index_add_(0, idx, correct)
    cf = torch.zeros(bins).index_add_(0, idx, conf)
    return float(((acc - cf).abs()).sum() / max(len(conf), 1))


def per_class_recall(pred: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Recall of each class; NaN for a class absent from ``targets``."""
    total = torch.bincount(targets, minlength=num_classes).float()
    hit = torch.bincount(targets[pred == targets], minlength=num_classes).float()
    return torch.where(total > 0, hit / total.clamp(min=1), torch.full_like(total, float("nan")))


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, groups: ClassGroups, prefix: str) -> dict[str, float]:
    """acc, nll, ece, balanced accuracy and the per-group accuracies of one split.

    Group accuracies are means of per-class recall over the group's classes
    (the usual many/medium/few convention); empty groups are left out.
    """
    logits, targets = logits.float().cpu(), targets.cpu()
    probs = logits.softmax(dim=1)
    pred = probs.argmax(dim=1)
    recall = per_class_recall(pred, targets, groups.num_classes)
    out = {
        f"{prefix}/acc": float((pred == targets).float().mean()),
        f"{prefix}/nll": float(F.cross_entropy(logits, targets)),
        f"{prefix}/ece": expected_calibration_error(probs, targets),
        f"{prefix}/balanced_acc": float(recall.nanmean()),
    }
    for g in ("many", "medium", "few", "head", "tail"):
        m = torch.from_numpy(groups.mask(g))
        if m.any() and not recall[m].isnan().all():
            out[f"{prefix}/{g}_acc"] = float(recall[m].nanmean())
    return out
