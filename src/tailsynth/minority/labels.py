"""Ordinal minority labels (Um et al. 2024, §3.3 and App. C): L quantile bins of the minority score.

Equal-width thresholds leave the rarest bins nearly empty, so the paper bins by quantiles: label L-1 holds
the top 1/L of the scores (the rarest samples), label 0 the bottom 1/L. The class-conditional extension
(App. B.2) bins within each class ("intra-class" categorisation) with one L for every class.
"""
from __future__ import annotations

import numpy as np

from ..errors import TailsynthError


def quantile_labels(scores: np.ndarray, num_levels: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Labels 0..L-1 (int64, same shape as ``scores``): sample i gets floor(L * rank_i / n) among the n scores of
    its group (rank 0 = smallest score; ties broken by position), so every bin holds n/L samples (+-1) and the
    label is monotone in the score within a group. ``groups``: e.g. class labels for per-class bins."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if num_levels < 2:
        raise TailsynthError(f"the number of minority levels L must be >= 2, got {num_levels}")
    if not np.isfinite(scores).all():
        raise TailsynthError("minority scores contain NaN or inf")
    groups = np.zeros(len(scores), dtype=np.int64) if groups is None else np.asarray(groups).reshape(-1)
    if len(groups) != len(scores):
        raise TailsynthError(f"{len(scores)} scores but {len(groups)} group labels")
    labels = np.empty(len(scores), dtype=np.int64)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if len(idx) < num_levels:
            raise TailsynthError(f"group {g!r} has {len(idx)} samples, fewer than the L = {num_levels} minority "
                                 f"levels; lower L (minority.num_levels) to at most {len(idx)}")
        ranks = np.empty(len(idx), dtype=np.int64)
        ranks[np.argsort(scores[idx], kind="stable")] = np.arange(len(idx))
        labels[idx] = ranks * num_levels // len(idx)
    return labels


def level_means(scores: np.ndarray, labels: np.ndarray, num_levels: int) -> np.ndarray:
    """The mean score of each level (L,), the thresholds tau_i of the mixture sampler (App. D.5, Eq. 18)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    return np.array([scores[labels == i].mean() for i in range(num_levels)])
