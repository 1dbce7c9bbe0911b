"""Minority-guidance figures and tables on a benchmark (PBC-LT by default), from the experiment's cached stages.

    python benchmarks/minority_figures.py --runs runs --out-dir benchmarks/results/minority --grid-dir runs/figures/minority

- Fig. 10 / App. D.1: Spearman correlation of the minority score (l2, l1, perceptual) with AvgkNN and LOF of the real
  train + val images, within class, in the oracle's penultimate features (``correlations.json``);
- Fig. 2: the lowest / median / highest-scored real images per class (``--grid-dir``, not committed: real images);
- Figs. 15-16: generated grids for target levels {0, L/2, L-1} x scales {0, 1, 5} (``--grid-dir``);
- Figs. 3, 6 and Table 1: AvgkNN / LOF / Rarity Score histograms of the only-LoRA tail images (plain DDIM, the
  w = 0 chain) vs the minority-guided ones, and precision / recall / Fréchet distance against the most unique
  real tail images (the non-test pool) of each class (``generation.json``, ``rarity_hist.png``, ``README.md``).

Runs whatever stage is missing (minority scores, classifier, the two synthetic sets, the oracle). The oracle is a
report-only network trained on all non-test images; nothing here chooses a setting.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="pbc-lt-cpu")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--out-dir", default="benchmarks/results/minority")
    parser.add_argument("--grid-dir", default="runs/figures/minority")
    parser.add_argument("--grid-classes", default=None, help="comma-separated; default: the first two tail classes")
    parser.add_argument("--per-cell", type=int, default=6)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from tailsynth.methods import generator_named
    from tailsynth.minority.analysis import generation_table, real_rarity, score_correlations
    from tailsynth.pipeline.artifacts import load_classifier, read_split, split_data
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import StageGraph
    from tailsynth.pipeline.minority_run import minority_sample
    from tailsynth.pipeline.minority_stages import read_scores
    from tailsynth.pipeline.quality_stages import oracle_pool
    from tailsynth.pipeline.runner import Runner
    from tailsynth.pipeline.store import ArtifactStore
    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.report.grids import labelled_rows
    from tailsynth.training import predict
    from tailsynth.utils import read_json, resolve_device

    started = time.time()
    cfg = load_experiment(args.experiment, list(args.overrides))
    graph = StageGraph(cfg, Runner(ArtifactStore(args.runs)))
    generator = generator_named("minority")
    settings = generator.params(graph.synthesis)
    scores_art = graph.minority_scores(settings)
    clf_art = graph.minority_classifier(settings)
    lora_art = graph.synthetic(generator_named("lora"))
    minority_art = graph.synthetic(generator)
    oracle_art = graph.oracle()
    split = read_split(graph.split())
    names = split.class_names
    device = resolve_device(cfg.device)
    oracle, _ = load_classifier(oracle_art.path)
    oracle.to(device)
    out_dir, grid_dir = Path(args.out_dir), Path(args.grid_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_dir.mkdir(parents=True, exist_ok=True)

    def features(images: np.ndarray) -> np.ndarray:
        return predict(oracle, images, device)[1].astype(np.float64)

    # --- Fig. 10: minority score vs AvgkNN / LOF of the real images -----------------------------------------
    scores = read_scores(scores_art)
    parts = [split_data(split, cfg.data, s) for s in settings.score_splits]
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    if len(labels) != len(scores["labels"]) or not (labels == scores["labels"]).all():
        raise SystemExit("the score artifact's images are not the split's train + val images")
    real_f = features(images)
    rarity = real_rarity(real_f, labels)
    dists = {d: scores[d] for d in ("l2", "l1", "perceptual") if d in scores}
    corr = score_correlations(dists, rarity, labels, names)
    # --- Fig. 2: lowest / median / highest-scored real images per class ----------------------------------------
    rows = []
    for c in range(len(names)):
        idx = np.flatnonzero(labels == c)
        order = idx[np.argsort(scores[settings.distance][idx])]
        mid = len(order) // 2
        for tag, pick in (("lowest", order[:6]), ("median", order[max(0, mid - 3):mid + 3]), ("highest", order[-6:])):
            rows.append((f"{names[c]} {tag}", images[pick]))
    (grid_dir / "real_by_score.png").write_bytes(labelled_rows(rows, f"real images by minority score ({settings.distance})"))
    # --- Figs. 15-16: level x scale grids ------------------------------------------------------------------------
    grid_classes = args.grid_classes.split(",") if args.grid_classes else [names[c] for c in split.tail_classes[:2]]
    t0 = time.time()
    minority_sample(cfg, args.runs, grid_dir, None, [0.0, 1.0, 5.0], grid_classes, args.per_cell, log=lambda _m: None)
    grid_s = time.time() - t0
    # --- Figs. 3, 6, Table 1: only-LoRA vs minority-guided tail images ------------------------------------------
    pool = oracle_pool(split, cfg.data)
    tail = list(split.tail_classes)
    keep = np.isin(pool.labels, tail)
    pool_f, pool_y = features(pool.images[keep]), pool.labels[keep]
    generated = {}
    for title, art in (("only LoRA (w = 0)", lora_art), (f"minority (w = {settings.guidance.scale:g})", minority_art)):
        g_images, g_labels = SyntheticSet.read(art.path).load_images(names, cfg.data.image_size, cfg.data.channels)
        generated[title] = (features(g_images), g_labels)
    table = generation_table(pool_f, pool_y, generated, tail, names)
    _histograms(out_dir / "rarity_hist.png", pool_f, pool_y, generated, tail)
    quality = read_json(graph.quality().path / "quality.json")
    wall = {label: read_json(a.path / "manifest.json").get("wall_time_s")
            for label, a in (("minority_score", scores_art), ("train_minority_classifier", clf_art),
                             ("synthesize lora", lora_art), ("synthesize minority", minority_art))}
    wall["level x scale grids"] = round(grid_s, 1)
    classifier = read_json(clf_art.path / "manifest.json").get("result", {})
    result = {"experiment": cfg.name, "distance": settings.distance, "correlations": corr, "generation": table,
              "oracle_accuracy": {k: quality.get(k, {}).get("overall") for k in ("lora", "minority", "real_tail_test")},
              "minority_classifier": classifier, "wall_time_s": wall, "n_pool_tail": int(keep.sum()),
              "script_wall_s": round(time.time() - started, 1)}
    (out_dir / "minority.json").write_text(json.dumps(result, indent=2))
    (out_dir / "README.md").write_text(_markdown(result, args))
    print(_markdown(result, args))


def _histograms(path: Path, pool_f, pool_y, generated, tail) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from tailsynth.ood.rarity import avg_knn_distance, lof_scores, rarity_score
    fig = Figure(figsize=(12, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for title, (feats, labels) in generated.items():
        values = {"AvgkNN (k = 5)": [], "LOF (k = 20)": [], "Rarity Score (k = 5)": []}
        for c in tail:
            g, r = feats[labels == c], pool_f[pool_y == c]
            if len(g) == 0 or len(r) <= 20:
                continue
            values["AvgkNN (k = 5)"].append(avg_knn_distance(g, r, 5))
            values["LOF (k = 20)"].append(lof_scores(g, r, 20))
            rar = rarity_score(g, r, 5)
            values["Rarity Score (k = 5)"].append(rar[np.isfinite(rar)])
        for ax, (name, parts) in zip(axes, values.items()):
            ax.hist(np.concatenate(parts), bins=30, alpha=0.55, density=True, label=title)
            ax.set_title(name, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("synthetic tail images vs the real tail pool, oracle features (higher = rarer)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _markdown(result: dict, args) -> str:
    lines = [f"# Minority guidance on {result['experiment']}", "",
             "Command: `python benchmarks/minority_figures.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`", "",
             "## Minority score vs AvgkNN / LOF of the real train + val images (Spearman, within class, oracle features)",
             "", "| distance | AvgkNN (mean over classes) | LOF (mean over classes) |", "|---|---|---|"]
    for dist, row in result["correlations"].items():
        lines.append(f"| {dist} | {row['avgknn']['mean']:.3f} | {row['lof']['mean']:.3f} |")
    lines += ["", "## Synthetic tail images (mean over tail classes; quality against the most unique half of the real "
              "tail pool of each class)", "",
              "| set | AvgkNN ↑ | LOF ↑ | Rarity ↑ | in manifold | precision ↑ | recall ↑ | Fréchet ↓ | oracle acc |",
              "|---|---|---|---|---|---|---|---|---|"]
    acc = result["oracle_accuracy"]
    for (name, row), key in zip(result["generation"].items(), ("lora", "minority")):
        m = {k: row["mean"].get(k, float("nan")) for k in ("avgknn", "lof", "rarity", "rarity_scored", "precision",
                                                            "recall", "frechet")}
        a = acc.get(key)
        lines.append(f"| {name} | {m['avgknn']:.3f} | {m['lof']:.3f} | {m['rarity']:.3f} | "
                     f"{m['rarity_scored']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['frechet']:.2f} | "
                     f"{'-' if a is None else f'{100 * a:.1f} %'} |")
    lines += ["", "## Wall times (s)", "", "| stage | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["wall_time_s"].items()]
    c = result["minority_classifier"]
    if c:
        lines += ["", "Minority classifier, held-out accuracy (chance " + f"{c.get('chance', 0):.2f}): " +
                  ", ".join(f"{k.split('_t')[1]} {v:.3f}" for k, v in c.items() if k.startswith("holdout_acc"))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
