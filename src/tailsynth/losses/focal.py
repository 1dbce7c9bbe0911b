"""Focal loss (Lin et al. 2017, Eq. 5): FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t, gamma = 2.

``focal`` has alpha = 1; ``focal-rw`` uses the class-balanced weights of Cui et al. 2019 as alpha (the
LoGex code passes the CB weights as ``alpha`` of adeelh/pytorch-multi-class-focal-loss, whose p_t is
the unweighted softmax probability of the true class, as here). gamma = 0 gives cross-entropy.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import TailsynthError
from .base import LOSSES, Criterion, weighted_mean


class FocalLoss(Criterion):
    def __init__(self, class_counts: Sequence[int], weighting: str = "none", gamma: float = 2.0,
                 beta: float = 0.9999, drw_epoch: int = 10):
        super().__init__(class_counts, weighting, beta=beta, drw_epoch=drw_epoch)
        if gamma < 0:
            raise TailsynthError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.check(logits, targets)
        log_pt = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)  # log p_t, (B,)
        pt = log_pt.exp()
        per_sample = (1.0 - pt).pow(self.gamma) * (-log_pt)
        return weighted_mean(per_sample, targets, self.current_weight)


@LOSSES.register("focal")
def focal(class_counts: Sequence[int], tail_classes: Sequence[int] = (), gamma: float = 2.0) -> FocalLoss:
    return FocalLoss(class_counts, "none", gamma=gamma)


@LOSSES.register("focal-rw")
def focal_rw(class_counts: Sequence[int], tail_classes: Sequence[int] = (), gamma: float = 2.0,
             beta: float = 0.9999) -> FocalLoss:
    return FocalLoss(class_counts, "cb", gamma=gamma, beta=beta)
