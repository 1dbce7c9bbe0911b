"""Can the minority classifier learn the levels? Trains it on cached minority scores with other settings and prints
the held-out accuracy (training images only; no val/test involved).

    python benchmarks/minority_classifier_probe.py RUNS/minority_score/<fp> --runs RUNS --lr 3e-3 --steps 600 [--unconditional]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scores")
    parser.add_argument("--runs", required=True)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--distance", default="perceptual")
    parser.add_argument("--unconditional", action="store_true")
    parser.add_argument("--out", default=None, help="work folder (default: RUNS/probes/...)")
    args = parser.parse_args()
    from tailsynth.minority import MinorityClassifierConfig, quantile_labels, train_minority_classifier
    from tailsynth.pipeline.artifacts import load_adapted, read_split
    from tailsynth.pipeline.minority_stages import MinorityScoreStageConfig, condition_ids, read_scores, working_images
    from tailsynth.pipeline.store import Artifact
    folder = Path(args.scores)
    manifest = json.loads((folder / "manifest.json").read_text())
    cfg = MinorityScoreStageConfig(**manifest["config"])
    inputs = {k: Artifact(k, v["fingerprint"], Path(args.runs) / v["stage"] / v["fingerprint"])
              for k, v in manifest["inputs"].items()}
    split = read_split(inputs["split"])
    backend, cond_of = load_adapted(inputs["base"].path, inputs["lora"].path, cfg.diffusion, split, torch.device("cpu"))
    scores = read_scores(folder)
    train = scores["split"] == "train"
    _, images, labels, _ = working_images(split, cfg.data, cfg.diffusion, ["train"])
    levels = quantile_labels(scores[args.distance][train], args.levels, None if args.unconditional else labels)
    clf_cfg = MinorityClassifierConfig(num_levels=args.levels, conditional=not args.unconditional, steps=args.steps,
                                       lr=args.lr, hflip=False, checkpoint_every=10**9)
    out = Path(args.out or Path(args.runs) / "probes" / f"minority-classifier-lr{args.lr}-uncond{int(args.unconditional)}")
    _, summary = train_minority_classifier(backend, images, condition_ids(split, cond_of, labels), levels, clf_cfg, out,
                                           torch.device("cpu"))
    print(json.dumps({"lr": args.lr, "steps": args.steps, "unconditional": args.unconditional,
                      **{k: round(v, 3) for k, v in summary.items() if isinstance(v, float)}}))


if __name__ == "__main__":
    main()
