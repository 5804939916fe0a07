"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels.

ResNet-32 has 5 basic blocks per stage (6n+2 = 32 layers). The classifier is a
separate ``fc`` so decoupled training can re-initialise it, and
``features(x)`` gives the 64-d embedding the MoE head and gating stages use.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            # Projection shortcut (option B); LDAM's ResNet-32 uses the same.
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int = 3, widths=(16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, ch = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(ch, w, stride=2 if (i > 0 and b == 0) else 1))
                ch = w
        self.layers = nn.Sequential(*layers)
        self.feature_dim = ch
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# Blocks per stage (6n+2 layers). ResNet-8 is no recipe's network: it is the smallest of the
# family, for smoke tests and for queue tests that need a real job but not a good model.
ARCHS = {"resnet8": 1, "resnet20": 3, "resnet32": 5, "resnet56": 9}


def build_model(arch: str, num_classes: int, in_channels: int) -> CifarResNet:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return CifarResNet(ARCHS[arch], num_classes, in_channels)
