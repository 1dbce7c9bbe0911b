"""Criterion base class, class-balanced weights and the ``LOSSES`` registry.

Reduction follows the LoGex code (fork of LongTailCXR): per-sample losses (weighted by w_{y_i} where a
re-weighting is on) are averaged with a plain batch mean, ``(1/B) sum_i w_{y_i} l_i`` -- not divided by
``sum_i w_{y_i}`` as ``F.cross_entropy(weight=...)`` with ``reduction='mean'`` would do.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import TailsynthError
from ..registry import Registry


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.9999) -> np.ndarray:
    """Cui et al. 2019 (CVPR), Eq. 3 / Sec. 4: w_c = (1 - beta) / (1 - beta^{n_c}), normalised so sum_c w_c = K.

    Returns float64 (K,). Every n_c must be >= 1 and 0 <= beta < 1.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise TailsynthError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if np.any(counts < 1):
        bad = [int(c) for c in np.flatnonzero(counts < 1)]
        raise TailsynthError(f"class-balanced weights need >= 1 training sample per class; classes {bad} have none")
    if not 0.0 <= beta < 1.0:
        raise TailsynthError(f"class-balanced beta must be in [0, 1), got {beta}")
    effective_num = 1.0 - np.power(beta, counts)
    weights = (1.0 - beta) / effective_num
    return weights / weights.sum() * len(counts)


def weighted_mean(per_sample: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """(1/B) sum_i w_{y_i} l_i, or the plain mean when ``weight`` is None."""
    if weight is not None:
        per_sample = per_sample * weight.to(per_sample.dtype)[targets]
    return per_sample.mean()


class Criterion(nn.Module):
    """A loss ``forward(logits (B, K), targets (B,)) -> scalar`` with optional class weights.

    ``weighting``: ``"none"``; ``"cb"`` (class-balanced weights from the start, "rw"); ``"drw"`` (deferred
    re-weighting, Cao et al. 2019 Alg. 1: unweighted before ``drw_epoch``, class-balanced from then on).
    The trainer calls :meth:`set_epoch` (0-based) at the start of each epoch and reads ``drw_epoch`` to
    divide the learning rate by 10 at the same epoch (LoGex code: switch after the 10th epoch).
    """

    def __init__(self, class_counts: Sequence[int], weighting: str = "none", beta: float = 0.9999,
                 drw_epoch: int = 10):
        super().__init__()
        if weighting not in ("none", "cb", "drw"):
            raise TailsynthError(f"weighting must be none, cb or drw, got {weighting!r}")
        self.num_classes = len(class_counts)
        self.weighting = weighting
        self.beta = beta
        cb = torch.tensor(class_balanced_weights(class_counts, beta), dtype=torch.float32) \
            if weighting != "none" else torch.ones(self.num_classes)
        self.register_buffer("cb_weights", cb)
        if weighting == "drw":
            if int(drw_epoch) < 0:
                raise TailsynthError(f"drw_epoch must be >= 0, got {drw_epoch}")
            self.drw_epoch: int | None = int(drw_epoch)
        else:
            self.drw_epoch = None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def current_weight(self) -> torch.Tensor | None:
        """Class weights in force this epoch (None = unweighted)."""
        if self.weighting == "cb":
            return self.cb_weights
        if self.weighting == "drw" and self.epoch >= self.drw_epoch:
            return self.cb_weights
        return None

    def check(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise TailsynthError(f"{type(self).__name__}: logits must be (B, {self.num_classes}), "
                                 f"got {tuple(logits.shape)}")
        if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
            raise TailsynthError(f"{type(self).__name__}: targets must be ({logits.shape[0]},), "
                                 f"got {tuple(targets.shape)}")


LOSSES: Registry[Callable[..., Criterion]] = Registry("loss")


def criterion_parameters(name: str) -> list[str]:
    """The hyper-parameters the loss registered as ``name`` accepts (besides the class counts / tail classes)."""
    return [p for p in inspect.signature(LOSSES.get(name)).parameters if p not in ("class_counts", "tail_classes")]


def build_criterion(name: str, class_counts: Sequence[int], tail_classes: Sequence[int] = (),
                    **params) -> Criterion:
    """Build the criterion registered as ``name`` (a row of LoGex Table 2).

    ``params`` are the loss's own hyper-parameters (e.g. ``gamma``, ``max_m``, ``s``, ``beta``,
    ``drw_epoch``, ``hod_weight``); an unknown one is an error listing the valid ones.
    """
    factory = LOSSES.get(name)
    accepted = criterion_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TailsynthError(f"loss {name!r} got unknown parameters {unknown}; valid: {sorted(accepted)}")
    return factory(class_counts=list(class_counts), tail_classes=list(tail_classes), **params)
