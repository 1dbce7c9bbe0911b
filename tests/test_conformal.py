"""Split-conformal thresholds of the rare-case flag (``tailsynth.ood.conformal``) on exchangeable synthetic scores:
coverage equals the rule's k/(n+1) (not a looser quantile), per class for Mondrian, the k > n error, and the
beta-binomial band of the realised head flag rate against a simulation."""
import math

import numpy as np
import pytest
from scipy.stats import betabinom

from tailsynth.errors import TailsynthError
from tailsynth.ood.conformal import (RULE, beta_parameters, calibration_record, conformal_rank, conformal_threshold,
                                     flag, flag_mondrian, flag_rate_band, held_out_calibration, min_calibration_size,
                                     mondrian_thresholds, threshold_of_card)

DRAWS = 2000


def _within_3_se(values: np.ndarray, target: float) -> None:
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - target) < 3 * se, (values.mean(), target, se)


@pytest.mark.parametrize("n,alpha", [(19, 0.05), (50, 0.05), (30, 0.1), (99, 0.01), (137, 0.05)])
def test_coverage_is_the_rules_k_over_n_plus_one(n, alpha):
    """Uniform scores: the coverage of one calibration set is F(threshold) = the threshold itself; its mean over
    2,000 calibration sets is k/(n+1), k = ceil((n+1)(1-alpha)), within 3 Monte Carlo standard errors, and never
    below 1 - alpha."""
    rng = np.random.default_rng(n)
    k = conformal_rank(n, alpha)
    assert k == math.ceil((n + 1) * (1 - alpha) - 1e-9)
    coverage = np.array([conformal_threshold(rng.random(n), alpha) for _ in range(DRAWS)])
    _within_3_se(coverage, k / (n + 1))
    assert k / (n + 1) >= 1 - alpha - 1e-12
    # the rule, not numpy's interpolated quantile: at n = 50, alpha = 0.05 they differ by more than the tolerance
    if (n, alpha) == (50, 0.05):
        interp = np.array([np.quantile(rng.random(n), 1 - alpha) for _ in range(DRAWS)])
        assert abs(interp.mean() - k / (n + 1)) > 3 * interp.std(ddof=1) / math.sqrt(DRAWS)


def test_flag_rate_of_a_new_exchangeable_head_image_is_at_most_alpha():
    """Non-uniform (exponential) scores, a new image drawn with each calibration set: flagged iff score > threshold,
    the flag rate matches (n+1-k)/(n+1) = floor((n+1) alpha)/(n+1) <= alpha."""
    rng = np.random.default_rng(1)
    n, alpha = 40, 0.05
    flags = np.array([flag(rng.exponential(size=1), conformal_threshold(rng.exponential(size=n), alpha))[0]
                      for _ in range(DRAWS * 4)], dtype=float)
    l, _ = beta_parameters(n, alpha)
    assert l == math.floor((n + 1) * alpha) == n + 1 - conformal_rank(n, alpha)
    _within_3_se(flags, l / (n + 1))
    assert l / (n + 1) <= alpha


def test_mondrian_coverage_holds_per_predicted_head_class():
    """Three groups with different score distributions and sizes: each group's threshold covers k_c/(n_c+1) of
    its own scores (the pooled threshold would over-flag group 2 and under-flag group 0)."""
    rng = np.random.default_rng(2)
    alpha, sizes, scales = 0.1, {0: 30, 1: 60, 2: 19}, {0: 0.5, 1: 1.0, 2: 3.0}
    groups = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    cover = {c: [] for c in sizes}
    for _ in range(DRAWS):
        u = rng.random(groups.size)
        scores = u * np.array([scales[c] for c in groups])
        cut = mondrian_thresholds(scores, groups, alpha)
        for c in sizes:
            cover[c].append(cut[c] / scales[c])  # F_c(threshold) for a uniform on [0, scale_c]
    for c, n in sizes.items():
        _within_3_se(np.array(cover[c]), conformal_rank(n, alpha) / (n + 1))
    new = np.array([0.49, 0.51, 2.9, 3.1])
    thresholds = {0: 0.5, 2: 3.0}
    assert flag_mondrian(new, [0, 0, 2, 2], thresholds).tolist() == [False, True, False, True]


def test_too_few_calibration_scores_is_an_error_naming_n_and_alpha():
    assert min_calibration_size(0.05) == 19 and min_calibration_size(0.01) == 99 and min_calibration_size(0.1) == 9
    conformal_threshold(np.arange(19.0), 0.05)  # k = 19 = n: fine, the largest score
    assert conformal_threshold(np.arange(19.0), 0.05) == 18.0
    with pytest.raises(TailsynthError, match=r"alpha = 0.05.*at least 19.*k = .*= 19 > n = 18"):
        conformal_threshold(np.arange(18.0), 0.05)
    with pytest.raises(TailsynthError, match=r"predicted head class 'b'.*n = 5"):
        mondrian_thresholds(np.arange(40.0), [0] * 35 + [1] * 5, 0.05, names=["a", "b"])
    with pytest.raises(TailsynthError, match="alpha"):
        conformal_threshold(np.arange(50.0), 1.5)


def test_beta_binomial_band_matches_a_simulation():
    """The realised head flag rate on m new head images, over calibration sets, follows
    Beta-binomial(m, l, n+1-l) / m: its simulated 2.5 / 97.5 percentiles and mean match the band's."""
    rng = np.random.default_rng(3)
    n, m, alpha = 60, 200, 0.05
    l, rest = beta_parameters(n, alpha)
    assert (l, rest) == (3, 58)
    rates = np.array([np.mean(rng.random(m) > conformal_threshold(rng.random(n), alpha)) for _ in range(4000)])
    lo, hi = flag_rate_band(n, m, alpha)
    assert (lo, hi) == (betabinom.ppf(0.025, m, l, rest) / m, betabinom.ppf(0.975, m, l, rest) / m)
    _within_3_se(rates, l / (n + 1))
    assert abs(np.quantile(rates, 0.025) - lo) <= 2.0 / m and abs(np.quantile(rates, 0.975) - hi) <= 3.0 / m
    inside = np.mean((rates >= lo) & (rates <= hi))
    assert 0.94 <= inside <= 0.995  # a discrete band holds at least 95 %, up to simulation error


def test_card_record_and_re_thresholding():
    scores = np.linspace(0, 1, 120)
    record = calibration_record(scores, np.arange(120) % 2, score="p_tail", mode="shared")
    assert record["rule"] == RULE and record["n"] == 120 and record["alpha"] == 0.05
    assert record["value"] == conformal_threshold(scores, 0.05)
    assert threshold_of_card(record, None, "card") == record["value"]
    assert threshold_of_card(record, 0.01, "card") > record["value"]
    per_class = threshold_of_card(record, 0.05, "card", mondrian=True, classes=[0, 1])
    assert set(per_class) == {0, 1}
    small = calibration_record(scores[:10], np.zeros(10), score="p_tail", mode="split", fraction=0.1)
    assert small["value"] is None and "at least 19" in small["error"]
    old = {"score": "p_tail", "value": 0.3, "target_head_tpr": 0.95}
    assert threshold_of_card(old, None, "card X") == 0.3
    with pytest.raises(TailsynthError, match=r"card X has no calibration scores.*--force train_classifier"):
        threshold_of_card(old, 0.01, "card X")


def test_held_out_calibration_is_seeded_and_head_only():
    labels = np.array([0, 1, 2, 3] * 25 + [4, 5] * 5)
    a = held_out_calibration(labels, [4, 5], 0.3, seed=0)
    assert a.sum() == 30 and not np.isin(labels[a], [4, 5]).any()
    assert (a == held_out_calibration(labels, [4, 5], 0.3, seed=0)).all()
    assert (a != held_out_calibration(labels, [4, 5], 0.3, seed=1)).any()
    with pytest.raises(TailsynthError, match="fraction"):
        held_out_calibration(np.array([0, 4, 5]), [4, 5], 0.3, seed=0)  # one head image: none left for selection
