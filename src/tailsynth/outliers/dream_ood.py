"""Dream-OOD stage 2: low-likelihood sampling in the text-conditioned embedding space (Du et al., NeurIPS 2023,
§3.2, "Outlier imagination"; the official ``scripts/KNN.py``).

Per in-distribution class, on the L2-normalised embeddings x_i of its training images:

1. the k-th nearest-neighbour distance of every x_i to the others (k = 300 in the paper and code);
2. the ``n_boundary`` points with the largest distance are the class's boundary (the code: 200 for ImageNet-100,
   50 for CIFAR-100);
3. each round picks ``n_pick`` boundary points at random (50) and draws, for EACH picked point x,
   ``n_candidates`` Gaussian candidates v = normalise(x + sigma N(0, I)) (1500; sigma 0.03 for ImageNet-100, 0.07
   for CIFAR-100: a standard deviation in the code, which multiplies standard normal draws, where the appendix
   writes it as the variance sigma^2); of each point's candidates it keeps the ``n_keep`` (2) with the largest
   k-th NN distance to the class, ranked on the unit sphere as the code ranks them;
4. rounds repeat until ``n_per_class`` outliers exist (the code: 100 rounds -> 10k per class); the last round
   draws only for as many picked points as it still needs.

The kept candidates are the farthest ones, as the paper means: the official ``KNN_dis_search_distance`` ranks
the candidates through a ``view`` that does not match the order they were stacked in and then returns other rows
than the ones it ranked, so the set it keeps is indistinguishable from a random pick. Distances are batched
(``torch.cdist``), a chunk of picked points at a time (at most ``CHUNK_ROWS`` candidates), with the noise drawn
point by point so that the result does not depend on the chunking.

The outliers are returned on the unit sphere; the caller rescales them to the class anchor's norm before
they replace the class's conditioning embedding (stage 3).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from ..config import StrictConfig
from ..errors import TailsynthError
from .knn import kth_nn_distance

CHUNK_ROWS = 1 << 14  # candidates ranked at once: bounds memory to CHUNK_ROWS x max(D, N) doubles


class DreamOodSamplingConfig(StrictConfig):
    """Dream-OOD's sampler settings (defaults: the official code, except ``n_per_class``)."""

    n_per_class: int = Field(360, ge=1)
    k: int = Field(300, ge=1)
    # small classes: k_c = min(k, max(1, round(k_fraction * n_c))) instead of an error (None: k as given)
    k_fraction: float | None = Field(None, gt=0, le=1)
    n_boundary: int = Field(200, ge=1)
    n_pick: int = Field(50, ge=1)
    n_candidates: int = Field(1500, ge=1)  # per picked boundary point
    n_keep: int = Field(2, ge=1)
    sigma: float = Field(0.03, gt=0)
    seed: int = 0


def k_of_class(cfg: DreamOodSamplingConfig, n: int) -> int:
    """The k used for a class of ``n`` embeddings: ``k``, or min(k, max(1, round(k_fraction * n)))."""
    return cfg.k if cfg.k_fraction is None else min(cfg.k, max(1, round(cfg.k_fraction * n)))


def class_k(cfg: DreamOodSamplingConfig, n: int, name: str) -> int:
    """The k used for a class of ``n`` embeddings; an error naming the class when k does not fit (k <= n - 1)."""
    k = k_of_class(cfg, n)
    if k > n - 1:
        raise TailsynthError(f"Dream-OOD k = {k} nearest neighbours, but class {name!r} has only {n} training "
                             f"embeddings (at most {n - 1} neighbours): lower k or set k_fraction (e.g. 0.3)")
    return k


def low_likelihood_outliers(embeddings: torch.Tensor, cfg: DreamOodSamplingConfig, generator: torch.Generator,
                            name: str = "class") -> tuple[torch.Tensor, torch.Tensor]:
    """Outliers of one class: ((n_per_class, D) unit vectors, their k-th NN distance to the class (n_per_class,))."""
    x = F.normalize(embeddings.double(), dim=1)
    n, dim = x.shape
    k = class_k(cfg, n, name)
    if cfg.n_candidates < cfg.n_keep:
        raise TailsynthError(f"Dream-OOD: n_candidates = {cfg.n_candidates} per boundary point, fewer than "
                             f"n_keep = {cfg.n_keep}")
    n_boundary = min(cfg.n_boundary, n)
    n_pick = min(cfg.n_pick, n_boundary)
    boundary = x[kth_nn_distance(x, x, k, exclude_self=True).topk(n_boundary).indices]
    per_chunk = max(1, CHUNK_ROWS // cfg.n_candidates)  # picked points whose candidates are ranked together
    kept, dist = [], []
    remaining = cfg.n_per_class
    while remaining > 0:
        picked = torch.randperm(n_boundary, generator=generator)[:n_pick][:math.ceil(remaining / cfg.n_keep)]
        for start in range(0, len(picked), per_chunk):
            points = boundary[picked[start:start + per_chunk]]  # (P, D)
            noise = torch.stack([torch.randn((cfg.n_candidates, dim), generator=generator, dtype=torch.float64)
                                 for _ in range(len(points))])  # (P, C, D), one draw per point
            candidates = F.normalize(points[:, None, :] + cfg.sigma * noise, dim=2)
            d = kth_nn_distance(candidates.reshape(-1, dim), x, k).view(len(points), cfg.n_candidates)
            top = d.topk(cfg.n_keep, dim=1).indices  # (P, n_keep): the farthest candidates of each picked point
            kept.append(torch.gather(candidates, 1, top[..., None].expand(-1, -1, dim)).reshape(-1, dim))
            dist.append(torch.gather(d, 1, top).reshape(-1))
        remaining = cfg.n_per_class - sum(len(v) for v in dist)
    return torch.cat(kept)[:cfg.n_per_class].float(), torch.cat(dist)[:cfg.n_per_class].float()
