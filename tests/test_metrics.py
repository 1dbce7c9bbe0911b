"""Metrics against sklearn and hand examples; the evaluation entry points end to end."""
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from tailsynth.errors import TailsynthError
from tailsynth.ood import (auroc, avg_knn_distance, balanced_accuracy_on, compute_scores, evaluate,
                           evaluate_scores, fpr_at_tpr, group_accuracy, head_threshold, lof_scores, top1)

pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(5):
        head = np.round(rng.normal(size=37), 1)
        tail = np.round(rng.normal(loc=0.7, size=23), 1)  # rounded: many ties
        expected = roc_auc_score(np.r_[np.zeros(37), np.ones(23)], np.r_[head, tail])
        assert auroc(head, tail) == pytest.approx(expected, abs=1e-12)
        # head positive on -score gives the same number
        assert roc_auc_score(np.r_[np.ones(37), np.zeros(23)], -np.r_[head, tail]) == pytest.approx(expected)
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([2.0, 3.0], [0.0, 1.0]) == 0.0


def test_fpr_at_95_hand_example():
    head = np.arange(20, dtype=float)  # head-likeness -0 .. -19
    # 5 % quantile of h = -19..0 at position 0.05 * 19 = 0.95 (linear interpolation): -19 + 0.95 = -18.05
    assert head_threshold(head) == pytest.approx(-18.05)
    tail = np.array([18.0, 18.1, 19.0, 25.0, 5.0, 10.0, 30.0, 40.0])
    # accepted as head: h >= -18.05  <=>  score <= 18.05 -> 18.0, 5.0, 10.0
    assert fpr_at_tpr(head, tail) == pytest.approx(3 / 8)
    assert fpr_at_tpr(head, tail, tpr=1.0) == pytest.approx(5 / 8)  # t = min h = -19: scores <= 19
    # the LoGex code on head-likeness: t = quantile(values_in, 1 - tpr); mean(values_out >= t)
    rng = np.random.default_rng(1)
    h, o = rng.normal(size=101), rng.normal(1.0, size=55)
    assert fpr_at_tpr(h, o) == pytest.approx(np.mean(-o >= np.quantile(-h, 0.05)))


def test_metric_errors():
    with pytest.raises(TailsynthError, match="tail classes"):
        fpr_at_tpr([1.0, 2.0], [])
    with pytest.raises(TailsynthError, match="NaN"):
        auroc([1.0, np.nan], [2.0])
    with pytest.raises(TailsynthError, match="tpr"):
        fpr_at_tpr([1.0], [2.0], tpr=0.0)


def test_balanced_accuracy_on_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 8, size=300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 8, size=300))
    for classes in ([0, 1, 2, 3], [4, 5, 6, 7], [2, 6]):
        mask = np.isin(y, classes)
        expected = balanced_accuracy_score(y[mask], pred[mask])
        assert balanced_accuracy_on(y, pred, classes) == pytest.approx(expected)


def test_tail_prediction_on_head_image_is_an_error():
    y = np.array([0, 0, 1, 1, 2, 3])
    logits = np.array([[5, 0, 0, 0], [0, 0, 5, 0], [0, 5, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [5, 0, 0, 0]], float)
    # head {0, 1}: class 0 has one of two right (the other predicted as tail class 2) -> (0.5 + 1) / 2
    assert balanced_accuracy_on(y, logits, [0, 1]) == pytest.approx(0.75)
    assert balanced_accuracy_on(y, logits.argmax(1), [2, 3]) == pytest.approx(0.5)
    assert top1(y, logits) == pytest.approx(4 / 6)
    with pytest.raises(TailsynthError, match="no sample"):
        balanced_accuracy_on(y, logits, [7])


def test_group_accuracy_many_medium_few():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4, 4])
    p = np.array([0, 0, 1, 1, 1, 0, 2, 3, 0, 1])
    groups = {"many": [0, 1], "medium": [2], "few": [3, 4]}
    acc = group_accuracy(y, p, groups)
    assert acc == pytest.approx({"many": 4 / 5, "medium": 1 / 2, "few": 1 / 3})
    with pytest.raises(TailsynthError, match="'none'"):
        group_accuracy(y, p, {"none": [9]})


def _outputs(seed, n_head, n_tail):
    rng = np.random.default_rng(seed)
    head, tail = [0, 1, 2], [3, 4]
    labels = np.concatenate([np.repeat(head, n_head), np.repeat(tail, n_tail)])
    feats = rng.normal(size=(len(labels), 6))
    feats[np.arange(len(labels)), labels] += 2.0
    logits = 2.0 * feats[:, :5] + rng.normal(size=(len(labels), 5))
    return logits.astype(np.float32), feats.astype(np.float32), labels


def test_evaluate_end_to_end():
    head, tail = [0, 1, 2], [3, 4]
    train = _outputs(0, 30, 6)
    logits, feats, labels = _outputs(1, 20, 10)
    groups = {"many": [0, 1, 2], "few": [3, 4]}
    res = evaluate(logits, feats, labels, head, tail, train[1], train[2], groups=groups)
    pred = logits.argmax(1)
    assert res["acc"] == pytest.approx(np.mean(pred == labels))
    mask = np.isin(labels, head)
    assert res["bacc_head"] == pytest.approx(balanced_accuracy_score(labels[mask], pred[mask]))
    assert res["bacc_tail"] == pytest.approx(balanced_accuracy_score(labels[~mask], pred[~mask]))
    assert res["acc_few"] == pytest.approx(np.mean(pred[~mask] == labels[~mask]))
    arrays = compute_scores(logits, feats, head, tail, train[1], train[2])
    assert len(res["scores"]) == 14 and set(arrays) == set(res["scores"])  # every score but ViM (no train logits)
    p = arrays["p_tail"]
    assert res["fpr95"] == res["scores"]["p_tail"]["fpr95"] == pytest.approx(fpr_at_tpr(p[mask], p[~mask]))
    assert res["auroc"] == pytest.approx(roc_auc_score(~mask, p))
    only = evaluate(logits, feats, labels, head, tail, train[1], train[2], scores=["msp_head"])
    assert set(only["scores"]) == {"msp_head", "p_tail"}
    with pytest.raises(TailsynthError, match="tail classes"):
        evaluate(logits, feats, labels, [0, 1, 2, 3, 4], [], train[1], train[2])


def test_evaluate_scores_val_threshold():
    head, tail = [0, 1, 2], [3, 4]
    train, val, test = _outputs(0, 30, 6), _outputs(2, 40, 5), _outputs(1, 20, 10)
    result, arrays = evaluate_scores(test, train, val, head_classes=head, tail_classes=tail,
                                     score_names=["p_tail", "rmaha"])
    assert set(result) == {"metrics", "scores", "threshold"} and set(arrays) == {"p_tail", "rmaha"}
    assert arrays["p_tail"].shape == (len(test[2]),)
    th = result["threshold"]
    val_p = compute_scores(val[0], val[1], head, tail, train[1], train[2], ["p_tail"])["p_tail"]
    val_head = val_p[np.isin(val[2], head)]
    assert th["score_threshold"] == pytest.approx(-np.quantile(-val_head, 0.05))
    assert th["val_head_tpr"] >= 0.95
    test_mask = np.isin(test[2], tail)
    assert th["test_tail_fpr"] == pytest.approx(np.mean(arrays["p_tail"][test_mask] <= th["score_threshold"]))
    assert result["metrics"]["fpr95"] == result["scores"]["p_tail"]["fpr95"]


def test_rarity_metrics():
    ref = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    np.testing.assert_allclose(avg_knn_distance([[0.5], [6.0]], ref, k=2), [0.5, 3.5])
    rng = np.random.default_rng(3)
    cloud = rng.normal(size=(200, 2))
    lof = lof_scores(np.array([[0.0, 0.0], [8.0, 8.0]]), cloud, k=20)
    assert lof[0] < 1.3 and lof[1] > 3.0
    with pytest.raises(TailsynthError, match="k must be"):
        avg_knn_distance([[0.0]], ref, k=6)
