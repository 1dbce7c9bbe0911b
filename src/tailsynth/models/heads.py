"""Classifier heads other than the plain linear layer, described in the model card (``card["head"]``) so a
saved network is rebuilt exactly (:func:`install_head`).

- ``anchor_cosine`` -- Dream-OOD's text-conditioned latent space (Du et al. 2023, Eq. 2): the pooled
  features are projected to the conditioning width D, h = W f(x); logits_c = cos(h, a_c) / tau with FIXED
  anchors a_c = the class's conditioning embedding in the diffusion model (tau = 0.1). A vMF classifier
  with concentration 1 / tau: training it with CE pulls the normalised embeddings of class c towards a_c.
- ``linear`` with ``classes`` -- an ordinary linear layer whose logits outside ``classes`` are fixed at
  :data:`ABSENT_LOGIT` (a classifier that only knows the in-distribution classes, e.g. Dream-OOD and BOOD's
  head-only networks; the softmax gives those classes exactly 0, so every score of the project applies).

Both keep the (B, K) logit layout over all of the benchmark's classes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TailsynthError

ABSENT_LOGIT = -1.0e4  # exp(-1e4 - max) == 0 in float32: a class the network does not know


class _ClassMask(nn.Module):
    def _init_mask(self, num_classes: int, classes: list[int] | None) -> None:
        present = torch.ones(num_classes, dtype=torch.bool)
        if classes is not None:
            bad = [c for c in classes if not 0 <= c < num_classes]
            if bad or not classes:
                raise TailsynthError(f"head classes {classes} must be a non-empty subset of 0..{num_classes - 1}")
            present = torch.zeros(num_classes, dtype=torch.bool)
            present[torch.as_tensor(classes)] = True
        self.register_buffer("present", present, persistent=False)
        self.out_features = num_classes

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        if bool(self.present.all()):
            return logits
        return logits.masked_fill(~self.present.to(logits.device), ABSENT_LOGIT)


class MaskedLinear(_ClassMask):
    """``nn.Linear`` whose logits outside ``classes`` are :data:`ABSENT_LOGIT`."""

    def __init__(self, in_features: int, num_classes: int, classes: list[int] | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        self.in_features = in_features
        self._init_mask(num_classes, classes)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor:
        return self.linear.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._mask(self.linear(z))


class AnchorCosineHead(_ClassMask):
    """logits_c = cos(W f, a_c) / tau for the classes with an anchor (Dream-OOD Eq. 2); the anchors (K, D) are a
    buffer saved with the weights (rows of classes without an anchor are zero and their logit is absent)."""

    def __init__(self, in_features: int, num_classes: int, dim: int, tau: float = 0.1,
                 classes: list[int] | None = None):
        super().__init__()
        if not tau > 0:
            raise TailsynthError(f"anchor_cosine head: tau must be > 0, got {tau}")
        self.proj = nn.Linear(in_features, dim)
        self.in_features, self.dim, self.tau = in_features, dim, float(tau)
        self.register_buffer("anchors", torch.zeros(num_classes, dim))
        self._init_mask(num_classes, classes)

    def set_anchors(self, anchors: torch.Tensor) -> None:
        """Anchors (K, D) in the conditioning space: rows of the present classes must be non-zero."""
        if tuple(anchors.shape) != tuple(self.anchors.shape):
            raise TailsynthError(f"anchors of shape {tuple(anchors.shape)} for a head of {tuple(self.anchors.shape)} "
                                 f"(classes x conditioning width); the anchor dimension must match the backend's")
        if bool((anchors[self.present].norm(dim=1) == 0).any()):
            raise TailsynthError("an anchor of a known class is the zero vector")
        with torch.no_grad():
            self.anchors.copy_(anchors)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """The embedding h = W f(x) (B, D) in the conditioning space (not normalised)."""
        return self.proj(z)

    def logits_of_embedding(self, h: torch.Tensor) -> torch.Tensor:
        """cos(h, a_c) / tau for every class (absent classes masked): differentiable in h (BOOD)."""
        cos = F.normalize(h, dim=1) @ F.normalize(self.anchors.to(h.dtype), dim=1).T
        return self._mask(cos / self.tau)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits_of_embedding(self.embed(z))


def install_head(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Replace ``model.head`` (an ``nn.Linear``) by the head ``spec`` describes (``card["head"]``)."""
    old = model.head
    in_features, num_classes = old.in_features, old.out_features
    kind = spec.get("kind")
    if kind == "linear":
        model.head = MaskedLinear(in_features, num_classes, spec.get("classes"))
    elif kind == "anchor_cosine":
        model.head = AnchorCosineHead(in_features, num_classes, int(spec["dim"]), float(spec.get("tau", 0.1)),
                                      spec.get("classes"))
    else:
        raise TailsynthError(f"unknown classifier head kind {kind!r}; valid: linear, anchor_cosine")
    return model
