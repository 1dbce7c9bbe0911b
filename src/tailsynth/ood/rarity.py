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


def knn_radii(ref: np.ndarray, k: int) -> np.ndarray:
    """Distance of each reference sample to its k-th nearest OTHER reference sample (its k-NN ball radius)."""
    if not 1 <= k < len(ref):
        raise TailsynthError(f"k must be in 1..{len(ref) - 1} (fewer than the {len(ref)} reference samples), got {k}")
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(ref).kneighbors(ref)
    return dist[:, k]


def rarity_score(query: Any, ref: Any, k: int = 5) -> np.ndarray:
    """Rarity Score (Han et al. 2022, Eq. 2): for each query, the smallest k-NN radius r_k(x_i) among the real
    samples x_i whose k-NN ball contains it, ||q - x_i|| <= r_k(x_i); NaN for a query inside no ball (off the
    real manifold, which the metric does not score). Higher = rarer (only sparse real regions contain it)."""
    q, r = _check(query, ref, k)
    radii = knn_radii(r, k)
    dist = _pairwise(q, r)
    inside = dist <= radii[None, :]
    masked = np.where(inside, radii[None, :], np.inf)
    out = masked.min(axis=1)
    return np.where(np.isfinite(out), out, np.nan)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def precision_recall(real: Any, fake: Any, k: int = 5) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision = the share of generated samples inside
    the k-NN ball of at least one real sample (fidelity); recall = the share of real samples inside the k-NN ball
    of at least one generated sample (diversity). Radii: distance to the k-th nearest other sample of the set."""
    r = as_array(real, "real features", ndim=2)
    f = as_array(fake, "generated features", ndim=2)
    if r.shape[1] != f.shape[1]:
        raise TailsynthError(f"real features are {r.shape[1]}-d but generated features {f.shape[1]}-d")
    d = _pairwise(f, r)
    precision = float((d <= knn_radii(r, k)[None, :]).any(axis=1).mean())
    recall = float((d.T <= knn_radii(f, k)[None, :]).any(axis=1).mean())
    return precision, recall
