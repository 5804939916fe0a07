"""ResNet-18 with the CIFAR stem (a 3x3 stride-1 convolution, no max-pool).

The usual choice for 32 px images in the long-tail literature (e.g. RIDE,
SADE report ResNet-32; ResNet-18 is their wider alternative): four stages of
64/128/256/512 channels, two basic blocks each.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.longtail.models.resnet_cifar import BasicBlock


class ResNet18Cifar(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, ch = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(2):
                layers.append(BasicBlock(ch, w, stride=2 if (i > 0 and b == 0) else 1))
                ch = w
        self.layers = nn.Sequential(*layers)
        self.feature_dim = ch
        self.fc = nn.Linear(ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
