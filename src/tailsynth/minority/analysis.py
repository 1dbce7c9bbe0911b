"""The minority-guidance paper's evaluation protocol on features of a benchmark (Um et al. 2024, §4, App. D.1, E).

- :func:`real_rarity`: AvgkNN (k = 5) and LOF (k = 20) of each real sample among the other real samples of its class
  (features of the oracle by default, or of a randomly initialised network);
- :func:`score_correlations`: Spearman correlation of each minority-score distance with them, per class and the
  mean over classes (Fig. 10);
- :func:`generation_table`: per set of generated features (per class): AvgkNN / LOF / Rarity Score against the real
  samples of the class, and improved precision / recall (k = 5) and the Fréchet distance against the most unique
  real samples (the top ``unique_fraction`` by AvgkNN), the protocol of Table 1.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from ..ood.rarity import avg_knn_distance, lof_scores, precision_recall, rarity_score
from ..ood.feature_distance import frechet_distance


def real_rarity(features: np.ndarray, labels: np.ndarray, k_knn: int = 5, k_lof: int = 20) -> dict[str, np.ndarray]:
    """Within-class AvgkNN (self excluded) and LOF (sklearn, fitted on the class) of every real sample."""
    avg = np.full(len(labels), np.nan)
    lof = np.full(len(labels), np.nan)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        f = features[idx]
        if len(idx) > k_knn:
            dist, _ = NearestNeighbors(n_neighbors=k_knn + 1).fit(f).kneighbors(f)
            avg[idx] = dist[:, 1:].mean(1)
        if len(idx) > k_lof:
            lof[idx] = -LocalOutlierFactor(n_neighbors=k_lof).fit(f).negative_outlier_factor_
    return {"avgknn": avg, "lof": lof}


def score_correlations(scores: dict[str, np.ndarray], rarity: dict[str, np.ndarray], labels: np.ndarray,
                       class_names: list[str]) -> dict:
    """{distance: {metric: {"per_class": {name: rho}, "mean": mean rho}}} (classes where the metric exists)."""
    out: dict = {}
    for dist, values in scores.items():
        out[dist] = {}
        for metric, ref in rarity.items():
            per_class = {}
            for c in np.unique(labels):
                m = (labels == c) & np.isfinite(ref)
                if m.sum() >= 3:
                    per_class[class_names[int(c)]] = float(spearmanr(values[m], ref[m]).statistic)
            out[dist][metric] = {"per_class": per_class,
                                 "mean": float(np.mean(list(per_class.values()))) if per_class else None}
    return out


def generation_table(real: np.ndarray, real_labels: np.ndarray, generated: dict[str, tuple[np.ndarray, np.ndarray]],
                     classes: list[int], class_names: list[str], unique_fraction: float = 0.5, k: int = 5,
                     k_lof: int = 20) -> dict:
    """{set name: {"per_class": {name: metrics}, "mean": metrics}}; metrics: avgknn, lof, rarity (mean over the
    samples it scores), rarity_scored (share of generated samples inside the real manifold), precision, recall,
    frechet (against the unique real set of the class)."""
    table: dict = {}
    for name, (feats, labels) in generated.items():
        per_class = {}
        for c in classes:
            g, r = feats[labels == c], real[real_labels == c]
            if len(g) <= k or len(r) <= max(k_lof, k):
                continue
            unique_n = max(k + 2, int(round(unique_fraction * len(r))))
            r_avg = real_rarity(r, np.zeros(len(r), int), k, k_lof)["avgknn"]
            unique = r[np.argsort(-r_avg)[:unique_n]]
            rar = rarity_score(g, r, k)
            precision, recall = precision_recall(unique, g, k)
            mu_g, mu_u = g.mean(0), unique.mean(0)
            frechet = frechet_distance(mu_g, np.cov(g, rowvar=False), mu_u, np.cov(unique, rowvar=False))
            per_class[class_names[c]] = {
                "n": int(len(g)), "avgknn": float(avg_knn_distance(g, r, k).mean()),
                "lof": float(lof_scores(g, r, k_lof).mean()),
                "rarity": float(np.nanmean(rar)) if np.isfinite(rar).any() else None,
                "rarity_scored": float(np.isfinite(rar).mean()), "precision": precision, "recall": recall,
                "frechet": frechet}
        keys = ("avgknn", "lof", "rarity", "rarity_scored", "precision", "recall", "frechet")
        mean = {key: float(np.mean([v[key] for v in per_class.values() if v[key] is not None]))
                for key in keys if any(v[key] is not None for v in per_class.values())}
        table[name] = {"per_class": per_class, "mean": mean}
    return table
