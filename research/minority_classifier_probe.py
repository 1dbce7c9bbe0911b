"""Can the minority classifier learn the levels? Trains it on cached minority scores with other settings and prints
the held-out accuracy (training images only; no val/test involved).

    python research/minority_classifier_probe.py RUNS/minority_score/<fp> --runs RUNS --lr 3e-3 --steps 600 \
        [--unconditional] [--encoder frozen|finetune] [--holdout 0.2] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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
    parser.add_argument("--encoder", choices=["finetune", "frozen"], default="finetune")
    parser.add_argument("--holdout", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json-out", default=None, help="append the result line to this JSON-lines file")
    parser.add_argument("--out", default=None, help="work folder (default: RUNS/probes/...)")
    args = parser.parse_args()
    from tailsynth.minority import MinorityClassifierConfig, quantile_labels, train_minority_classifier
    from tailsynth.engine.artifacts import load_adapted, read_split
    from tailsynth.methods.minority.stages import MinorityScoreStageConfig, condition_ids, read_scores, working_images
    from tailsynth.engine.store import Artifact
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
                                       lr=args.lr, hflip=False, checkpoint_every=10**9, encoder=args.encoder,
                                       holdout=args.holdout, batch_size=args.batch_size)
    out = Path(args.out or Path(args.runs) / "probes" / (f"minority-classifier-{args.distance}-{args.encoder}-lr{args.lr}-s{args.steps}"
                                                         f"-h{args.holdout}-uncond{int(args.unconditional)}"))
    start = time.perf_counter()
    _, summary = train_minority_classifier(backend, images, condition_ids(split, cond_of, labels), levels, clf_cfg, out,
                                           torch.device("cpu"))
    line = json.dumps({"scores": folder.name, "distance": args.distance, "encoder": args.encoder, "lr": args.lr,
                       "steps": args.steps, "batch_size": args.batch_size, "unconditional": args.unconditional,
                       "wall_s": round(time.perf_counter() - start, 1), "n_holdout": summary["n_holdout"],
                       **{k: round(v, 3) for k, v in summary.items() if isinstance(v, float)}})
    print(line)
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
