"""torchvision's ResNet-50 (ImageNet-LT / iNaturalist experts), with ``features`` and ``fc`` like the others."""

from __future__ import annotations

import torch
import torch.nn as nn


class ResNet50(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
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
