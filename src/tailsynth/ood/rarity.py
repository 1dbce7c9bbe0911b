"""Rarity of samples in feature space (for judging synthetic tail samples): higher = rarer."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from ..errors import TailsynthError
from .base import as_array


def _check(query: Any, ref: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = as_array(query, "query features", ndim=2)
    r = as_array(ref, "reference features", ndim=2)
    if q.shape[1] != r.shape[1]:
        raise TailsynthError(f"query features are {q.shape[1]}-d but reference features {r.shape[1]}-d")
    if not 1 <= k <= len(r):
        raise TailsynthError(f"k must be in 1..{len(r)} (the number of reference samples), got {k}")
    return q, r


def avg_knn_distance(query_feats: Any, ref_feats: Any, k: int = 5) -> np.ndarray:
    """Mean Euclidean distance of each query to its k nearest reference samples, float64 (N,).

    A query that is itself in the reference set counts its own zero distance; pass disjoint sets.
    """
    q, r = _check(query_feats, ref_feats, k)
    dist, _ = NearestNeighbors(n_neighbors=k).fit(r).kneighbors(q)
    return dist.mean(axis=1)


def lof_scores(query: Any, ref: Any, k: int = 20) -> np.ndarray:
    """Local outlier factor (Breunig et al. 2000) of each query w.r.t. ``ref``; ~1 = typical, higher = rarer.

    sklearn ``LocalOutlierFactor(n_neighbors=k, novelty=True)`` fitted on ``ref``; returns
    ``-score_samples(query)`` (sklearn's score is the negated LOF).
    """
    q, r = _check(query, ref, k)
    if k >= len(r):
        raise TailsynthError(f"LOF needs k < number of reference samples ({len(r)}), got {k}")
    lof = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(r)
    return -lof.score_samples(q)
