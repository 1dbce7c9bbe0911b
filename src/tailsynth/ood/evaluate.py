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
               train_features: Any, train_labels: Any, *, train_logits: Any = None, classifier: Any = None,
               val: Outputs | None = None) -> dict[str, Score]:
    """Build and fit each named score (None: every registered score that can be fitted with what is given). A score
    that also takes the training logits or the classifier layer ``(W, b)`` (its ``fit_kwargs``: ViM, which needs
    one of them) gets them; with ``val`` (logits, features, labels of the validation split) each score then chooses
    its hyper-parameters there (``Score.select``: k-NN's k, ViM's dim; a no-op for the others)."""
    extra = {"logits": train_logits, "classifier": classifier}
    fitted = {}
    for name in (_every_score(train_logits, classifier) if names is None else list(names)):
        score = build_score(name)
        fitted[name] = score.fit(train_features, train_labels, head_classes, tail_classes,
                                 **{key: extra[key] for key in score.fit_kwargs})
        if val is not None and len(val[2]) > 0:
            fitted[name].select(val[0], val[1], val[2], head_classes, tail_classes)
    return fitted


def _every_score(train_logits: Any, classifier: Any) -> list[str]:
    """Every registered score that can be fitted with what is given: ViM needs the training logits or the
    classifier layer (named explicitly without them, it is an error)."""
    given = {"logits": train_logits is not None, "classifier": classifier is not None}
    return [name for name in SCORES.names()
            if not SCORES.get(name).fit_kwargs or any(given[key] for key in SCORES.get(name).fit_kwargs)]


def compute_scores(logits: Any, features: Any, head_classes: Sequence[int], tail_classes: Sequence[int],
                   train_features: Any, train_labels: Any, scores: Sequence[str] | None = None, *,
                   train_logits: Any = None, classifier: Any = None, val: Outputs | None = None
                   ) -> dict[str, np.ndarray]:
    """Per-sample tail scores {name: float64 (N,)} (higher = more tail), e.g. to save for ROC plots."""
    fitted = fit_scores(scores, head_classes, tail_classes, train_features, train_labels,
                        train_logits=train_logits, classifier=classifier, val=val)
    return {name: s.score(logits, features) for name, s in fitted.items()}


def _split_by_group(values: np.ndarray, labels: np.ndarray, head: np.ndarray, tail: np.ndarray):
    return values[np.isin(labels, head)], values[np.isin(labels, tail)]


def evaluate(logits: Any, features: Any, labels: Any, head_classes: Sequence[int], tail_classes: Sequence[int],
             train_features: Any, train_labels: Any, groups: Mapping[str, Sequence[int]] | None = None,
             scores: Sequence[str] | None = None, primary: str = "p_tail", tpr: float = 0.95, *,
             train_logits: Any = None, classifier: Any = None) -> dict[str, Any]:
    """Metrics of one evaluated split.

    Returns ``{"acc", "bacc_head", "bacc_tail", "acc_<group>"..., "fpr95", "auroc" (of ``primary``),
    "scores": {name: {"fpr95", "auroc"}}}``. Predictions are argmax over ALL classes. ``train_logits`` and
    ``classifier`` (W, b) are for ViM (see :func:`fit_scores`).
    """
    result, _ = _evaluate_with_arrays(logits, features, labels, head_classes, tail_classes, train_features,
                                      train_labels, groups, scores, primary, tpr, train_logits, classifier)
    return result


def _evaluate_with_arrays(logits, features, labels, head_classes, tail_classes, train_features, train_labels,
                          groups, scores, primary, tpr, train_logits=None, classifier=None, val=None):
    head, tail = check_class_sets(head_classes, tail_classes)
    if tail.size == 0:
        raise TailsynthError("tail metrics (bAcc-tail, FPR@95, AUROC) need tail classes; this benchmark has none")
    z = as_array(logits, "logits", ndim=2)
    y = as_labels(labels)
    if len(z) != len(y):
        raise TailsynthError(f"{len(z)} logits but {len(y)} labels")
    names = _every_score(train_logits, classifier) if scores is None else list(scores)
    if primary not in names:
        names.append(primary)
    pred = z.argmax(axis=1)
    result: dict[str, Any] = {"acc": top1(y, pred), "bacc_head": balanced_accuracy_on(y, pred, head),
                              "bacc_tail": balanced_accuracy_on(y, pred, tail)}
    if groups:
        for name, value in group_accuracy(y, pred, groups).items():
            result[f"acc_{name}"] = value
    fitted = fit_scores(names, head, tail, train_features, train_labels, train_logits=train_logits,
                        classifier=classifier, val=val)
    arrays = {name: s.score(z, features) for name, s in fitted.items()}
    result["scores"] = {}
    for name in names:
        s_head, s_tail = _split_by_group(arrays[name], y, head, tail)
        result["scores"][name] = {"fpr95": fpr_at_tpr(s_head, s_tail, tpr), "auroc": auroc(s_head, s_tail)}
        if fitted[name].selection_:  # k-NN's k, ViM's dim, chosen on val (a nested block: not a fraction)
            result["scores"][name]["selection"] = dict(fitted[name].selection_)
    result["fpr95"] = result["scores"][primary]["fpr95"]
    result["auroc"] = result["scores"][primary]["auroc"]
    return result, arrays


def evaluate_scores(test: Outputs, train: Outputs, val: Outputs | None, *, head_classes: Sequence[int],
                    tail_classes: Sequence[int], groups: Mapping[str, Sequence[int]] | None = None,
                    score_names: Sequence[str] | None = None, primary: str = "p_tail", tpr: float = 0.95,
                    classifier: Any = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Evaluation-stage entry point. ``test``/``train``/``val`` are (logits, features, labels) tuples.

    Returns ``(result, test_score_arrays)`` with ``result = {"metrics": {acc, bacc_head, bacc_tail,
    acc_<group>, fpr95, auroc}, "scores": {name: {fpr95, auroc}}, "threshold": {...} or None}``.
    ``threshold`` is the operating point of ``primary`` calibrated on the VALIDATION head samples (keeps
    ``tpr`` of them) and applied to the test split: a sample is flagged tail iff score > ``score_threshold``.
    Scores with a hyper-parameter choose it on ``val`` (``Score.select``); ``classifier`` = (W, b) of an affine
    head gives ViM its origin -pinv(W) b (without it: the training head feature mean).
    """
    train_logits, train_feats, train_labels = train
    metrics, arrays = _evaluate_with_arrays(test[0], test[1], test[2], head_classes, tail_classes, train_feats,
                                            train_labels, groups, score_names, primary, tpr, train_logits,
                                            classifier, val)
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
