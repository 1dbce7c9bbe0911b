"""Dream-OOD Fig. 8 on PBC-LT: imagined outliers per head class for two sigma values, BOOD's outliers beside them,
and one PCA plot of the ID embeddings with both methods' outliers, per head class.

    python research/dream_ood_figures.py --runs runs --grid-dir runs/figures \
        --out-dir research/results/dream-ood

Uses the stages of the experiment (``pbc-lt-cpu`` by default): the encoder and the main outlier sets are the cached
artifacts of the dream-ood / bood rows; the second sigma (default 0.07, the paper's CIFAR-100 value) is a small
extra set (``--per-class`` outliers per class) made and decoded here. The image grid shows generated images and
goes to ``--grid-dir`` (not committed); the PCA plot and the statistics JSON go to ``--out-dir``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="pbc-lt-cpu")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--sigma", type=float, default=0.07)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--grid-dir", default="runs/figures")
    parser.add_argument("--out-dir", default="research/results/dream-ood")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from tailsynth.methods import METHODS
    from tailsynth.outliers import DecodeConfig
    from tailsynth.engine.artifacts import read_split
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import StageGraph
    from tailsynth.methods.dream_ood.stages import read_outliers
    from tailsynth.engine.runner import Runner
    from tailsynth.engine.store import ArtifactStore
    from tailsynth.methods.dream_ood.report import outlier_grid, pca_figure
    from tailsynth.methods.dream_ood.stages import outlier_embeddings, outlier_images
    from tailsynth.utils import read_json

    started = time.time()
    cfg = load_experiment(args.experiment, list(args.overrides))
    graph = StageGraph(cfg, Runner(ArtifactStore(args.runs)))
    dream, bood = METHODS.get("dream-ood"), METHODS.get("bood")
    dcfg, bcfg = cfg.method_config("dream-ood"), cfg.method_config("bood")
    encoder = graph.classifier("vmf-encoder", dcfg.encoder_seed)
    main_d = outlier_embeddings(graph, "dream-ood", encoder, dream.stage2_settings(dcfg))
    main_b = outlier_embeddings(graph, "bood", encoder, bood.stage2_settings(bcfg))
    img_d = outlier_images(graph, "dream-ood", main_d, dcfg.decode)
    img_b = outlier_images(graph, "bood", main_b, bcfg.decode)
    other = dcfg.outliers.model_copy(update={"sigma": args.sigma, "n_per_class": args.per_class})
    extra_d = outlier_embeddings(graph, "dream-ood", encoder, {"dream_ood": other})
    small = DecodeConfig(**{**dcfg.decode.model_dump(), "shard_size": args.per_class})
    extra_img = outlier_images(graph, "dream-ood", extra_d, small)
    split = read_split(graph.split())

    Path(args.grid_dir).mkdir(parents=True, exist_ok=True)
    grid = outlier_grid({f"dream-ood sigma {dcfg.outliers.sigma}": img_d, f"dream-ood sigma {args.sigma}": extra_img,
                         "bood": img_b}, split, cfg.data, per_class=6)
    (Path(args.grid_dir) / f"outliers_{cfg.benchmark}.png").write_bytes(grid)

    sets = {f"dream-ood sigma {dcfg.outliers.sigma}": read_outliers(main_d.path), "bood": read_outliers(main_b.path),
            f"dream-ood sigma {args.sigma}": read_outliers(extra_d.path)}
    first = next(iter(sets.values()))
    png = pca_figure(first["id_vectors"], first["id_classes"],
                     {name: (data["vectors"], data["classes"]) for name, data in sets.items()}, split.class_names,
                     "PBC-LT head classes: normalised ID embeddings of the vmf-encoder and the outliers of each method "
                     "(PCA of all ID embeddings)", per_class=True)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "pca_outliers.png").write_bytes(png)
    stats = {}
    for name, art in ((f"dream-ood sigma {dcfg.outliers.sigma}", main_d), ("bood", main_b),
                      (f"dream-ood sigma {args.sigma}", extra_d)):
        stats[name] = read_json(art.file("summary.json"))
    stats["timings_s"] = {f"{t['label']} ({t['stage']} {t['fingerprint'][:8]})": t["wall_time_s"] for t in graph.runner.timings}
    stats["this_script_s"] = round(time.time() - started, 1)
    (Path(args.out_dir) / "outlier_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
