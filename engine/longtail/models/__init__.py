"""Network definitions, built by name from a job config."""

from __future__ import annotations

import torch.nn as nn


def build_network(arch: str, num_classes: int, in_channels: int, moe: dict | None = None) -> nn.Module:
    """A backbone with a linear ``fc`` classifier, or an MoE head when ``moe`` (experts, top_k, hidden) is given."""
    if arch == "resnet18":
        from engine.longtail.models.resnet18 import ResNet18Cifar

        net = ResNet18Cifar(num_classes, in_channels)
    elif arch == "resnet50":
        from engine.longtail.models.resnet50 import ResNet50

        net = ResNet50(num_classes, in_channels)
    else:
        from engine.longtail.models.resnet_cifar import build_model

        net = build_model(arch, num_classes, in_channels)
    if moe:
        from engine.longtail.models.moe_head import BackboneWithMoEHead

        net = BackboneWithMoEHead(net, num_classes, **moe)
    return net
