"""torchvision's ResNet-50 (ImageNet-LT / iNaturalist experts), with ``features`` and ``fc`` like the others."""

from __future__ import annotations

import torch
import torch.nn as nn


class ResNet50(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        from torchvision.models import resnet50

        # zero_init_residual: each block starts as the identity (Goyal et al. 2017), which keeps activations
        # bounded early in training, when BatchNorm's running statistics are still far from the batch's.
        net = resnet50(weights=None, zero_init_residual=True)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.body = net
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
