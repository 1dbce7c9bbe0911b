"""Dream-OOD stage 2: low-likelihood sampling in the text-conditioned embedding space (Du et al. 2023, §3.2).

Per in-distribution class, on the L2-normalised embeddings x_i of its training images:

1. the k-th nearest-neighbour distance of every x_i to the others (k = 300 in the paper and code);
2. the ``n_boundary`` points with the largest distance are the class's boundary (the code: 200);
3. each round picks ``n_pick`` boundary points at random (50), draws ``n_candidates`` Gaussian candidates
   x + sigma N(0, I) spread evenly over them (1500; sigma 0.03 for ImageNet-100, 0.07 for CIFAR-100), and keeps,
   per picked point, the ``n_keep`` candidates (2) farthest from the class by their own k-th NN distance;
4. rounds repeat until ``n_per_class`` outliers exist (the code: 100 rounds -> 10k per class).

The outliers are returned on the unit sphere; the caller rescales them to the class anchor's norm before
they replace the class's conditioning embedding (stage 3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..config import StrictConfig
from ..errors import TailsynthError
from .knn import kth_nn_distance


class DreamOodSamplingConfig(StrictConfig):
    """Dream-OOD's sampler settings (defaults: the official code, except ``n_per_class``)."""

    n_per_class: int = Field(360, ge=1)
    k: int = Field(300, ge=1)
    # small classes: k_c = min(k, max(1, round(k_fraction * n_c))) instead of an error (None: k as given)
    k_fraction: float | None = Field(None, gt=0, le=1)
    n_boundary: int = Field(200, ge=1)
    n_pick: int = Field(50, ge=1)
    n_candidates: int = Field(1500, ge=1)
    n_keep: int = Field(2, ge=1)
    sigma: float = Field(0.03, gt=0)
    seed: int = 0


def class_k(cfg: DreamOodSamplingConfig, n: int, name: str) -> int:
    """The k used for a class of ``n`` embeddings; an error naming the class when k does not fit."""
    k = cfg.k if cfg.k_fraction is None else min(cfg.k, max(1, round(cfg.k_fraction * n)))
    if k > n - 1:
        raise TailsynthError(f"Dream-OOD k = {k} nearest neighbours, but class {name!r} has only {n} training "
                             f"embeddings (at most {n - 1} neighbours): lower k or set k_fraction (e.g. 0.3)")
    return k


def low_likelihood_outliers(embeddings: torch.Tensor, cfg: DreamOodSamplingConfig, generator: torch.Generator,
                            name: str = "class") -> tuple[torch.Tensor, torch.Tensor]:
    """Outliers of one class: ((n_per_class, D) unit vectors, their k-th NN distance to the class (n_per_class,))."""
    x = F.normalize(embeddings.double(), dim=1)
    n = x.shape[0]
    k = class_k(cfg, n, name)
    n_boundary = min(cfg.n_boundary, n)
    n_pick = min(cfg.n_pick, n_boundary)
    per_point = cfg.n_candidates // n_pick
    if per_point < cfg.n_keep:
        raise TailsynthError(f"Dream-OOD: {cfg.n_candidates} candidates over {n_pick} boundary points leave "
                             f"{per_point} per point, fewer than n_keep = {cfg.n_keep}")
    boundary = x[kth_nn_distance(x, x, k, exclude_self=True).topk(n_boundary).indices]
    kept, dist = [], []
    while sum(len(d) for d in dist) < cfg.n_per_class:
        picked = boundary[torch.randperm(n_boundary, generator=generator)[:n_pick]]  # (P, D)
        noise = torch.randn((n_pick, per_point, x.shape[1]), generator=generator, dtype=torch.float64)
        candidates = picked[:, None, :] + cfg.sigma * noise  # (P, C, D)
        d = kth_nn_distance(candidates.reshape(-1, x.shape[1]), x, k).view(n_pick, per_point)
        top = d.topk(cfg.n_keep, dim=1).indices  # (P, n_keep): the farthest candidates of each picked point
        kept.append(torch.gather(candidates, 1, top[..., None].expand(-1, -1, x.shape[1])).reshape(-1, x.shape[1]))
        dist.append(torch.gather(d, 1, top).reshape(-1))
    outliers = F.normalize(torch.cat(kept)[:cfg.n_per_class], dim=1)
    return outliers.float(), torch.cat(dist)[:cfg.n_per_class].float()
