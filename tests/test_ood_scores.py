"""OOD scores: hand computations on tiny inputs and the registry-wide "higher = more tail" contract."""
import math

import numpy as np
import pytest
import torch

from tailsynth.errors import TailsynthError, UnknownNameError
from tailsynth.ood import SCORES, auroc, build_score

HEAD, TAIL = [0, 1], [2, 3]
LOGITS = np.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.5, 3.0, 1.0]])


def softmax_rows(z):
    out = []
    for row in z:
        e = [math.exp(v) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def fitted(name, features=None, labels=None, head=HEAD, tail=TAIL):
    return build_score(name).fit(features, labels, head, tail)


def test_logit_scores_hand_values():
    p = softmax_rows(LOGITS)
    lse = lambda vals: math.log(sum(math.exp(v) for v in vals))  # noqa: E731
    expected = {
        "msp_head": [-max(r[0], r[1]) for r in p],
        "msp_tail": [max(r[2], r[3]) for r in p],
        "energy_head": [-lse(r[:2]) for r in LOGITS.tolist()],
        "energy_tail": [lse(r[2:]) for r in LOGITS.tolist()],
        "maxlogit_head": [-2.0, -0.5],
        "maxlogit_tail": [0.0, 3.0],
        "p_tail": [r[2] + r[3] for r in p],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(fitted(name).score(LOGITS, None), values, rtol=1e-12, err_msg=name)
    # torch input (float32) gives the same values
    torch_scores = fitted("p_tail").score(torch.tensor(LOGITS, dtype=torch.float32), None)
    assert torch_scores.dtype == np.float64
    np.testing.assert_allclose(torch_scores, expected["p_tail"], rtol=1e-6)


def _maha_train():
    """Three classes, offsets +-(1,0), +-(0,2) around (0,0), (10,0), (0,10): tied Sigma = diag(0.5, 2)."""
    offsets = np.array([[1, 0], [-1, 0], [0, 2], [0, -2]], dtype=float)
    means = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    feats = np.concatenate([m + offsets for m in means])
    labels = np.repeat([0, 1, 2], 4)
    return feats, labels


def test_mahalanobis_hand_values():
    feats, labels = _maha_train()
    z = np.array([[1.0, 1.0], [0.0, 9.0]])
    # P = diag(2, 0.5); MD(z, mu) = 2 dx^2 + 0.5 dy^2
    md = lambda p, m: 2 * (p[0] - m[0]) ** 2 + 0.5 * (p[1] - m[1]) ** 2  # noqa: E731
    head_min = [min(md(p, (0, 0)), md(p, (10, 0))) for p in z]   # [2.5, 40.5]
    tail_min = [md(p, (0, 10)) for p in z]                          # [42.5, 0.5]
    assert head_min == [2.5, 40.5] and tail_min == [42.5, 0.5]
    np.testing.assert_allclose(fitted("maha_head", feats, labels, [0, 1], [2]).score(None, z), head_min)
    np.testing.assert_allclose(fitted("maha_tail", feats, labels, [0, 1], [2]).score(None, z), [-42.5, -0.5])
    np.testing.assert_allclose(fitted("maha_tail_minus_head", feats, labels, [0, 1], [2]).score(None, z),
                               [2.5 - 42.5, 40.5 - 0.5])


def test_relative_mahalanobis_hand_value():
    feats, labels = _maha_train()
    # background Gaussian on all 12 points: mean (10/3, 10/3); cov = within diag(0.5, 2) + between
    mu0 = (10 / 3, 10 / 3)
    a, b, d = 0.5 + 200 / 9, -100 / 9, 2 + 200 / 9          # Sigma_0 = [[a, b], [b, d]]
    det = a * d - b * b
    inv = [[d / det, -b / det], [-b / det, a / det]]
    z = np.array([[1.0, 1.0], [0.0, 9.0]])
    expected = []
    for p in z:
        dx, dy = p[0] - mu0[0], p[1] - mu0[1]
        md0 = inv[0][0] * dx * dx + 2 * inv[0][1] * dx * dy + inv[1][1] * dy * dy
        mdk = [2 * (p[0] - m[0]) ** 2 + 0.5 * (p[1] - m[1]) ** 2 for m in [(0, 0), (10, 0)]]
        expected.append(min(mdk) - md0)
    np.testing.assert_allclose(fitted("rmaha_all", feats, labels, [0, 1], [2]).score(None, z), expected, rtol=1e-10)


def test_head_referenced_mahalanobis_is_fitted_on_the_head_only():
    """maha_head / rmaha: Sigma (and rMaha's background Gaussian) from the head samples only, checked against
    sklearn's EmpiricalCovariance; the *_all variants use head + tail. A widely spread tail class tells them apart."""
    from sklearn.covariance import EmpiricalCovariance
    feats, labels = _maha_train()
    feats = feats.copy()
    feats[labels == 2] = (feats[labels == 2] - [0, 10]) * [3.0, 0.5] + [0, 10]  # tail: another spread
    z = np.array([[1.0, 1.0], [0.0, 9.0], [4.0, -2.0]])
    head = np.isin(labels, [0, 1])
    means = {c: feats[labels == c].mean(0) for c in (0, 1, 2)}

    def within(classes):
        centred = np.concatenate([feats[labels == c] - means[c] for c in classes])
        return EmpiricalCovariance(assume_centered=True).fit(centred).precision_

    def md(p, m, prec):
        return float((p - m) @ prec @ (p - m))

    for name, classes in (("maha_head", [0, 1]), ("maha_head_all", [0, 1, 2])):
        prec = within(classes)
        expected = [min(md(p, means[0], prec), md(p, means[1], prec)) for p in z]
        np.testing.assert_allclose(fitted(name, feats, labels, [0, 1], [2]).score(None, z), expected, rtol=1e-9)
    for name, mask, classes in (("rmaha", head, [0, 1]), ("rmaha_all", np.ones_like(head), [0, 1, 2])):
        prec, bg = within(classes), EmpiricalCovariance().fit(feats[mask])
        expected = [min(md(p, means[0], prec), md(p, means[1], prec)) - md(p, bg.location_, bg.precision_) for p in z]
        np.testing.assert_allclose(fitted(name, feats, labels, [0, 1], [2]).score(None, z), expected, rtol=1e-9)
    assert not np.allclose(fitted("maha_head", feats, labels, [0, 1], [2]).score(None, z),
                           fitted("maha_head_all", feats, labels, [0, 1], [2]).score(None, z))


def test_errors():
    with pytest.raises(TailsynthError, match="not fitted"):
        build_score("p_tail").score(LOGITS, None)
    with pytest.raises(TailsynthError, match="not fitted"):
        build_score("maha_head").score(None, np.zeros((2, 2)))
    feats, labels = _maha_train()
    with pytest.raises(TailsynthError, match="class 7 has no training sample"):
        fitted("maha_head", feats, labels, [0, 1], [2, 7])
    with pytest.raises(TailsynthError, match="needs tail classes"):
        fitted("msp_tail", head=[0, 1], tail=[])
    with pytest.raises(TailsynthError, match="both"):
        fitted("msp_head", head=[0, 1], tail=[1, 2])
    with pytest.raises(TailsynthError, match="out of range"):
        fitted("p_tail", head=[0, 1], tail=[5]).score(LOGITS, None)
    with pytest.raises(TailsynthError, match="2-d"):
        fitted("maha_head", feats, labels, [0, 1], [2]).score(None, np.zeros((2, 3)))
    with pytest.raises(UnknownNameError, match="p_tail"):
        build_score("p_head")


def _synthetic(seed, n_head, n_tail, head, tail, k, dim):
    """Features 4 * e_class + noise; logits = 3 * the class coordinates: tail samples are obviously tail."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(head, n_head), np.repeat(tail, n_tail)])
    feats = 0.5 * rng.normal(size=(len(labels), dim))
    feats[np.arange(len(labels)), labels] += 4.0
    logits = 3.0 * feats[:, :k] + 0.1 * rng.normal(size=(len(labels), k))
    return logits, feats, labels


def test_contract_every_score_ranks_tail_above_head():
    head, tail, k, dim = [0, 1, 2, 3], [4, 5], 6, 9
    train_l, train_f, train_y = _synthetic(0, 60, 10, head, tail, k, dim)
    logits, feats, labels = _synthetic(1, 40, 20, head, tail, k, dim)
    is_tail = np.isin(labels, tail)
    assert len(SCORES.names()) == 15
    for name in SCORES.names():
        score = build_score(name)
        extra = {"logits": train_l} if "logits" in score.fit_kwargs else {}  # ViM: alpha from the train logits
        s = score.fit(train_f, train_y, head, tail, **extra).score(logits, feats)
        assert s.shape == (len(labels),) and s.dtype == np.float64
        value = auroc(s[~is_tail], s[is_tail])
        assert value > 0.9, f"score {name!r} ranks tail below head (AUROC {value:.3f}): sign flip?"


def test_mahalanobis_is_stable_with_rank_deficient_covariance():
    head, tail = [0, 1], [2]
    _, train_f, train_y = _synthetic(2, 5, 3, head, tail, 3, 40)   # 13 samples, 40-d features
    train_f[:, 30:] = 0.0                                           # dead units
    _, test_f, test_y = _synthetic(3, 5, 5, head, tail, 3, 40)
    s = build_score("maha_tail_minus_head").fit(train_f, train_y, head, tail).score(None, test_f)
    assert np.all(np.isfinite(s))


def test_eigendecomposition_is_computed_once_per_covariance(monkeypatch):
    """An evaluation fits the same covariance for several scores: its eigendecomposition (17 s for ResNet-50's
    2048-d features on one core) runs once; another covariance gets its own, and W W^T = pinv(Sigma) either way."""
    from tailsynth.ood import mahalanobis
    calls = []
    eigh = np.linalg.eigh
    monkeypatch.setattr(mahalanobis.np.linalg, "eigh", lambda a: calls.append(a.shape) or eigh(a))
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 6))
    sigma = x.T @ x / 50
    first = mahalanobis.whitener(sigma)
    again = mahalanobis.whitener(sigma.copy())
    assert len(calls) == 1 and np.array_equal(first, again)
    assert not mahalanobis.cached_eigh(sigma)[1].flags.writeable and len(calls) == 1
    np.testing.assert_allclose(first @ first.T, np.linalg.pinv(sigma), atol=1e-10)
    other = mahalanobis.whitener(sigma + np.eye(6))
    assert len(calls) == 2
    np.testing.assert_allclose(other @ other.T, np.linalg.inv(sigma + np.eye(6)), atol=1e-10)
