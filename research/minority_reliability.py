"""Test-retest reliability of the minority score: two independent sets of noise draws on the same training images,
Spearman correlation within each class, for several (draws, t) settings. Training images only (no val/test).

    python research/minority_reliability.py --experiment demo --runs runs-minority --out research/results/minority-demo/reliability.json [overrides]

A score whose levels are mostly noise-draw variance cannot be learnt by the minority classifier (its held-out
accuracy stays at chance); this measures how many draws, at which t, make the score a property of the image.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="pbc-lt-cpu")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=400, help="training images (every k-th)")
    parser.add_argument("--settings", default="5:none,25:none,25:300", help="draws:t pairs (t none = the rule)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from tailsynth.methods import generator_named
    from tailsynth.minority import minority_scores
    from tailsynth.engine.artifacts import load_adapted, read_split
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import StageGraph
    from tailsynth.methods.minority.stages import MinorityScoreStageConfig, _perceptual, condition_ids, working_images
    from tailsynth.engine.runner import Runner
    from tailsynth.engine.store import ArtifactStore
    from tailsynth.utils import resolve_device

    cfg = load_experiment(args.experiment, list(args.overrides))
    graph = StageGraph(cfg, Runner(ArtifactStore(args.runs)))
    settings = generator_named("minority").params(graph.synthesis)
    split = read_split(graph.split())
    device = resolve_device(cfg.device)
    inputs = {"split": graph.split(), "perceptual": graph.classifier(settings.perceptual_method, 0)}
    backend, cond_of = load_adapted(graph.base_diffusion().path, graph.lora().path, graph.diffusion, split, device)
    stage_cfg = MinorityScoreStageConfig(score=settings.score, perceptual=settings.perceptual, diffusion=graph.diffusion,
                                         data=cfg.data, device=cfg.device)
    perceptual = _perceptual(stage_cfg, inputs, split, device)
    _, images, labels, _ = working_images(split, cfg.data, graph.diffusion, ["train"])
    sel = np.arange(0, len(labels), max(1, len(labels) // args.n))[:args.n]
    x = torch.as_tensor(images[sel]).permute(0, 3, 1, 2).float() / 255
    y = labels[sel]
    c = torch.as_tensor(condition_ids(split, cond_of, y))
    rows = []
    for item in args.settings.split(","):
        draws, t = item.split(":")
        t = None if t == "none" else int(t)
        started = time.time()
        runs = [minority_scores(backend, x, c, settings.score.model_copy(update={"seed": seed, "num_draws": int(draws),
                                                                                 "t": t}), perceptual) for seed in (1, 2)]
        for dist in ("l2", "l1", "perceptual"):
            if dist not in runs[0]:
                continue
            per_class = {split.class_names[q]: float(spearmanr(runs[0][dist][y == q], runs[1][dist][y == q]).statistic)
                         for q in np.unique(y) if (y == q).sum() > 5}
            rows.append({"draws": int(draws), "t": t, "distance": dist, "per_class": per_class,
                         "mean": float(np.mean(list(per_class.values())))})
            print(f"draws {draws:>3} t {t or 'rule':>5} {dist:<10} within-class test-retest rho {rows[-1]['mean']:.3f}")
        rows[-1]["wall_s_two_runs"] = round(time.time() - started, 1)
    Path(args.out).write_text(json.dumps({"experiment": cfg.name, "n_images": int(len(sel)), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
