"""Dream-OOD Fig. 8 on PBC-LT: imagined outliers per head class for two sigma values, BOOD's outliers beside them,
and one PCA plot of the ID embeddings with both methods' outliers, per head class.

    python benchmarks/dream_ood_figures.py --runs runs --grid-dir runs/figures \
        --out-dir benchmarks/results/dream-ood

Uses the stages of the experiment (``pbc-lt-cpu`` by default): the encoder and the main outlier sets are the cached
artifacts of the dream-ood / bood rows; the second sigma (default 0.07, the paper's CIFAR-100 value) is a small
extra set (``--per-class`` outliers per class) made and decoded here. The image grid shows generated images and
goes to ``--grid-dir`` (not committed); the PCA plot and the statistics JSON go to ``--out-dir``.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="pbc-lt-cpu")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--sigma", type=float, default=0.07)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--grid-dir", default="runs/figures")
    parser.add_argument("--out-dir", default="benchmarks/results/dream-ood")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from tailsynth.methods import METHODS
    from tailsynth.outliers import DecodeConfig
    from tailsynth.pipeline.artifacts import read_split
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import StageGraph
    from tailsynth.pipeline.outlier_stages import read_outliers
    from tailsynth.pipeline.runner import Runner
    from tailsynth.pipeline.store import ArtifactStore
    from tailsynth.report.outliers import outlier_grid
    from tailsynth.utils import read_json

    started = time.time()
    cfg = load_experiment(args.experiment, list(args.overrides))
    graph = StageGraph(cfg, Runner(ArtifactStore(args.runs)))
    dream, bood = METHODS.get("dream-ood"), METHODS.get("bood")
    dcfg = dream.config(cfg.method_params.get("dream-ood", {}))
    bcfg = bood.config(cfg.method_params.get("bood", {}))
    encoder = graph.classifier("vmf-encoder", dcfg.encoder_seed)
    main_d = graph.outlier_embeddings("dream-ood", encoder, dream.stage2_settings(dcfg))
    main_b = graph.outlier_embeddings("bood", encoder, bood.stage2_settings(bcfg))
    img_d = graph.outlier_images("dream-ood", main_d, dcfg.decode)
    img_b = graph.outlier_images("bood", main_b, bcfg.decode)
    other = dcfg.outliers.model_copy(update={"sigma": args.sigma, "n_per_class": args.per_class})
    extra_d = graph.outlier_embeddings("dream-ood", encoder, {"dream_ood": other})
    small = DecodeConfig(**{**dcfg.decode.model_dump(), "shard_size": args.per_class})
    extra_img = graph.outlier_images("dream-ood", extra_d, small)
    split = read_split(graph.split())

    Path(args.grid_dir).mkdir(parents=True, exist_ok=True)
    grid = outlier_grid({f"dream-ood sigma {dcfg.outliers.sigma}": img_d, f"dream-ood sigma {args.sigma}": extra_img,
                         "bood": img_b}, split, cfg.data, per_class=6)
    (Path(args.grid_dir) / "outliers_pbc.png").write_bytes(grid)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sets = {f"dream-ood sigma {dcfg.outliers.sigma}": read_outliers(main_d.path), "bood": read_outliers(main_b.path),
            f"dream-ood sigma {args.sigma}": read_outliers(extra_d.path)}
    first = next(iter(sets.values()))
    ids, id_y = first["id_vectors"], first["id_classes"]
    mean = ids.mean(0)
    _, _, vt = np.linalg.svd(ids - mean, full_matrices=False)
    heads = sorted(set(id_y.tolist()))
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.2), dpi=100, squeeze=False)
    markers = {name: m for name, m in zip(sets, ("x", "+", "^"))}
    stats = {}
    for ax, c in zip(axes[0], heads):
        p = (ids[id_y == c] - mean) @ vt[:2].T
        ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.25, color="grey", label="ID embeddings")
        for i, (name, data) in enumerate(sets.items()):
            v = data["vectors"][data["classes"] == c]
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
            q = (v - mean) @ vt[:2].T
            ax.scatter(q[:, 0], q[:, 1], s=10, marker=markers[name], color=f"C{i}", label=name)
        ax.set_title(split.class_names[c])
        ax.legend(fontsize=6)
    fig.suptitle("PBC-LT head classes: normalised ID embeddings of the vmf-encoder and the outliers of each method "
                 "(PCA of all ID embeddings)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "pca_outliers.png").write_bytes(buffer.getvalue())
    for name, art in ((f"dream-ood sigma {dcfg.outliers.sigma}", main_d), ("bood", main_b),
                      (f"dream-ood sigma {args.sigma}", extra_d)):
        stats[name] = read_json(art.file("summary.json"))
    stats["timings_s"] = {f"{t['label']} ({t['stage']} {t['fingerprint'][:8]})": t["wall_time_s"] for t in graph.runner.timings}
    stats["this_script_s"] = round(time.time() - started, 1)
    (Path(args.out_dir) / "outlier_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
