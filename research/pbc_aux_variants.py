"""Auxiliary-classifier variants for DiG-IN on PBC-LT, compared on the validation split only: each variant is
`pbc-lt-cpu` with overrides; only its auxiliary classifier stage(s) run (in the shared probe runs folder), and
the table gives the validation recall over all classes and over the tail (argmax over all classes; an ensemble:
argmax of the mean softmax).

    python research/pbc_aux_variants.py --runs runs-pbc-probe --out research/results/pbc-lt-probes/aux_variants.json

A variant costs its auxiliary training (CE-RW / LDAM-RW-DRW, ResNet-18 x 0.25, 15 epochs: 2.5-4.5 min on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

AUX_TRAIN = "synthesis.aux_train={epochs: 15, selection: val_bacc}"
VARIANTS = {
    "ce-rw": [AUX_TRAIN],
    "ldam-rw-drw": [AUX_TRAIN, "synthesis.aux_method=ldam-rw-drw"],
    "ce-rw ensemble of 3": [AUX_TRAIN, "synthesis.aux_ensemble=3"],
}


def evaluate(runs: Path, overrides: list[str]) -> dict:
    from tailsynth.pipeline import ArtifactStore, Runner
    from tailsynth.engine.artifacts import load_classifier, read_split, split_data
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import StageGraph
    from tailsynth.training.trainer import predict
    cfg = load_experiment("pbc-lt-cpu", overrides)
    graph = StageGraph(cfg, Runner(ArtifactStore(runs)))
    split = read_split(graph.split())
    started = time.time()
    members = graph.auxiliary(graph.synthesis.aux_method)
    val = split_data(split, cfg.data, "val")
    y = np.asarray(val.labels)
    tail = list(split.tail_classes)

    def recall(pred):
        per = np.array([np.mean(pred[y == c] == c) for c in range(len(split.class_names))])
        return {"val_bacc": float(per.mean()), "val_bacc_tail": float(per[tail].mean()),
                "val_recall_tail": {split.class_names[c]: float(per[c]) for c in tail}}

    probs, out = [], {"members": {}}
    for key, artifact in members.items():
        model, _ = load_classifier(artifact.path)
        p = torch.softmax(torch.as_tensor(predict(model, val.images, torch.device("cpu"))[0]), 1).numpy()
        probs.append(p)
        out["members"][key] = {"fingerprint": artifact.fingerprint, **recall(p.argmax(1))}
    out.update(recall(np.mean(probs, 0).argmax(1)))
    out["overrides"], out["seconds_this_call"] = overrides, round(time.time() - started, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs-pbc-probe"))
    ap.add_argument("--out", type=Path, default=Path("research/results/pbc-lt-probes/aux_variants.json"))
    args = ap.parse_args()
    results = {name: evaluate(args.runs, overrides) for name, overrides in VARIANTS.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for name, r in results.items():
        print(f"{name:22s} val bAcc {100 * r['val_bacc']:.1f}  tail {100 * r['val_bacc_tail']:.1f}  "
              + " ".join(f"{k} {100 * v:.0f}" for k, v in r["val_recall_tail"].items()))


if __name__ == "__main__":
    main()
