"""How close generated features are to the real ones (LDMLR pseudo-features; LDMLR Fig. 3 is a t-SNE of them).

Per class c, with mu / Sigma the mean and covariance of a set of feature vectors:
- ``mean_dist``: ||mu_gen - mu_real||_2 divided by the real spread sqrt(tr Sigma_real) (0 = same centre; 1 =
  off by one standard deviation of the class);
- ``cov_dist``: ||Sigma_gen - Sigma_real||_F / ||Sigma_real||_F;
- ``frechet``: ||mu_g - mu_r||^2 + tr(Sigma_g + Sigma_r - 2 (Sigma_g Sigma_r)^(1/2)) (Heusel et al. 2017).
Each against the real VALIDATION features of the class, beside the same distance between the real training
and validation features (the floor a perfect generator would reach with this many validation samples).
Classes with fewer than two validation features get no entry against val.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..ood.feature_distance import distances, frechet_distance  # noqa: F401  (re-exported)
from .plots import figure_png


def finite_or_none(obj):
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def feature_quality(z_train, y_train, z_val, y_val, z_gen, y_gen, class_names: Sequence[str]) -> dict:
    """``{"per_class": {name: {n_gen, n_val, gen_vs_val: {...}, train_vs_val: {...}}}}`` for generated classes."""
    out = {}
    for c in sorted(set(np.asarray(y_gen).tolist())):
        gen, val, train = z_gen[y_gen == c], z_val[y_val == c], z_train[y_train == c]
        row = {"n_gen": int(len(gen)), "n_train": int(len(train)), "n_val": int(len(val))}
        if len(val) >= 2 and len(gen) >= 2:
            row["gen_vs_val"] = distances(gen, val)
            if len(train) >= 2:
                row["train_vs_val"] = distances(train, val)
        out[class_names[c]] = row
    return {"per_class": out}


def quality_table(label: str, quality: dict):
    """Report table of one pseudo-feature set: per class, generated vs val (train vs val in brackets)."""
    from .tables import Table
    table = Table(f"Pseudo-features of {label}: distance to the real validation features per class",
                  ["class", "generated", "val", "mean dist", "cov dist", "Fréchet"],
                  caption="Generated vs real val features; in brackets the same between the real train and val "
                          "features (the floor for this many val samples). mean dist = ||mu_g - mu_r|| / "
                          "sqrt(tr Sigma_r); cov dist = ||Sigma_g - Sigma_r||_F / ||Sigma_r||_F.")
    table.rows = [[(c, "") for c in row] for row in quality_rows(quality)]
    return table


def quality_rows(quality: dict) -> list[list[str]]:
    """Table rows: class, n gen, n val, mean / cov distance and Fréchet (generated vs val | train vs val)."""
    rows = []
    for name, row in quality["per_class"].items():
        g, t = row.get("gen_vs_val"), row.get("train_vs_val")

        def cell(key, a=g, b=t):
            if a is None or a.get(key) is None:
                return "-"
            return f"{a[key]:.3f}" + (f" ({b[key]:.3f})" if b is not None and b.get(key) is not None else "")

        rows.append([name, str(row["n_gen"]), str(row["n_val"]), cell("mean_dist"), cell("cov_dist"), cell("frechet")])
    return rows


def pca_plot(z_real, y_real, z_gen, y_gen, class_names: Sequence[str], classes: Sequence[int],
             max_panels: int = 10, max_points: int = 400, seed: int = 0) -> bytes:
    """One panel per generated class: real training features vs pseudo-features of that class, projected on the
    first two principal components of the real features of all classes."""
    z_real, z_gen = np.asarray(z_real, np.float64), np.asarray(z_gen, np.float64)
    mean = z_real.mean(0)
    _, _, vt = np.linalg.svd(z_real - mean, full_matrices=False)
    proj = vt[:2].T
    pr, pg = (z_real - mean) @ proj, (z_gen - mean) @ proj
    rng = np.random.default_rng(seed)
    shown = list(classes)[:max_panels]
    cols = min(5, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig = Figure(figsize=(3.0 * cols, 2.8 * rows))
    for i, c in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.scatter(pr[:, 0], pr[:, 1], s=2, c="0.85", label="all real")
        for pts, colour, name in ((pr[y_real == c], "tab:blue", "real"), (pg[y_gen == c], "tab:orange", "generated")):
            if len(pts) > max_points:
                pts = pts[rng.choice(len(pts), max_points, replace=False)]
            ax.scatter(pts[:, 0], pts[:, 1], s=5, c=colour, label=name, alpha=0.7)
        ax.set_title(class_names[c], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    return figure_png(fig)
