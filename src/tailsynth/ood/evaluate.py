"""One call for the evaluation stage: classification metrics, every OOD score's FPR@95 and AUROC.

Scores are fitted on the TRAINING features/labels (Mahalanobis means and covariance) and applied to the
evaluated split; the primary score (LoGex: ``p_tail``) also gets the top-level ``fpr95`` / ``auroc``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import TailsynthError
from .base import SCORES, Score, as_array, as_labels, build_score, check_class_sets
from .metrics import auroc, balanced_accuracy_on, fpr_at_tpr, group_accuracy, tail_threshold, top1

Outputs = tuple[Any, Any, Any]  # (logits (N, K), features (N, D), labels (N,))


def fit_scores(names: Sequence[str] | None, head_classes: Sequence[int], tail_classes: Sequence[int],
               train_features: Any, train_labels: Any) -> dict[str, Score]:
    """Build and fit each named score (None: every registered score)."""
    fitted = {}
    for name in (SCORES.names() if names is None else list(names)):
        fitted[name] = build_score(name).fit(train_features, train_labels, head_classes, tail_classes)
    return fitted


def compute_scores(logits: Any, features: Any, head_classes: Sequence[int], tail_classes: Sequence[int],
                   train_features: Any, train_labels: Any, scores: Sequence[str] | None = None
                   ) -> dict[str, np.ndarray]:
    """Per-sample tail scores {name: float64 (N,)} (higher = more tail), e.g. to save for ROC plots."""
    fitted = fit_scores(scores, head_classes, tail_classes, train_features, train_labels)
    return {name: s.score(logits, features) for name, s in fitted.items()}


def _split_by_group(values: np.ndarray, labels: np.ndarray, head: np.ndarray, tail: np.ndarray):
    return values[np.isin(labels, head)], values[np.isin(labels, tail)]


def evaluate(logits: Any, features: Any, labels: Any, head_classes: Sequence[int], tail_classes: Sequence[int],
             train_features: Any, train_labels: Any, groups: Mapping[str, Sequence[int]] | None = None,
             scores: Sequence[str] | None = None, primary: str = "p_tail", tpr: float = 0.95) -> dict[str, Any]:
    """Metrics of one evaluated split.

    Returns ``{"acc", "bacc_head", "bacc_tail", "acc_<group>"..., "fpr95", "auroc" (of ``primary``),
    "scores": {name: {"fpr95", "auroc"}}}``. Predictions are argmax over ALL classes.
    """
    result, _ = _evaluate_with_arrays(logits, features, labels, head_classes, tail_classes, train_features,
                                      train_labels, groups, scores, primary, tpr)
    return result


def _evaluate_with_arrays(logits, features, labels, head_classes, tail_classes, train_features, train_labels,
                          groups, scores, primary, tpr):
    head, tail = check_class_sets(head_classes, tail_classes)
    if tail.size == 0:
        raise TailsynthError("tail metrics (bAcc-tail, FPR@95, AUROC) need tail classes; this benchmark has none")
    z = as_array(logits, "logits", ndim=2)
    y = as_labels(labels)
    if len(z) != len(y):
        raise TailsynthError(f"{len(z)} logits but {len(y)} labels")
    names = SCORES.names() if scores is None else list(scores)
    if primary not in names:
        names.append(primary)
    pred = z.argmax(axis=1)
    result: dict[str, Any] = {"acc": top1(y, pred), "bacc_head": balanced_accuracy_on(y, pred, head),
                              "bacc_tail": balanced_accuracy_on(y, pred, tail)}
    if groups:
        for name, value in group_accuracy(y, pred, groups).items():
            result[f"acc_{name}"] = value
    arrays = compute_scores(z, features, head, tail, train_features, train_labels, names)
    result["scores"] = {}
    for name in names:
        s_head, s_tail = _split_by_group(arrays[name], y, head, tail)
        result["scores"][name] = {"fpr95": fpr_at_tpr(s_head, s_tail, tpr), "auroc": auroc(s_head, s_tail)}
    result["fpr95"] = result["scores"][primary]["fpr95"]
    result["auroc"] = result["scores"][primary]["auroc"]
    return result, arrays


def evaluate_scores(test: Outputs, train: Outputs, val: Outputs | None, *, head_classes: Sequence[int],
                    tail_classes: Sequence[int], groups: Mapping[str, Sequence[int]] | None = None,
                    score_names: Sequence[str] | None = None, primary: str = "p_tail", tpr: float = 0.95
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Evaluation-stage entry point. ``test``/``train``/``val`` are (logits, features, labels) tuples.

    Returns ``(result, test_score_arrays)`` with ``result = {"metrics": {acc, bacc_head, bacc_tail,
    acc_<group>, fpr95, auroc}, "scores": {name: {fpr95, auroc}}, "threshold": {...} or None}``.
    ``threshold`` is the operating point of ``primary`` calibrated on the VALIDATION head samples (keeps
    ``tpr`` of them) and applied to the test split: a sample is flagged tail iff score > ``score_threshold``.
    """
    _, train_feats, train_labels = train
    metrics, arrays = _evaluate_with_arrays(test[0], test[1], test[2], head_classes, tail_classes, train_feats,
                                            train_labels, groups, score_names, primary, tpr)
    scores = metrics.pop("scores")
    threshold = None
    if val is not None and len(val[2]) > 0:
        threshold = _val_threshold(val, test, arrays[primary], train, head_classes, tail_classes, primary, tpr)
    return {"metrics": metrics, "scores": scores, "threshold": threshold}, arrays


def _val_threshold(val: Outputs, test: Outputs, test_scores: np.ndarray, train: Outputs,
                   head_classes: Sequence[int], tail_classes: Sequence[int], primary: str, tpr: float) -> dict:
    head, tail = check_class_sets(head_classes, tail_classes)
    score = build_score(primary).fit(train[1], train[2], head, tail)
    val_scores = score.score(val[0], val[1])
    val_labels, test_labels = as_labels(val[2], "val labels"), as_labels(test[2], "test labels")
    val_head, _ = _split_by_group(val_scores, val_labels, head, tail)
    t = -tail_threshold(val_scores, np.isin(val_labels, head), tpr)  # head-likeness threshold on val
    test_head, test_tail = _split_by_group(test_scores, test_labels, head, tail)
    return {"score": primary, "target_tpr": tpr, "score_threshold": -t,
            "val_head_tpr": float(np.mean(-val_head >= t)),
            "test_head_tpr": float(np.mean(-test_head >= t)) if test_head.size else None,
            "test_tail_fpr": float(np.mean(-test_tail >= t)) if test_tail.size else None}
