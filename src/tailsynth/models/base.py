"""The one contract every classifier network follows (timm style).

``forward_features(x) -> z`` (B, D) after global pooling, ``forward_head(z) -> logits`` (B, K),
``forward(x) = forward_head(forward_features(x))``; ``num_features`` is D and ``head`` is the
``nn.Linear`` classifier layer, which :meth:`reset_head` re-initialises (cRT, Kang et al. 2020).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def scaled_channels(base: int, width: float) -> int:
    """``round(base * width)``, at least 1 (width 0.25 turns ResNet-18's 64 into 16)."""
    return max(1, int(round(base * width)))


def kaiming_init(module: nn.Module) -> None:
    """He et al. 2015 init as in the ResNet papers: conv weights ~ N(0, 2 / fan_out); BN weight 1, bias 0.

    Linear layers keep PyTorch's default (Kaiming-uniform with a = sqrt(5)), as torchvision's ResNet does.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FeatureClassifier(nn.Module):
    """Base class: subclasses build ``self.head`` and implement :meth:`forward_features`."""

    num_features: int
    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_input_norm(self, mean, std) -> None:
        """Normalise inputs as pretrained weights expect: the pipeline feeds x in [-1, 1]; the network then
        sees ((x + 1) / 2 - mean) / std per channel (ImageNet: mean 0.485/0.456/0.406, std 0.229/0.224/0.225).
        Non-persistent: the model card stores it and rebuilds it (``engine.artifacts.build_model``)."""
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """x unchanged, or the pretrained weights' normalisation (:meth:`set_input_norm`)."""
        if getattr(self, "input_mean", None) is None:
            return x
        return ((x + 1.0) / 2.0 - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) from pooled features z (B, D)."""
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @torch.no_grad()
    def reset_head(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the classifier layer as ``nn.Linear.reset_parameters`` does (cRT).

        W ~ U(-1/sqrt(D), 1/sqrt(D)) (Kaiming-uniform, a = sqrt(5)) and b ~ U(-1/sqrt(D), 1/sqrt(D));
        a ``generator`` makes the draw reproducible independent of the global RNG.
        """
        bound = 1.0 / math.sqrt(self.head.in_features)
        self.head.weight.uniform_(-bound, bound, generator=generator)
        if self.head.bias is not None:
            self.head.bias.uniform_(-bound, bound, generator=generator)
