"""ResNet-18/34/50 (He et al. 2016, "Deep Residual Learning for Image Recognition", Table 1).

Own code with torchvision's layout (so the parameter counts match: ResNet-18 11,689,512 and
ResNet-50 25,557,032 at width 1 with 1000 classes): projection shortcuts (1x1 conv + BN, option B)
where the shape changes, the stride of a Bottleneck on its 3x3 conv ("ResNet v1.5").

``width`` multiplies every channel count (base 64 -> round(64 * width)); ``small_input`` replaces the
7x7/2 stem + 3x3/2 max-pool by a 3x3/1 conv without pooling (for images of <= 64 px, as in CIFAR work).
Shapes: x (B, C_in, H, W) -> z (B, D) with D = 8 * base * expansion -> logits (B, K).
"""
from __future__ import annotations

from typing import Sequence, Type

import torch
from torch import nn

from .base import FeatureClassifier, kaiming_init, scaled_channels


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(c_in, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4; plus the shortcut."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(c_in, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _projection(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """Option-B shortcut: 1x1 conv + BN when the shape changes, identity otherwise."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))


class ResNet(FeatureClassifier):
    """Four stages of ``block`` with ``layers[i]`` blocks and base * 2^i planes; global average pool."""

    def __init__(self, block: Type[BasicBlock] | Type[Bottleneck], layers: Sequence[int], num_classes: int,
                 in_channels: int = 3, width: float = 1.0, small_input: bool = False):
        super().__init__()
        base = scaled_channels(64, width)
        if small_input:
            self.conv1 = conv3x3(in_channels, base)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, base, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        c_in = base
        stages = []
        for i, n_blocks in enumerate(layers):
            planes = base * 2 ** i
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c_in, planes, stride))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in
        self.head = nn.Linear(c_in, num_classes)
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize_input(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)


def resnet18(num_classes: int, in_channels: int = 3, width: float = 1.0, small_input: bool = False) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width, small_input)


def resnet34(num_classes: int, in_channels: int = 3, width: float = 1.0, small_input: bool = False) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, width, small_input)


def resnet50(num_classes: int, in_channels: int = 3, width: float = 1.0, small_input: bool = False) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width, small_input)
