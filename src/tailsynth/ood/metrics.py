"""Tail-detection and classification metrics (LoGex code ``src/utils.py``; Dream-OOD convention).

Scores are tail scores (higher = more tail). The head (in-distribution) is the positive class for "TPR":
head-likeness h = -score; the threshold t is the (1 - tpr) quantile of the head samples' h (numpy's
default linear interpolation, ``np.quantile(h_head, 1 - tpr)`` exactly as LoGex/Dream-OOD); a sample is
accepted as head iff h >= t, and FPR = share of tail samples accepted as head.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from ..errors import TailsynthError
from .base import as_array, as_labels


def _two_groups(head_scores: Any, tail_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    head = as_array(head_scores, "head scores", ndim=1)
    tail = as_array(tail_scores, "tail scores", ndim=1)
    if head.size == 0 or tail.size == 0:
        raise TailsynthError(f"tail-detection metrics need head and tail samples; got {head.size} head "
                             f"and {tail.size} tail scores (does the benchmark have tail classes?)")
    return head, tail


def head_threshold(head_scores: Any, tpr: float = 0.95) -> float:
    """t = quantile(-head_scores, 1 - tpr): head-likeness threshold that keeps ``tpr`` of the head."""
    if not 0.0 < tpr <= 1.0:
        raise TailsynthError(f"tpr must be in (0, 1], got {tpr}")
    head = as_array(head_scores, "head scores", ndim=1)
    if head.size == 0:
        raise TailsynthError("a head-TPR threshold needs at least one head sample")
    return float(np.quantile(-head, 1.0 - tpr))


def tail_threshold(val_scores: Any, val_is_head: Any, tpr: float = 0.95) -> float:
    """The operating point of a tail score, calibrated on VALIDATION: the score above which a sample is
    flagged tail, chosen so that ``tpr`` of the validation head samples stay at or below it
    (``-head_threshold(head scores)``). The one place the threshold is computed (evaluation and ``predict``)."""
    scores = as_array(val_scores, "validation scores", ndim=1)
    return -head_threshold(scores[np.asarray(val_is_head, dtype=bool)], tpr)


def fpr_at_tpr(head_scores: Any, tail_scores: Any, tpr: float = 0.95) -> float:
    """FPR@TPR: share of tail samples with head-likeness -score >= t, t = :func:`head_threshold`."""
    head, tail = _two_groups(head_scores, tail_scores)
    t = head_threshold(head, tpr)
    return float(np.mean(-tail >= t))


def auroc(head_scores: Any, tail_scores: Any) -> float:
    """Area under the ROC curve with the tail positive on the score (= head positive on -score).

    Mann-Whitney U / (n_head n_tail) with average ranks for ties; equals sklearn ``roc_auc_score``.
    """
    head, tail = _two_groups(head_scores, tail_scores)
    ranks = rankdata(np.concatenate([head, tail]))       # average ranks for ties
    rank_sum_tail = ranks[len(head):].sum()
    u = rank_sum_tail - len(tail) * (len(tail) + 1) / 2.0
    return float(u / (len(head) * len(tail)))


def _pred_labels(y_pred: Any) -> np.ndarray:
    """Predicted labels from labels (N,) or from logits/probabilities (N, K) (argmax over ALL classes)."""
    if hasattr(y_pred, "detach"):
        y_pred = y_pred.detach().cpu().numpy()
    arr = np.asarray(y_pred)
    if arr.ndim == 2:
        return arr.argmax(axis=1).astype(np.int64)
    return as_labels(arr, "predictions")


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y = as_labels(y_true, "true labels")
    p = _pred_labels(y_pred)
    if len(y) != len(p):
        raise TailsynthError(f"{len(y)} true labels but {len(p)} predictions")
    return y, p


def top1(y_true: Any, y_pred: Any) -> float:
    """Top-1 accuracy; ``y_pred`` are labels (N,) or logits (N, K)."""
    y, p = _pair(y_true, y_pred)
    if y.size == 0:
        raise TailsynthError("top-1 accuracy of an empty set")
    return float(np.mean(y == p))


def balanced_accuracy_on(y_true: Any, y_pred: Any, classes: Sequence[int]) -> float:
    """Balanced accuracy (mean per-class recall) over the samples whose TRUE label is in ``classes``.

    Predictions are argmax over ALL classes, so predicting a tail class for a head image is an error
    (LoGex bAcc-head / bAcc-tail). Classes of ``classes`` without samples are skipped, as sklearn's
    ``balanced_accuracy_score(y_true[mask], y_pred[mask])`` does.
    """
    y, p = _pair(y_true, y_pred)
    recalls = []
    for c in sorted({int(c) for c in classes}):
        mask = y == c
        if mask.any():
            recalls.append(float(np.mean(p[mask] == c)))
    if not recalls:
        raise TailsynthError(f"balanced accuracy: no sample has a true label in classes {list(classes)}")
    return float(np.mean(recalls))


def group_accuracy(y_true: Any, y_pred: Any, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Top-1 accuracy over the samples of each class group (e.g. many / medium / few shot)."""
    y, p = _pair(y_true, y_pred)
    out = {}
    for name, classes in groups.items():
        mask = np.isin(y, np.asarray(list(classes), dtype=np.int64))
        if not mask.any():
            raise TailsynthError(f"group accuracy: group {name!r} (classes {list(classes)}) has no sample")
        out[name] = float(np.mean(y[mask] == p[mask]))
    return out
