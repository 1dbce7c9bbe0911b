"""Split-conformal thresholds for the rare-case flag (Vovk et al. 2005; Papadopoulos et al. 2002; Angelopoulos &
Bates 2021, "A gentle introduction to conformal prediction", Sec. 1 and Appendix D).

Any tail score (higher = more tail) and a user-set miscoverage ``alpha``: from n held-out HEAD scores
s_1..s_n the threshold is the k-th smallest, k = ceil((n + 1)(1 - alpha)), and an image is flagged iff its score
is strictly above it. If the calibration scores and a new head image's score are exchangeable, the new image's
rank among the n + 1 is uniform, so

    P(flag) = P(s_new > s_(k)) <= (n + 1 - k) / (n + 1) = floor((n + 1) alpha) / (n + 1) <= alpha

(with equality in the middle when there are no ties; ties only lower it). k > n (n < 1/alpha - 1) has no finite
threshold with that guarantee: an error naming n and alpha.

**Mondrian** (Vovk et al. 2003; Vovk 2012 "Conditional validity of inductive conformal predictors"): one
threshold per group, from that group's calibration scores only. The group is the classifier's PREDICTED head class
(argmax over the head logits), known at prediction time, so for every head class c:
P(flag | predicted head class = c) <= alpha, for a new head image exchangeable with the calibration head images
whose prediction is c. It needs n_c >= 1/alpha - 1 calibration images predicted c (an error names the class).

**Beta-binomial band** (Vovk 2012, Prop. 2a; Angelopoulos & Bates, Sec. 3.2). For continuous scores with CDF F,
the head flag rate of a fixed calibration set is 1 - F(s_(k)); F(s_(k)) is the k-th order statistic of n
uniforms, Beta(k, n + 1 - k), so the flag rate is Beta(n + 1 - k, k) = Beta(l, n + 1 - l) with
l = n + 1 - k = floor((n + 1) alpha) (mean l / (n + 1)). On m new head images the number flagged is
Binomial(m, rate) given the calibration set, hence Beta-binomial(m, l, n + 1 - l) over calibration sets; its
2.5 / 97.5 percentiles / m are the 95 % band of the realised head flag rate.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import TailsynthError
from .base import as_array

DEFAULT_ALPHA = 0.05
RULE = "split-conformal: k-th smallest of n, k = ceil((n+1)(1-alpha))"
_EPS = 1e-9  # (n + 1)(1 - alpha) computed in floats: 20 * 0.95 must give k = 19, not 20


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise TailsynthError(f"alpha (the target head flag rate) must be in (0, 1), got {alpha}")
    return alpha


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the rank of the threshold among the n calibration scores (may exceed n)."""
    alpha = _check_alpha(alpha)
    return int(math.ceil((n + 1) * (1.0 - alpha) - _EPS))


def min_calibration_size(alpha: float) -> int:
    """The smallest n with k <= n, i.e. n >= 1/alpha - 1."""
    alpha = _check_alpha(alpha)
    n = max(int(math.ceil(1.0 / alpha - 1.0 - _EPS)), 1)
    while conformal_rank(n, alpha) > n:  # float edge cases
        n += 1
    return n


def beta_parameters(n: int, alpha: float) -> tuple[int, int]:
    """(l, n + 1 - l), l = floor((n + 1) alpha) = n + 1 - k: the head flag rate over calibration sets is
    Beta(l, n + 1 - l) (continuous scores)."""
    k = conformal_rank(n, alpha)
    return n + 1 - k, k


def _too_few(n: int, alpha: float, where: str) -> TailsynthError:
    need = min_calibration_size(alpha)
    return TailsynthError(
        f"{where}: a split-conformal threshold at alpha = {alpha:g} needs at least {need} calibration head scores "
        f"(k = ceil((n+1)(1-alpha)) = {conformal_rank(n, alpha)} > n = {n}); use a larger alpha (>= "
        f"{1.0 / (n + 1):.4g} for n = {n}) or more calibration images")


def conformal_threshold(head_scores: Any, alpha: float = DEFAULT_ALPHA, where: str = "calibration") -> float:
    """The k-th smallest of the n calibration head scores, k = ceil((n + 1)(1 - alpha)); flag iff score > it.
    k > n is an error naming n and alpha."""
    alpha = _check_alpha(alpha)
    scores = as_array(head_scores, "calibration head scores", ndim=1)
    n = scores.size
    k = conformal_rank(n, alpha)
    if n == 0 or k > n:
        raise _too_few(n, alpha, where)
    return float(np.partition(scores, k - 1)[k - 1])


def mondrian_thresholds(head_scores: Any, groups: Any, alpha: float = DEFAULT_ALPHA,
                        classes: Sequence[int] | None = None, names: Sequence[str] | None = None,
                        where: str = "calibration") -> dict[int, float]:
    """{group: threshold}: the split-conformal threshold of each group's own calibration scores (the group = the
    predicted head class). ``classes``: the groups that need a threshold (default: those present); a group with
    too few scores is an error naming it (``names[group]`` when given)."""
    scores = as_array(head_scores, "calibration head scores", ndim=1)
    groups = np.asarray(groups, dtype=np.int64).reshape(-1)
    if groups.shape != scores.shape:
        raise TailsynthError(f"{where}: {scores.size} calibration scores but {groups.size} group labels")
    wanted = sorted({int(g) for g in groups}) if classes is None else [int(c) for c in classes]
    out = {}
    for c in wanted:
        label = names[c] if names is not None else c
        out[c] = conformal_threshold(scores[groups == c], alpha, where=f"{where}, predicted head class {label!r}")
    return out


def flag(scores: Any, threshold: float) -> np.ndarray:
    """The rare flag: score strictly above the threshold."""
    return as_array(scores, "scores", ndim=1) > threshold


def flag_mondrian(scores: Any, groups: Any, thresholds: Mapping[int, float]) -> np.ndarray:
    """The rare flag with one threshold per group (predicted head class)."""
    scores = as_array(scores, "scores", ndim=1)
    cut = np.array([thresholds[int(g)] for g in np.asarray(groups).reshape(-1)], dtype=np.float64)
    return scores > cut


def flag_rate_band(n: int, m: int, alpha: float, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` band of the realised head flag rate on m new head images: the (1 - level)/2 and
    (1 + level)/2 quantiles of Beta-binomial(m, l, n + 1 - l), divided by m."""
    from scipy.stats import betabinom
    if m <= 0:
        raise TailsynthError(f"a flag-rate band needs at least one test head image, got m = {m}")
    if conformal_rank(n, alpha) > n:
        raise _too_few(n, alpha, "flag-rate band")
    a, b = beta_parameters(n, alpha)
    lo, hi = betabinom.ppf([(1 - level) / 2, (1 + level) / 2], m, a, b)
    return float(lo) / m, float(hi) / m


def held_out_calibration(labels: Any, tail_classes: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over the validation images: a seeded ``fraction`` of the HEAD images (at least one), held out
    from model selection for calibration only (``classifier.calibration.mode: split``). Tail images are never
    held out. Drawn with ``numpy.random.default_rng(seed)`` (the row's seed)."""
    labels = np.asarray(labels).reshape(-1)
    head = np.flatnonzero(~np.isin(labels, np.asarray(list(tail_classes), dtype=np.int64)))
    if not 0.0 < fraction < 1.0:
        raise TailsynthError(f"classifier.calibration.fraction must be in (0, 1), got {fraction}")
    take = int(round(fraction * head.size))
    if head.size < 2 or take < 1 or take >= head.size:
        raise TailsynthError(f"classifier.calibration.fraction = {fraction} of {head.size} validation head images "
                             f"leaves {take} for calibration and {head.size - take} for model selection; both need "
                             f"at least one")
    chosen = np.random.default_rng(seed).permutation(head)[:take]
    mask = np.zeros(labels.size, dtype=bool)
    mask[chosen] = True
    return mask


def held_out_of_card(card: Mapping[str, Any], val_labels: Any, tail_classes: Sequence[int]) -> dict[str, Any]:
    """The calibration arguments of ``calibrate_tail_threshold`` for a classifier re-calibrated from ``card``
    (label shift): the same held-out validation head images (mask ``calibration``) when the card was calibrated
    in ``split`` mode, else {} (shared: every validation head image)."""
    record = card.get("tail_threshold") or {}
    if record.get("mode") != "split":
        return {}
    held = held_out_calibration(val_labels, tail_classes, record["fraction"], int(card["seed"]))
    return {"calibration": held, "mode": "split", "fraction": record["fraction"]}


def calibration_record(scores: np.ndarray, head_pred: np.ndarray, *, score: str, mode: str,
                       alpha: float = DEFAULT_ALPHA, fraction: float | None = None) -> dict[str, Any]:
    """The conformal part of the model card's ``tail_threshold``: alpha, rule, n, k, mode, the calibration head
    scores and their predicted head classes (Mondrian), and ``value`` = the threshold at ``alpha`` (None, with
    ``error``, when n is too small for it)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = int(scores.size)
    record: dict[str, Any] = {"score": score, "alpha": float(alpha), "rule": RULE, "n": n,
                              "k": conformal_rank(n, alpha), "mode": mode}
    if fraction is not None:
        record["fraction"] = float(fraction)
    try:
        record["value"] = conformal_threshold(scores, alpha)
    except TailsynthError as err:
        record["value"], record["error"] = None, str(err)
    record["calibration_scores"] = scores.tolist()
    record["calibration_head_class"] = np.asarray(head_pred, dtype=np.int64).reshape(-1).tolist()
    return record


def threshold_of_card(record: Mapping[str, Any] | None, alpha: float | None, where: str,
                      mondrian: bool = False, classes: Sequence[int] | None = None,
                      names: Sequence[str] | None = None) -> float | dict[int, float] | None:
    """The threshold a model card's ``tail_threshold`` gives at ``alpha`` (None: the stored value, the card's own
    alpha), or per predicted head class with ``mondrian`` (``classes``: the head classes, each needs enough). Re-thresholding needs the stored calibration scores: a
    card without them is an error naming it and what to do."""
    record = record or {}
    if alpha is None and not mondrian:
        return record.get("value")
    if not record:
        raise TailsynthError(f"{where} has no rare-case threshold (no tail classes): nothing to re-threshold")
    if "calibration_scores" not in record:
        raise TailsynthError(
            f"{where} has no calibration scores (its model card predates split-conformal thresholds), so it cannot "
            f"be re-thresholded at another alpha; rebuild the classifier with this version (`tailsynth run CONFIG "
            f"--force train_classifier`), or predict without --alpha to use its stored threshold")
    alpha = record.get("alpha", DEFAULT_ALPHA) if alpha is None else alpha
    scores = record["calibration_scores"]
    if mondrian:
        return mondrian_thresholds(scores, record["calibration_head_class"], alpha, classes, names, where=where)
    return conformal_threshold(scores, alpha, where=where)
