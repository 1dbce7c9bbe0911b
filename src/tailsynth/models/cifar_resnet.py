"""CIFAR ResNet-32 (He et al. 2016, Sec. 4.2): 3x3 conv stem, 3 stages of n = 5 BasicBlocks with
16/32/64 channels (strides 1/2/2), global average pool, linear head; 6n + 2 = 32 layers, ~0.46M params.

Shortcuts are **option A** of the paper (parameter-free: stride-2 subsampling + zero-padding of the new
channels), as in the CIFAR ResNet-32 of LDAM-DRW (Cao et al. 2019) and LDMLR, whose 64-d features this
reproduces. The stem is always the CIFAR one (3x3, stride 1, no pooling): ``small_input`` is ignored.
Shapes: x (B, C_in, H, W) -> z (B, 64 * width) -> logits (B, K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifier, kaiming_init, scaled_channels


class ShortcutA(nn.Module):
    """Option A: x[:, :, ::2, ::2] (when strided) and zero channels appended up to ``c_out``."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad > 0:
            lo = self.pad // 2
            x = F.pad(x, (0, 0, 0, 0, lo, self.pad - lo))
        return x


class CifarBasicBlock(nn.Module):
    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != planes:
            self.shortcut = ShortcutA(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(FeatureClassifier):
    def __init__(self, num_blocks: int, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        widths = [scaled_channels(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(num_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(CifarBasicBlock(c_in, planes, stride))
                c_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in
        self.head = nn.Linear(c_in, num_classes)
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize_input(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)


def resnet32(num_classes: int, in_channels: int = 3, width: float = 1.0, small_input: bool = True) -> CifarResNet:
    """``small_input`` is accepted for a uniform signature and ignored (the stem is always CIFAR's)."""
    return CifarResNet(5, num_classes, in_channels, width)
