"""Cross-entropy (``ce``) and class-balanced cross-entropy (``ce-rw``, Cui et al. 2019)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .base import LOSSES, Criterion, weighted_mean


class CrossEntropy(Criterion):
    """L = (1/B) sum_i w_{y_i} * (-log softmax(logits_i)_{y_i}); w = 1 without re-weighting."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.check(logits, targets)
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        return weighted_mean(per_sample, targets, self.current_weight)


@LOSSES.register("ce")
def ce(class_counts: Sequence[int], tail_classes: Sequence[int] = ()) -> CrossEntropy:
    return CrossEntropy(class_counts, "none")


@LOSSES.register("ce-rw")
def ce_rw(class_counts: Sequence[int], tail_classes: Sequence[int] = (), beta: float = 0.9999) -> CrossEntropy:
    return CrossEntropy(class_counts, "cb", beta=beta)
