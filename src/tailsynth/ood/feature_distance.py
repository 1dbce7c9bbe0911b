"""Distances between a generated and a real feature distribution: normalised mean and covariance gaps and the
Fréchet distance (the FID formula, Heusel et al. 2017) of Gaussian fits."""
from __future__ import annotations

import numpy as np


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2) (the FID formula), with tr (s1 s2)^(1/2) computed as
    sum sqrt(eig(A s2 A)), A = s1^(1/2) from a symmetric eigendecomposition: finite also when a covariance is
    singular (fewer samples than dimensions), where a general matrix square root returns NaN."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ s2 @ root
    trace_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None))))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def distances(gen: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """mean_dist, cov_dist and frechet of ``gen`` against ``real`` (both (n, D), n >= 2)."""
    mg, sg = _moments(gen)
    mr, sr = _moments(real)
    spread = np.sqrt(max(np.trace(sr), 1e-12))
    return {"mean_dist": float(np.linalg.norm(mg - mr) / spread),
            "cov_dist": float(np.linalg.norm(sg - sr) / max(np.linalg.norm(sr), 1e-12)),
            "frechet": frechet_distance(mg, sg, mr, sr)}
