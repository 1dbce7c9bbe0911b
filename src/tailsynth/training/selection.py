"""Model-selection criteria on the validation split (never the test split)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import TailsynthError
from ..ood.metrics import balanced_accuracy_on, fpr_at_tpr
from .trainer import SelectFn


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _labelled(label: str, select: SelectFn) -> SelectFn:
    select.label = label  # the name the trainer's epoch lines print
    return select


def make_selector(name: str, head_classes: Sequence[int], tail_classes: Sequence[int],
                  score: str = "p_tail") -> SelectFn | None:
    """``bacc_head_minus_fpr`` (LoGex: bAcc-head minus FPR@95 of P(tail), or of ``score``, a row's own logit score
    such as the head energy of Dream-OOD), ``val_acc``, ``val_bacc`` (mean per-class recall), or ``last``."""
    if name == "last":
        return None
    if name == "val_acc":
        return _labelled(name, lambda logits, labels: float((logits.argmax(1) == labels).mean()))
    if name == "val_bacc":
        classes = sorted(set(head_classes) | set(tail_classes))
        return _labelled(name, lambda logits, labels: float(balanced_accuracy_on(labels, logits.argmax(1), classes)))
    if name == "bacc_head_minus_fpr":
        if len(tail_classes) == 0:
            raise TailsynthError("selection 'bacc_head_minus_fpr' needs tail classes; use 'val_acc' or 'last'")
        tail = np.asarray(tail_classes)

        def select(logits: np.ndarray, labels: np.ndarray) -> float:
            if score == "p_tail":
                p_tail = softmax(logits.astype(np.float64))[:, tail].sum(1)
            else:
                from ..ood import logit_score
                p_tail = logit_score(score, logits, head_classes, tail_classes)
            is_tail = np.isin(labels, tail)
            fpr = fpr_at_tpr(p_tail[~is_tail], p_tail[is_tail])
            bacc = balanced_accuracy_on(labels, logits.argmax(1), head_classes)
            return float(bacc - fpr)

        select.label = name if score == "p_tail" else f"{name}({score})"
        return select
    raise TailsynthError(f"unknown selection {name!r}; valid: bacc_head_minus_fpr, val_acc, val_bacc, last")
