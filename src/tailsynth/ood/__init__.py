"""Tail-detection scores (higher = more tail, always), metrics and the evaluation entry points."""
from . import logit_scores, mahalanobis, posthoc  # noqa: F401  (registers the scores)
from .base import SCORES, Score, build_score
from .evaluate import compute_scores, evaluate, evaluate_scores, fit_scores
from .logit_scores import logit_score, p_tail
from .metrics import auroc, balanced_accuracy_on, fpr_at_tpr, group_accuracy, head_threshold, tail_threshold, top1
from .rarity import avg_knn_distance, lof_scores

__all__ = ["SCORES", "Score", "auroc", "avg_knn_distance", "balanced_accuracy_on", "build_score", "compute_scores",
           "evaluate", "evaluate_scores", "fit_scores", "fpr_at_tpr", "group_accuracy", "head_threshold",
           "lof_scores", "logit_score", "p_tail", "tail_threshold", "top1"]
