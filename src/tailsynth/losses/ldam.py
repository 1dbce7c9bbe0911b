"""LDAM loss (Cao et al. 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
Eq. 10-11) in the formulation of the official code (kaidic/LDAM-DRW, copied into LoGex):

    m_c = C / n_c^{1/4},  C chosen so that max_c m_c = max_m (0.5)
    L_i = CE(s * z'_i, y_i),  z'_{ij} = z_{ij} - m_{y_i} [j = y_i],  s = 30

i.e. the margin is subtracted from the true-class logit and the logits are multiplied by s afterwards.
Variants: ``ldam-rw`` (CB weights from the start), ``ldam-drw`` and ``ldam-rw-drw`` (deferred
re-weighting: unweighted before ``drw_epoch``, CB weights from then on; the trainer divides the learning
rate by 10 at ``drw_epoch``). Both DRW names behave identically: in Cao et al. "DRW" means switching to
the CB weights; LoGex Table 2 calls that row "LDAM + rw + DRW".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TailsynthError
from .base import LOSSES, Criterion, weighted_mean


def ldam_margins(class_counts: Sequence[int], max_m: float = 0.5) -> np.ndarray:
    """m_c ∝ n_c^{-1/4}, scaled so the largest margin (rarest class) is ``max_m``. float64 (K,)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if np.any(counts < 1):
        raise TailsynthError(f"LDAM margins need >= 1 sample per class; classes {np.flatnonzero(counts < 1).tolist()} have none")
    m = 1.0 / np.sqrt(np.sqrt(counts))
    return m * (max_m / m.max())


class LDAMLoss(Criterion):
    def __init__(self, class_counts: Sequence[int], weighting: str = "none", max_m: float = 0.5, s: float = 30.0,
                 beta: float = 0.9999, drw_epoch: int = 10):
        super().__init__(class_counts, weighting, beta=beta, drw_epoch=drw_epoch)
        if s <= 0 or max_m < 0:
            raise TailsynthError(f"LDAM needs s > 0 and max_m >= 0, got s={s}, max_m={max_m}")
        self.s = float(s)
        self.max_m = float(max_m)
        self.register_buffer("margins", torch.tensor(ldam_margins(class_counts, max_m), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.check(logits, targets)
        onehot = F.one_hot(targets, self.num_classes).to(logits.dtype)   # (B, K)
        batch_m = self.margins.to(logits.dtype)[targets][:, None]         # m_{y_i}, (B, 1)
        shifted = logits - batch_m * onehot                                # z'_i
        per_sample = F.cross_entropy(self.s * shifted, targets, reduction="none")
        return weighted_mean(per_sample, targets, self.current_weight)


def _ldam(weighting: str):
    def factory(class_counts: Sequence[int], tail_classes: Sequence[int] = (), max_m: float = 0.5,
                s: float = 30.0, beta: float = 0.9999, drw_epoch: int = 10) -> LDAMLoss:
        return LDAMLoss(class_counts, weighting, max_m=max_m, s=s, beta=beta, drw_epoch=drw_epoch)
    return factory


LOSSES.register("ldam")(_ldam("none"))
LOSSES.register("ldam-rw")(_ldam("cb"))
LOSSES.register("ldam-drw")(_ldam("drw"))
LOSSES.register("ldam-rw-drw")(_ldam("drw"))
