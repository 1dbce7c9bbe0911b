"""Logit-based scores of LoGex Sec. 4.2 and Table 3, each in a head and a tail version.

The paper's scores are head-likeness scores (e.g. "the negative Max-softmax value across the tail classes
(MSP-tail)"); here every score is negated where needed so that higher = more tail:

- ``msp_head``  = -max_{c in head} softmax(z)_c       (Hendrycks & Gimpel 2017; softmax over ALL classes)
- ``msp_tail``  = +max_{c in tail} softmax(z)_c
- ``energy_head`` = -logsumexp_{c in head} z_c        (Liu et al. 2020, T = 1: E = -logsumexp; head energy)
- ``energy_tail`` = +logsumexp_{c in tail} z_c
- ``maxlogit_head`` = -max_{c in head} z_c             (Hendrycks et al. 2022)
- ``maxlogit_tail`` = +max_{c in tail} z_c
- ``p_tail``    = sum_{c in tail} softmax(z)_c         (LoGex's score, from Roy et al. 2022; the LoGex code
                                                       uses its negative as head-likeness)
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax

from .base import Score, as_array, build_score, register_score


@register_score
class MSPHead(Score):
    name, needs = "msp_head", ("head",)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return -softmax(z, axis=1)[:, self.head_classes_].max(axis=1)


@register_score
class MSPTail(Score):
    name, needs = "msp_tail", ("tail",)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return softmax(z, axis=1)[:, self.tail_classes_].max(axis=1)


@register_score
class EnergyHead(Score):
    name, needs = "energy_head", ("head",)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return -logsumexp(z[:, self.head_classes_], axis=1)


@register_score
class EnergyTail(Score):
    name, needs = "energy_tail", ("tail",)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return logsumexp(z[:, self.tail_classes_], axis=1)


@register_score
class MaxLogitHead(Score):
    name, needs = "maxlogit_head", ("head",)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return -z[:, self.head_classes_].max(axis=1)


@register_score
class MaxLogitTail(Score):
    name, needs = "maxlogit_tail", ("tail",)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return z[:, self.tail_classes_].max(axis=1)


def p_tail(logits: np.ndarray, tail_classes) -> np.ndarray:
    """P(tail) = sum_{c in tail} softmax(z)_c per row (N,); the one place it is computed (evaluation,
    threshold calibration and ``predict`` all call it)."""
    z = as_array(logits, "logits", ndim=2)  # float64, as every score
    if len(tail_classes) == 0:
        return np.zeros(len(z))
    return softmax(z, axis=1)[:, np.asarray(tail_classes)].sum(axis=1)


def logit_score(name: str, logits, head_classes, tail_classes) -> np.ndarray:
    """A registered logit score (higher = more tail) of ``logits`` (N, K): P(tail) through :func:`p_tail`,
    any other through its :class:`Score` (e.g. the head energy of a head-only row)."""
    if name == "p_tail":
        return p_tail(logits, tail_classes)
    return build_score(name).fit(None, None, head_classes, tail_classes).score(logits)


@register_score
class PTail(Score):
    name, needs = "p_tail", ("tail",)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return p_tail(z, self.tail_classes_)
