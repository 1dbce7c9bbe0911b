"""Far-OOD in the evaluate stage: the experiment's ``far_ood:`` sets (:mod:`tailsynth.data.far`) scored with every
score of the test split.

Each far set's images go through the row's classifier; every score is fitted on the training features exactly as
for the test split (:func:`tailsynth.ood.evaluate.fit_scores`) and applied to them. FPR@95 and AUROC follow the
near-OOD convention: the head TEST images are the positives (TPR), the far images the negatives ("tail-like"), a
higher score = more tail. ``metrics.json`` gets ``far_ood: {set: {"n", "source", "primary": {"score", "fpr95",
"auroc"}, "scores": {score: {"fpr95", "auroc"}}}}`` and the artifact ``far_scores.npz`` the per-image scores
(``<set>/<score>``), so every value can be recomputed from the saved arrays (the head positives are the rows of
``scores.npz`` whose ``is_tail`` is false).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import flatten_mapping
from ..data import describe_source, load_benchmark_config
from ..data.far import FarSet, check_far_sets, far_images, resolve_far_sets, skip_warning
from ..ood.base import check_class_sets
from ..ood.evaluate import fit_scores
from ..ood.metrics import auroc, fpr_at_tpr
from ..utils import atomic_write_bytes
from .experiment import ExperimentConfig

FAR_SCORES_FILE = "far_scores.npz"


def check_far(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """``cfg.far_ood`` checked against this machine and the benchmark (see :func:`tailsynth.data.far.check_far_sets`);
    returns the skipped built-in sets (name, reason). Raises for an unknown, duplicate or missing user's set."""
    if not cfg.far_ood:
        return []
    bench = load_benchmark_config(cfg.benchmark, flatten_mapping(cfg.benchmark_overrides))
    return check_far_sets(list(cfg.far_ood), bench.source)


def far_sets_of(cfg: ExperimentConfig) -> list[FarSet]:
    """The far sets the evaluate stage gets (skipped built-ins left out), each with its content fingerprint."""
    return resolve_far_sets(list(cfg.far_ood))[0] if cfg.far_ood else []


def log_skipped(cfg: ExperimentConfig, log: Callable[[str], None]) -> dict[str, str]:
    """Log one warning line per skipped built-in far set; returns {name: reason} (the report's ``meta``)."""
    skipped = dict(check_far(cfg))
    for name, reason in skipped.items():
        log(skip_warning(name, reason))
    return skipped


def far_ood_metrics(far_sets: list[FarSet], predict_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    data, score_names: list[str], primary: str, head_classes, tail_classes,
                    train: tuple[Any, Any, Any], val: tuple[Any, Any, Any] | None, classifier: Any,
                    test_labels: np.ndarray, test_scores: dict[str, np.ndarray], workdir: Path,
                    tpr: float = 0.95) -> dict[str, Any]:
    """The ``far_ood`` block of ``metrics.json`` (module docstring); writes ``far_scores.npz`` into ``workdir``.

    ``predict_fn(images) -> (logits, features)``; the scores are fitted as :func:`tailsynth.ood.evaluate_scores`
    fits them for the test split (on ``train``, hyper-parameters chosen on ``val``, ``classifier`` = the (W, b) of
    the classifier layer); ``test_scores``: the test split's per-image scores (the arrays of ``scores.npz``), whose
    head rows are the positives."""
    names = list(score_names) + ([primary] if primary not in score_names else [])
    head, tail = check_class_sets(head_classes, tail_classes)
    fitted = fit_scores(names, head, tail, train[1], train[2], train_logits=train[0], classifier=classifier, val=val)
    is_head = np.isin(test_labels, head)
    block: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for far in far_sets:
        logits, feats = predict_fn(far_images(far, data))
        scores = {}
        for name, score in fitted.items():
            values = np.asarray(score.score(logits, feats), dtype=np.float64)
            arrays[f"{far.name}/{name}"] = values
            positives = np.asarray(test_scores[name])[is_head]
            scores[name] = {"fpr95": fpr_at_tpr(positives, values, tpr), "auroc": auroc(positives, values)}
        block[far.name] = {"n": int(len(logits)), "source": describe_source(far.source),
                           "primary": {"score": primary, **scores[primary]}, "scores": scores}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(workdir / FAR_SCORES_FILE, buffer.getvalue())
    return block
