"""Memorisation check of a synthetic image set: is a synthetic image a near-copy of a training image?

A LoRA adapted on a handful of images per tail class (LoGex §3) can reproduce them. For every synthetic image s
of class c, in a representation phi (the oracle's penultimate features, or the pixels):

* d(s) = min over the training images x of class c of ||phi(s) - phi(x)||, the distance to its nearest
  training image of its class, and that image's index;
* tau_c = the median, over the training images x of class c, of min over the other training images x' != x of
  class c of ||phi(x) - phi(x')||: the typical real-real nearest-neighbour distance of the class (defined when
  the class has at least two training images);
* s is a **near-copy** when d(s) < tau_c: closer to a training image than a typical training image of the
  class is to its nearest other training image (or d(s) = 0, an exact copy, also where duplicated training
  images make tau_c = 0). The share of near-copies and the median of d(s) / tau_c (1 = as far as a typical
  real neighbour) summarise a set, per class and over all its images.

Distances are Euclidean; in pixel space it is the root-mean-square difference of the pixels scaled to [0, 1]
(Euclidean / sqrt(number of values)), so the figure does not depend on the image size. Exact differences
(not the expanded ||a||^2 + ||b||^2 - 2ab), so an exact copy has distance 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def distances(a: np.ndarray, b: np.ndarray, chunk_values: int = 1 << 24) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances between the rows of a (N, D) and b (M, D), float64, in chunks of rows
    of ``a`` holding at most ``chunk_values`` differences at a time."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    out = np.empty((len(a), len(b)))
    step = max(1, chunk_values // max(1, len(b) * a.shape[1]))
    for start in range(0, len(a), step):
        diff = a[start:start + step, None, :] - b[None, :, :]
        out[start:start + step] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    return out


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, C) -> (N, H*W*C) float64 in [0, 1] divided by sqrt(H*W*C): their Euclidean distance
    is the root-mean-square pixel difference."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0
    return x / np.sqrt(max(1, x.shape[1]))


def typical_real_distance(train: np.ndarray) -> float | None:
    """tau: the median over the rows of ``train`` of the distance to their nearest other row (None below 2 rows)."""
    if len(train) < 2:
        return None
    d = distances(train, train)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(1)))


@dataclass
class Nearest:
    """Per synthetic image: ``distance`` to its nearest training image of its class (nan when the class has none)
    and that image's row in the training arrays (``index``, -1 when none); per class, ``typical`` = tau_c."""

    distance: np.ndarray
    index: np.ndarray
    typical: dict[int, float | None]

    def ratio(self, labels: np.ndarray) -> np.ndarray:
        """d(s) / tau_c per image (nan where tau_c is undefined; inf where tau_c = 0 < d)."""
        tau = np.array([np.nan if self.typical.get(int(c)) is None else self.typical[int(c)] for c in labels])
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.distance / tau


def nearest_training(synthetic: np.ndarray, synthetic_labels: np.ndarray, train: np.ndarray,
                     train_labels: np.ndarray, cache: dict[int, float | None] | None = None) -> Nearest:
    """For every synthetic row, its nearest training row of the same label, and tau of each synthetic label.
    ``cache`` ({label: tau} of these training rows, filled as computed) saves recomputing tau for the next set."""
    synthetic_labels, train_labels = np.asarray(synthetic_labels), np.asarray(train_labels)
    distance = np.full(len(synthetic_labels), np.nan)
    index = np.full(len(synthetic_labels), -1, dtype=np.int64)
    typical: dict[int, float | None] = {}
    cache = {} if cache is None else cache
    for c in np.unique(synthetic_labels):
        rows, members = np.flatnonzero(synthetic_labels == c), np.flatnonzero(train_labels == c)
        if int(c) not in cache:
            cache[int(c)] = typical_real_distance(train[members])
        typical[int(c)] = cache[int(c)]
        if not len(members):
            continue
        d = distances(synthetic[rows], train[members])
        best = d.argmin(1)
        distance[rows], index[rows] = d[np.arange(len(rows)), best], members[best]
    return Nearest(distance, index, typical)


def summarise(nearest: Nearest, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Per class: n, tau (``typical``), the median of d(s), the near-copy share and the median d / tau; overall:
    n, the near-copy share and the median d / tau over the images whose class has a tau."""
    labels = np.asarray(labels)
    tau = np.array([np.nan if nearest.typical.get(int(c)) is None else nearest.typical[int(c)] for c in labels])
    defined = ~np.isnan(tau) & ~np.isnan(nearest.distance)  # a class with >= 2 training images
    near = defined & ((nearest.distance < np.where(defined, tau, 0.0)) | (nearest.distance == 0))
    ratio = nearest.ratio(labels)

    def median(values: np.ndarray) -> float | None:
        """None for no value or an infinite median (tau 0: duplicated training images; 0 / 0 is left out)."""
        values = values[~np.isnan(values)]
        m = float(np.median(values)) if len(values) else np.inf
        return m if np.isfinite(m) else None

    per_class = {}
    for c in np.unique(labels):
        m, d = labels == c, defined & (labels == c)
        per_class[class_names[int(c)]] = {
            "n": int(m.sum()), "typical": nearest.typical.get(int(c)), "median": median(nearest.distance[m]),
            "near_copies": float(near[d].mean()) if d.any() else None,
            "median_ratio": median(ratio[d]) if d.any() else None}
    overall = {"n": int(defined.sum()), "near_copies": float(near[defined].mean()) if defined.any() else None,
               "median_ratio": median(ratio[defined]) if defined.any() else None}
    return {"overall": overall, "per_class": per_class}


def closest_pairs(nearest: Nearest, labels: np.ndarray, per_class: int) -> dict[int, list[tuple[int, int]]]:
    """{class: [(synthetic row, training row), ...]}: the ``per_class`` synthetic images of each class closest to a
    training image, closest first."""
    labels = np.asarray(labels)
    out = {}
    for c in np.unique(labels):
        rows = np.flatnonzero((labels == c) & (nearest.index >= 0))
        rows = rows[np.argsort(nearest.distance[rows], kind="stable")][:per_class]
        out[int(c)] = [(int(r), int(nearest.index[r])) for r in rows]
    return out
