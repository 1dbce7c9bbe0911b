"""HOD training loss (Roy et al. 2022, "Does your dermatology classifier know what it doesn't know?",
hierarchical outlier detection), as in the LoGex code (``train_hol_new``):

    L = CE(z, y) + lambda * L_coarse,   L_coarse = -(1/B) sum_i log sum_{c in G(y_i)} softmax(z_i)_c

where G(y) is the tail class set if y is a tail class and the head class set otherwise; lambda = 0.1.
The coarse term is computed with a log-sum-exp over the group's logits (numerically stable).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import TailsynthError
from .base import LOSSES, Criterion


class HODLoss(Criterion):
    def __init__(self, class_counts: Sequence[int], tail_classes: Sequence[int], hod_weight: float = 0.1):
        super().__init__(class_counts, "none")
        tail = sorted({int(c) for c in tail_classes})
        if not tail:
            raise TailsynthError("loss 'hod' needs tail_classes (the coarse head/tail term has no tail group)")
        bad = [c for c in tail if not 0 <= c < self.num_classes]
        if bad:
            raise TailsynthError(f"loss 'hod': tail classes {bad} are outside 0..{self.num_classes - 1}")
        if len(tail) == self.num_classes:
            raise TailsynthError("loss 'hod': every class is a tail class; the head group is empty")
        is_tail = torch.zeros(self.num_classes, dtype=torch.bool)
        is_tail[tail] = True
        self.register_buffer("is_tail", is_tail)
        self.hod_weight = float(hod_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.check(logits, targets)
        ce = F.cross_entropy(logits, targets)
        log_p = F.log_softmax(logits, dim=1)                              # (B, K)
        in_group = self.is_tail[None, :] == self.is_tail[targets][:, None]  # c in G(y_i), (B, K)
        log_group = torch.logsumexp(log_p.masked_fill(~in_group, float("-inf")), dim=1)  # log sum_{G} p_c
        coarse = -log_group.mean()
        return ce + self.hod_weight * coarse


@LOSSES.register("hod")
def hod(class_counts: Sequence[int], tail_classes: Sequence[int] = (), hod_weight: float = 0.1) -> HODLoss:
    return HODLoss(class_counts, tail_classes, hod_weight=hod_weight)
