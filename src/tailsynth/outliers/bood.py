"""BOOD stage 2: boundary-crossing outlier features (Liao et al., ICML 2025, "BOOD: Boundary-based
Out-Of-Distribution Data Generation", §3.2-3.3 / Algorithm 1; the step as its public code takes it, functions
``GA_PGD`` and ``boundary_selection``).

In the same text-conditioned latent space as Dream-OOD (cosine logits against the class anchors):

1. Boundary ID feature identification: every ID feature z (L2-normalised once, at the start) is pushed by
   sign-gradient ascent on its own cross-entropy, z <- z + alpha * sign(g) with g = grad_z CE(logits(z), y)
   (an L-infinity step of ``step_size`` alpha in every coordinate; the code: alpha = 0.01); K(z) = the number of
   steps until the predicted class changes (``max_steps`` + 1 if it never does). The features with the smallest K
   per class lie closest to the decision boundary: the ``n_per_class`` smallest are kept (ties: the smaller
   logit margin first).
2. OOD feature synthesis: each kept feature is perturbed the same way for K(z) + ``extra_steps`` steps, i.e.
   across the boundary and ``extra_steps`` steps beyond it (the code's ``cstep``, default 1).

One sign step has L2 length alpha * sqrt(D) (0.16 for the pixel backend's 256-d anchors, 0.28 for SD's 768-d
token rows). The paper selects a share of the features per class; this implementation takes a count per class
(``n_per_class``, so Dream-OOD and BOOD decode equally many images). The outliers are returned on the unit
sphere (the caller rescales them to the anchor's norm), like Dream-OOD's; the code rescales the perturbed
feature without normalising it first (cosine logits do not see the norm, the decoder does).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..config import StrictConfig
from ..errors import TailsynthError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class BoodConfig(StrictConfig):
    """BOOD's feature-space settings."""

    n_per_class: int = Field(360, ge=1)
    step_size: float = Field(0.01, gt=0)  # alpha of the sign step (the code's --step_size)
    max_steps: int = Field(200, ge=1)
    extra_steps: int = Field(1, ge=0)  # steps beyond the crossing (the code's --cstep)


def _ascent_direction(z: torch.Tensor, y: torch.Tensor, logits_fn: LogitsFn) -> torch.Tensor:
    """sign(grad_z CE(logits(z), y)) per row (the FGSM / PGD step direction of the code's ``GA_PGD``)."""
    z = z.detach().requires_grad_(True)
    loss = F.cross_entropy(logits_fn(z), y, reduction="sum")  # rows are independent: sum = per-row gradients
    (g,) = torch.autograd.grad(loss, z)
    return g.sign()


def boundary_steps(z: torch.Tensor, y: torch.Tensor, logits_fn: LogitsFn, step_size: float,
                   max_steps: int) -> torch.Tensor:
    """K(z): sign-gradient steps z <- z + step_size * sign(g) until argmax logits_fn(z) != y, per row (int64;
    max_steps + 1 = never; 0 = already misclassified)."""
    steps = torch.full((len(z),), max_steps + 1, dtype=torch.long)
    with torch.no_grad():
        steps[logits_fn(z).argmax(1) != y] = 0
    current = z.detach().clone()
    for s in range(1, max_steps + 1):
        active = steps > max_steps
        if not active.any():
            break
        current[active] = current[active] + step_size * _ascent_direction(current[active], y[active], logits_fn)
        with torch.no_grad():
            crossed = active & (logits_fn(current).argmax(1) != y)
        steps[crossed] = s
    return steps


def perturb(z: torch.Tensor, y: torch.Tensor, logits_fn: LogitsFn, step_size: float,
            n_steps: torch.Tensor) -> torch.Tensor:
    """Each row of ``z`` after its own ``n_steps`` adversarial steps (the same update as :func:`boundary_steps`)."""
    current = z.detach().clone()
    for s in range(int(n_steps.max()) if len(n_steps) else 0):
        active = n_steps > s
        current[active] = current[active] + step_size * _ascent_direction(current[active], y[active], logits_fn)
    return current


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Own-class logit minus the best other logit (> 0: correctly classified)."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    return own - other


def boundary_outliers(z: torch.Tensor, y: torch.Tensor, logits_fn: LogitsFn, cfg: BoodConfig,
                      name: str = "class") -> tuple[torch.Tensor, torch.Tensor]:
    """BOOD outliers of one class (all rows of ``z`` have label ``y``): ((n_per_class, D) unit vectors, K(z) of
    the boundary features they came from (n_per_class,))."""
    if len(z) < cfg.n_per_class:
        raise TailsynthError(f"BOOD keeps n_per_class = {cfg.n_per_class} boundary features per class, but class "
                             f"{name!r} has only {len(z)} training embeddings: lower n_per_class")
    z = F.normalize(z.detach().float(), dim=1)
    steps = boundary_steps(z, y, logits_fn, cfg.step_size, cfg.max_steps)
    with torch.no_grad():
        m = margin(logits_fn(z), y)
    keep = torch.as_tensor(np.lexsort((m.numpy(), steps.numpy()))[:cfg.n_per_class])  # fewest steps, then margin
    k = steps[keep].clamp(max=cfg.max_steps)
    moved = perturb(z[keep], y[keep], logits_fn, cfg.step_size, k + cfg.extra_steps)
    return F.normalize(moved, dim=1), k
