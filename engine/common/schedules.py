"""Learning-rate schedules as LambdaLR multipliers."""

from __future__ import annotations


def warmup_multistep(warmup_epochs: int, milestones: list[int], gamma: float):
    """LR factor per epoch: linear warm-up to 1, then x gamma at each milestone."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        return gamma ** sum(epoch >= m for m in milestones)

    return factor


