"""Deep k-NN and ViM (ood/posthoc.py): brute-force / hand-computed references, invariances, the choice of k and dim on
validation, and both scores in the evaluation result."""
import json
import math
import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from tailsynth.errors import TailsynthError
from tailsynth.ood import auroc, build_score, evaluate_scores
from tailsynth.ood.posthoc import knn_distances


def _normalised(x):
    return np.array([row / np.sqrt(np.sum(row ** 2)) for row in x])


# ----------------------------------------------------------------------------------------------- Deep k-NN

@pytest.mark.parametrize("blocks", [(1024, 4096), (5, 8), (1, 1), (37, 53), (10, 13), (36, 52)])
def test_knn_distances_match_brute_force_across_block_boundaries(blocks):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(53, 6))
    query = np.concatenate([rng.normal(size=(34, 6)), ref[:3]])       # 37 queries, 3 of them duplicates of ref rows
    want = np.sort(cdist(query, ref), axis=1)
    for k in (1, 2, 7, 8, 9, 53):
        got = knn_distances(query, ref, k, query_block=blocks[0], ref_block=blocks[1])
        assert got.shape == (37, k)
        np.testing.assert_allclose(got, want[:, :k], rtol=1e-9, atol=1e-6)
    with pytest.raises(TailsynthError, match="k must be in 1..53"):
        knn_distances(query, ref, 54)


def test_knn_distances_never_allocate_the_full_matrix():
    rng = np.random.default_rng(1)
    query, ref = rng.normal(size=(2000, 8)), rng.normal(size=(10000, 8))   # the full matrix: 160 MB of float64
    tracemalloc.start()
    got = knn_distances(query, ref, 5, query_block=256, ref_block=1024)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB"
    sample = np.sort(cdist(query[::97], ref), axis=1)[:, :5]
    np.testing.assert_allclose(got[::97], sample, rtol=1e-9, atol=1e-6)


def _two_group_train(rng, n_head=30, n_tail=6, dim=5):
    feats = rng.normal(size=(n_head + n_tail, dim))
    labels = np.concatenate([rng.integers(0, 2, n_head), np.full(n_tail, 2)])
    return feats, labels


def test_deep_knn_is_the_kth_distance_among_normalised_head_features():
    rng = np.random.default_rng(2)
    feats, labels = _two_group_train(rng)
    test = rng.normal(size=(11, 5))
    score = build_score("knn").fit(feats, labels, [0, 1], [2])
    assert score.k_ == 30 and score.selection_ == {"k": 30}            # K_DEFAULT 50 capped at 30 head images
    bank = _normalised(feats[labels != 2])                              # the tail training images are not used
    ref = np.sort(cdist(_normalised(test), bank), axis=1)
    for k in (1, 5, 30):
        score.k_ = k
        np.testing.assert_allclose(score.score(None, test), ref[:, k - 1], rtol=1e-9, atol=1e-7)
        np.testing.assert_allclose(score.score(None, test * rng.uniform(0.1, 10, size=(11, 1))),  # scale-free
                                   ref[:, k - 1], rtol=1e-9, atol=1e-7)


def test_deep_knn_picks_the_k_of_the_best_validation_auroc():
    """Two tight head clusters and three isolated head images; the val tail images sit on the isolated ones, so
    k = 1 ranks them as head (AUROC 0) and k = 5 separates perfectly."""
    rng = np.random.default_rng(3)
    e = np.eye(3)
    clusters = [e[0] + 0.01 * rng.normal(size=(20, 3)), e[1] + 0.01 * rng.normal(size=(20, 3))]
    isolated = np.array([e[2], -e[0], -e[1]])
    train = np.concatenate(clusters + [isolated])
    labels = np.array([0] * 20 + [1] * 20 + [0, 1, 0])
    val_head = np.concatenate([e[0] + 0.01 * rng.normal(size=(5, 3)), e[1] + 0.01 * rng.normal(size=(5, 3))])
    val_tail = isolated + 1e-4 * rng.normal(size=(3, 3))
    val = np.concatenate([val_head, val_tail])
    val_labels = np.array([0] * 10 + [2] * 3)
    score = build_score("knn").fit(train, labels, [0, 1], [2])
    assert score.candidates() == [1, 5, 10, 20, 43]
    ref = np.sort(cdist(_normalised(val), _normalised(train)), axis=1)
    aurocs = {k: auroc(ref[:10, k - 1], ref[10:, k - 1]) for k in score.candidates()}
    assert aurocs[1] == 0.0 and aurocs[5] == 1.0
    score.select(None, val, val_labels, [0, 1], [2])
    assert score.selection_ == {"k": 5, "val_auroc": 1.0, "candidates": [1, 5, 10, 20, 43]}  # ties: smaller k
    # random data: always the argmax of the brute-force AUROCs
    feats, labels = _two_group_train(rng, n_head=60)
    v, vy = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    s = build_score("knn").fit(feats, labels, [0, 1], [2]).select(None, v, vy, [0, 1], [2])
    ref = np.sort(cdist(_normalised(v), _normalised(feats[labels != 2])), axis=1)
    per_k = [auroc(ref[vy != 2, k - 1], ref[vy == 2, k - 1]) for k in s.candidates()]
    assert s.k_ == s.candidates()[int(np.argmax(per_k))] and s.selection_["val_auroc"] == max(per_k)
    # no tail image on val: nothing to choose, the default stays
    assert build_score("knn").fit(feats, labels, [0, 1], [2]).select(None, v, np.zeros(40), [0, 1], [2]).k_ == 50


# ----------------------------------------------------------------------------------------------------- ViM

W = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 5]])
B = np.array([-1.0, -2, 7])


def _vim_hand_train():
    """Head images u + (+-3, 0, 0), (0, +-2, 0), (0, 0, +-1) around u = -pinv(W_head) b_head = (1, 2, 0); two tail
    images far away (must be ignored)."""
    u = np.array([1.0, 2, 0])
    offsets = np.array([[3, 0, 0], [-3, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
    feats = np.concatenate([u + offsets, [[50.0, 50, 50], [-40, 7, 3]]])
    labels = np.array([0, 1, 0, 1, 0, 1, 2, 2])
    return feats, labels


def test_vim_hand_values():
    feats, labels = _vim_hand_train()
    test = np.array([[2.0, 2, 3], [1.5, 3, 0]])
    logits = test @ W.T + B                                             # head logits (1, 0) and (0.5, 1)
    # covariance around u: diag(3, 4/3, 1/3) -> principal order e0, e1, e2. Max head logits of the six head
    # images: 3, 0, 2, 0, 0, 0 (sum 5). dim 1: residuals sqrt(dy^2 + dz^2) = 0, 0, 2, 2, 1, 1 (sum 6), alpha 5/6;
    # dim 2: residuals |dz| = 0, 0, 0, 0, 1, 1 (sum 2), alpha 5/2.
    lse = lambda vals: math.log(sum(math.exp(v) for v in vals))  # noqa: E731
    want = {1: [2.5 - lse([1, 0, 2.5]), 5 / 6 - lse([0.5, 1, 5 / 6])],
            2: [7.5 - lse([1, 0, 7.5]), 0.0 - lse([0.5, 1, 0.0])]}
    for extra in ({"classifier": (W, B)}, {"classifier": (W, B), "logits": feats @ W.T + B}):
        score = build_score("vim").fit(feats, labels, [0, 1], [2], **extra)
        np.testing.assert_allclose(score.origin_, [1, 2, 0], atol=1e-12)
        assert score.dim_ == 1 and score.candidates() == [1, 2] and score.max_dim() == 2   # default: width // 2
        assert score.alpha_ == pytest.approx(5 / 6)
        np.testing.assert_allclose(score.score(logits, test), want[1], rtol=1e-12)
        score.set_dim(2)
        assert score.alpha_ == pytest.approx(5 / 2)
        np.testing.assert_allclose(score.score(logits, test), want[2], rtol=1e-12)
        assert score.selection_ == {"dim": 2, "origin": "classifier"}
    with pytest.raises(TailsynthError, match="dim must be in 0..2"):
        score.set_dim(3)
    with pytest.raises(TailsynthError, match="training logits or the classifier"):
        build_score("vim").fit(feats, labels, [0, 1], [2])
    fallback = build_score("vim").fit(feats, labels, [0, 1], [2], logits=feats @ W.T + B)
    np.testing.assert_allclose(fallback.origin_, feats[:6].mean(axis=0))  # departure without (W, b): the mean
    assert fallback.selection_["origin"] == "feature_mean"


def _vim_reference(train, train_logits, w, b, test, test_logits, dim):
    """ViM written out with an SVD, independently of the implementation (Wang et al. 2022)."""
    u = -np.linalg.pinv(w) @ b
    _, _, vt = np.linalg.svd(train - u, full_matrices=False)
    p = vt[:dim]                                                        # principal subspace (rows)

    def residual(x):
        c = x - u
        return np.linalg.norm(c - c @ p.T @ p, axis=1)

    alpha = train_logits.max(axis=1).sum() / residual(train).sum()
    v = alpha * residual(test)
    full = np.concatenate([test_logits, v[:, None]], axis=1)
    return v - np.log(np.exp(full - full.max(axis=1, keepdims=True)).sum(axis=1)) - full.max(axis=1)


def test_vim_matches_an_svd_reference_and_is_invariant():
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(4, 10)), rng.normal(size=4)                 # classes 0-2 head, 3 tail
    train = rng.normal(size=(40, 10)) * np.linspace(3, 0.3, 10)
    labels = np.concatenate([rng.integers(0, 3, 34), np.full(6, 3)])
    test = rng.normal(size=(15, 10)) * 2
    head = labels != 3
    for dim in (1, 4, 7):
        score = build_score("vim").fit(train, labels, [0, 1, 2], [3], classifier=(w, b))
        score.set_dim(dim)
        want = _vim_reference(train[head], (train @ w.T + b)[head][:, :3], w[:3], b[:3], test,
                              (test @ w.T + b)[:, :3], dim)
        np.testing.assert_allclose(score.score(test @ w.T + b, test), want, rtol=1e-9, atol=1e-12)
    base = build_score("vim").fit(train, labels, [0, 1, 2], [3], classifier=(w, b)).score(test @ w.T + b, test)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))                      # rotate the features, W with them
    rotated = build_score("vim").fit(train @ q, labels, [0, 1, 2], [3], classifier=(w @ q, b))
    np.testing.assert_allclose(rotated.score(test @ w.T + b, test @ q), base, rtol=1e-9)
    scaled = build_score("vim").fit(train * 7.0, labels, [0, 1, 2], [3], classifier=(w / 7.0, b))
    np.testing.assert_allclose(scaled.score(test @ w.T + b, test * 7.0), base, rtol=1e-9)
    # a point in the principal subspace through u has residual 0: score = -logsumexp([head logits, 0])
    on = scaled.origin_ + 2.0 * scaled.eigvec_[:, 0]
    lg = np.array([[0.3, -1.0, 2.0, 9.0]])
    assert scaled.score(lg, on[None])[0] == pytest.approx(-np.log(np.exp([0.3, -1.0, 2.0, 0.0]).sum()), abs=1e-9)


def test_vim_picks_the_dim_of_the_best_validation_auroc():
    """Head features spread (std 10) over dims 0-3 and flat (std 0.1) over 4-7; the val tail is shifted by 1 along
    dim 4: only dim = 4 puts the whole shift and none of the large spread into the residual."""
    rng = np.random.default_rng(5)
    scale = np.array([10.0] * 4 + [0.1] * 4)
    train = rng.normal(size=(200, 8)) * scale
    labels = rng.integers(0, 2, 200)
    val = rng.normal(size=(200, 8)) * scale
    val[100:, 4] += 1.0
    val_labels = np.array([0] * 100 + [2] * 100)
    const = lambda n: np.full((n, 3), 5.0)  # noqa: E731  (flat logits: the score is the residual alone)
    score = build_score("vim").fit(train, labels, [0, 1], [2], logits=const(200))
    assert score.candidates() == [1, 2, 4, 6]
    score.select(const(200), val, val_labels, [0, 1], [2])
    assert score.dim_ == 4 and score.selection_["dim"] == 4 and score.selection_["val_auroc"] > 0.99


# ------------------------------------------------------------------------------------------ evaluation stage

def test_evaluate_scores_records_the_choices_made_on_validation():
    rng = np.random.default_rng(6)
    head, tail, k_cls, dim = [0, 1, 2, 3], [4, 5], 6, 12
    w, b = rng.normal(size=(k_cls, dim)), rng.normal(size=k_cls)

    def outputs(n_head, n_tail, seed):
        r = np.random.default_rng(seed)
        y = np.concatenate([np.repeat(head, n_head), np.repeat(tail, n_tail)])
        f = 0.5 * r.normal(size=(len(y), dim))
        f[np.arange(len(y)), y] += 4.0
        return f @ w.T + b, f, y

    train, val, test = outputs(30, 5, 7), outputs(10, 10, 8), outputs(20, 20, 9)
    result, arrays = evaluate_scores(test, train, val, head_classes=head, tail_classes=tail,
                                     classifier=(w, b))
    knn, vim = result["scores"]["knn"]["selection"], result["scores"]["vim"]["selection"]
    assert knn["k"] in (1, 5, 10, 20, 50) and 0 <= knn["val_auroc"] <= 1
    assert vim["dim"] in build_score("vim").fit(train[1], train[2], head, tail, classifier=(w, b)).candidates()
    assert vim["origin"] == "classifier"
    assert result["scores"]["knn"]["auroc"] > 0.9 and result["scores"]["vim"]["auroc"] > 0.9
    assert set(result["scores"]["p_tail"]) == {"fpr95", "auroc"}                   # the others record nothing new
    json.dumps(result)                                                            # numbers only: metrics.json
    assert arrays["knn"].shape == arrays["vim"].shape == (120,)
    again, _ = evaluate_scores(test, train, None, head_classes=head, tail_classes=tail)   # no val, no classifier
    assert again["scores"]["knn"]["selection"] == {"k": 50}
    assert again["scores"]["vim"]["selection"]["origin"] == "feature_mean"


@pytest.mark.slow
def test_tiny_experiment_writes_both_scores_and_the_report_lists_them(tmp_path, monkeypatch):
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    from tiny import quiet, tiny

    monkeypatch.setenv("TAILSYNTH_CACHE", str(tmp_path / "cache"))
    result = run_experiment(load_experiment("demo", tiny("methods=[ce]", generator=False)), tmp_path / "runs",
                            log=quiet)
    metrics = json.loads((result.evaluations[0].path / "metrics.json").read_text())
    knn, vim = metrics["scores"]["knn"], metrics["scores"]["vim"]
    assert {"fpr95", "auroc", "selection"} <= set(knn) and knn["selection"]["k"] in (1, 5, 10, 20, 50)
    assert {"k", "val_auroc", "candidates"} <= set(knn["selection"])
    assert {"dim", "val_auroc", "candidates"} <= set(vim["selection"])
    assert vim["selection"]["origin"] == "classifier"  # the digits ResNet's head is nn.Linear
    assert {"knn", "vim"} <= set(np.load(result.evaluations[0].path / "scores.npz").files)
    report = (result.report_dir / "report.md").read_text()
    assert "| Deep k-NN |" in report and "| ViM |" in report


def test_every_score_leaves_out_vim_only_without_its_inputs():
    from tailsynth.ood import SCORES, evaluate, fit_scores

    rng = np.random.default_rng(10)
    feats, labels = _two_group_train(rng, n_head=40)
    logits = rng.normal(size=(len(labels), 3))
    assert "vim" not in fit_scores(None, [0, 1], [2], feats, labels)
    assert set(fit_scores(None, [0, 1], [2], feats, labels, train_logits=logits)) == set(SCORES.names())
    with pytest.raises(TailsynthError, match="needs the training logits or the classifier"):
        fit_scores(["vim"], [0, 1], [2], feats, labels)
    res = evaluate(logits, feats, labels, [0, 1], [2], feats, labels, train_logits=logits)
    assert {"knn", "vim"} <= set(res["scores"])
