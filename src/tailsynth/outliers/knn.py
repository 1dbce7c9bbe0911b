"""k-th nearest-neighbour distances, batched with ``torch.cdist`` (no Python loop over samples).

Dream-OOD (Du et al. 2023, §3.2) and VOS/NPOS rank embeddings by the distance to their k-th nearest
neighbour in the (L2-normalised) in-distribution set: a large distance = a low-likelihood region.
"""
from __future__ import annotations

import torch

from ..errors import TailsynthError


def kth_nn_distance(query: torch.Tensor, reference: torch.Tensor, k: int, *, exclude_self: bool = False,
                    chunk: int = 2048) -> torch.Tensor:
    """Euclidean distance of each query row (Nq, D) to its ``k``-th nearest row of ``reference`` (Nr, D).

    ``exclude_self``: ``query`` is ``reference`` (same rows, same order) and a point is not its own neighbour
    (the diagonal is skipped), so k may be at most Nr - 1. Computed in chunks of ``chunk`` query rows."""
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise TailsynthError(f"kth_nn_distance: query {tuple(query.shape)} and reference {tuple(reference.shape)} "
                             "must be (N, D) with the same D")
    available = reference.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise TailsynthError(f"k = {k} nearest neighbours asked of a set of {reference.shape[0]} points "
                             f"(at most {available}{' besides the point itself' if exclude_self else ''})")
    if exclude_self and query.shape[0] != reference.shape[0]:
        raise TailsynthError("exclude_self needs query and reference to be the same set")
    out = []
    for start in range(0, query.shape[0], chunk):
        d = torch.cdist(query[start:start + chunk].double(), reference.double())
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out).to(query.dtype) if out else query.new_zeros(0)
