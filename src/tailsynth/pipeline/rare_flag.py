"""The rare-case flag in the stages: which validation images calibrate it (``classifier.calibration``), and how
it does on the test split (the evaluate stage's ``rare_flag`` block of ``metrics.json``).

The conformal arithmetic is :mod:`tailsynth.ood.conformal`; the threshold itself is computed once, by
``calibrate_tail_threshold`` (``engine/artifacts.py``), and stored in the model card; the evaluate stage applies
the card's calibration scores to the test split, as ``predict`` would.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import TailsynthError
from ..ood import logit_score
from ..ood.conformal import (RULE, beta_parameters, conformal_rank, conformal_threshold, flag_rate_band,
                             held_out_calibration)

REPORTED_ALPHAS = (0.05, 0.01)


def subset_validation(val: Any, keep: np.ndarray, val_labels: np.ndarray) -> Any:
    """The selection part of a method's validation data (images, or LDMLR's cached features): the rows ``keep``.
    The data must be row-aligned with the validation images (same labels in the same order)."""
    labels = np.asarray(getattr(val, "labels", None))
    if labels.shape != val_labels.shape or not np.array_equal(labels, val_labels):
        raise TailsynthError("classifier.calibration.mode = split needs the method's validation data row-aligned "
                             f"with the validation images ({type(val).__name__} is not)")
    values = {f.name: getattr(val, f.name) for f in dataclasses.fields(val)}
    return type(val)(**{name: (v[keep] if isinstance(v, np.ndarray) and len(v) == len(keep) else v)
                        for name, v in values.items()})


def selection_and_calibration(val: Any, val_images: Any, split, calibration, seed: int) -> tuple[Any, dict]:
    """(validation data for model selection, keyword arguments of ``calibrate_tail_threshold``).

    ``shared`` (default): selection sees every validation image and the threshold calibrates on every validation
    head image (unchanged arguments, so the artifact is the one earlier versions made). ``split``: a seeded
    ``fraction`` of the validation head images (the row's seed) leaves selection and is the calibration set."""
    if calibration.mode == "shared" or not split.tail_classes:
        return val, {}
    held = held_out_calibration(val_images.labels, split.tail_classes, calibration.fraction, seed)
    return subset_validation(val, ~held, np.asarray(val_images.labels)), {
        "calibration": held, "mode": "split", "fraction": calibration.fraction}


def _one_alpha(alpha: float, cal: np.ndarray, test_head: np.ndarray, test_tail: np.ndarray) -> dict[str, Any]:
    n, m = int(cal.size), int(test_head.size)
    entry: dict[str, Any] = {"alpha": alpha, "k": conformal_rank(n, alpha)}
    try:
        threshold = conformal_threshold(cal, alpha, where="rare-case flag")
    except TailsynthError as err:
        return {**entry, "error": str(err)}
    rate = float(np.mean(test_head > threshold)) if m else None
    a, b = beta_parameters(n, alpha)
    lo, hi = flag_rate_band(n, m, alpha) if m else (None, None)
    return {**entry, "threshold": threshold, "beta": [a, b], "expected_head_flag_rate": a / (n + 1),
            "head_flag_rate": rate, "m_head": m, "band95": [lo, hi],
            "inside_band": None if rate is None else bool(lo <= rate <= hi),
            "tail_recall": float(np.mean(test_tail > threshold)) if test_tail.size else None,
            "m_tail": int(test_tail.size)}


def rare_flag_metrics(card: Mapping[str, Any], test_logits: np.ndarray, test_labels: np.ndarray,
                      val_logits: np.ndarray, val_labels: np.ndarray, split,
                      alphas: Sequence[float] = REPORTED_ALPHAS) -> dict[str, Any] | None:
    """The ``rare_flag`` block of ``metrics.json``: per alpha, the split-conformal threshold from the card's
    calibration head scores, the realised head flag rate on the TEST head images with its 95 % beta-binomial
    band, and the tail recall (share of test tail images flagged). The test split is only scored, never used
    to choose the threshold. A card made before calibration scores were stored: the validation head images
    (what ``shared`` mode calibrates on). None without tail classes."""
    if not split.tail_classes:
        return None
    record = card.get("tail_threshold") or {}
    score = record.get("score", "p_tail")
    if "calibration_scores" in record:
        cal = np.asarray(record["calibration_scores"], dtype=np.float64)
        mode, source = record.get("mode", "shared"), "model card"
    else:
        val_scores = logit_score(score, val_logits, split.head_classes, split.tail_classes)
        cal = np.asarray(val_scores, dtype=np.float64)[~np.isin(val_labels, split.tail_classes)]
        mode, source = "shared", "validation head images (the card predates stored calibration scores)"
    test = np.asarray(logit_score(score, test_logits, split.head_classes, split.tail_classes), dtype=np.float64)
    is_tail = np.isin(test_labels, split.tail_classes)
    return {"score": score, "rule": RULE, "mode": mode, "n": int(cal.size), "source": source,
            "alphas": {f"{a:g}": _one_alpha(a, cal, test[~is_tail], test[is_tail]) for a in alphas}}
