"""Tiny pixel backend config and classifier shared by the guidance tests."""
import torch
import torch.nn.functional as F
from torch import nn

from tailsynth.models import FeatureClassifier

TINY = dict(num_classes=3, image_size=16, block_out_channels=(8, 16), attention_levels=(False, True),
            norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8, tokens_per_class=2)


class TinyClassifier(FeatureClassifier):
    """conv 3x3 -> tanh -> 2x2 average pool -> linear: moderate logits at random init."""

    def __init__(self, num_classes=4, in_channels=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.head = nn.Linear(24, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.num_features = 24

    def forward_features(self, x):
        return F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 2).flatten(1)
