"""Far-OOD check of trained PBC-LT classifiers: in-distribution = the benchmark's HEAD test images; out-of-
distribution = its tail test images (near), CIFAR-10 test images and MNIST-5k digits (far; both resized to the
classifier's input, MNIST grey -> RGB). FPR@95 (head TPR 95 %) and AUROC of each row's own primary score
(P(tail) for ce / logex, the head energy for dream-ood / bood) and of the head energy and MSP for every row.

    python benchmarks/far_ood.py --runs runs --results benchmarks/results/pbc-lt-dream-ood/results.json \
        --out benchmarks/results/dream-ood/far_ood.json

Reads the classifier of every (method, seed) run listed in the results file; computes nothing it does not report.
Inference only: a few seconds per classifier on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def far_sets(image_size: int, channels: int, n: int) -> dict[str, np.ndarray]:
    from tailsynth.data.builtin import load_mnist5k
    from tailsynth.data.decode import convert_array
    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar-lt"
    cifar = np.load(root / "cifar10_test.npz")["images"][:n]
    mnist = load_mnist5k(True).images[:n]
    return {"cifar10": convert_array(cifar, image_size, channels), "mnist": convert_array(mnist, image_size, channels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--results", required=True, help="a results.json whose rows to check")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--n-far", type=int, default=2000, help="images per far set")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from scipy.special import logsumexp, softmax

    from tailsynth.ood.metrics import auroc, fpr_at_tpr
    from tailsynth.pipeline.artifacts import load_classifier, read_split, split_data
    from tailsynth.pipeline.experiment import DataConfig
    from tailsynth.pipeline.store import Artifact
    from tailsynth.report.aggregate import seed_stats
    from tailsynth.training import predict
    from tailsynth.utils import read_json

    results = json.loads(Path(args.results).read_text())
    own = results.get("method_primary_score", {})
    default = results.get("primary_score", "p_tail")
    out: dict = {"per_run": {}, "summary": {}, "command": "python benchmarks/far_ood.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and not isinstance(v, list))}
    device = torch.device("cpu")
    cache: dict = {}
    for method, runs in results["runs"].items():
        if args.methods and method not in args.methods:
            continue
        for run in runs:
            eval_manifest = read_json(Path(run["path"]) / "manifest.json")
            clf_fp = eval_manifest["inputs"]["classifier"]["fingerprint"]
            clf_dir = Path(args.runs) / eval_manifest["inputs"]["classifier"]["stage"] / clf_fp
            split_fp = eval_manifest["inputs"]["split"]["fingerprint"]
            data = DataConfig(**eval_manifest["config"]["data"])
            key = (split_fp, data.image_size, data.channels)
            if key not in cache:
                split = read_split(Artifact("split", split_fp, Path(args.runs) / "split" / split_fp))
                test = split_data(split, data, "test")
                head = np.isin(test.labels, split.head_classes)
                cache[key] = (split, {"head": test.images[head], "tail (near)": test.images[~head],
                                      **far_sets(data.image_size, data.channels, args.n_far)})
            split, sets = cache[key]
            model, card = load_classifier(clf_dir)
            h, t = list(split.head_classes), list(split.tail_classes)
            scores = {}
            for name, images in sets.items():
                z = predict(model, images, device)[0].astype(np.float64)
                p = softmax(z, axis=1)
                scores[name] = {"p_tail": p[:, t].sum(1), "energy_head": -logsumexp(z[:, h], axis=1),
                                "msp_head": -p[:, h].max(1)}
            primary = own.get(method, default)
            row = {}
            for score in dict.fromkeys([primary, "energy_head", "msp_head"]):
                label = f"{score} (primary)" if score == primary else score
                row[label] = {ood: {"fpr95": fpr_at_tpr(scores["head"][score], scores[ood][score]),
                                    "auroc": auroc(scores["head"][score], scores[ood][score])}
                              for ood in sets if ood != "head"}
            out["per_run"].setdefault(method, {})[str(run["seed"])] = row
            print(method, run["seed"], {ood: round(100 * v["fpr95"], 2) for ood, v in row[f"{primary} (primary)"].items()})
    for method, seeds in out["per_run"].items():
        first = next(iter(seeds.values()))
        out["summary"][method] = {score: {ood: {m: seed_stats(seeds[s][score][ood][m] for s in seeds)
                                                for m in ("fpr95", "auroc")} for ood in oods}
                                  for score, oods in first.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| method | score | " + " | ".join(f"{o} FPR@95 ↓ | {o} AUROC ↑" for o in ("tail (near)", "cifar10", "mnist"))
             + " |", "|---|---|" + "---:|" * 6]
    for method, block in out["summary"].items():
        for score, oods in block.items():
            cells = [f"{100 * oods[o][m]['mean']:.2f} ± {100 * oods[o][m]['std']:.2f}"
                     for o in ("tail (near)", "cifar10", "mnist") for m in ("fpr95", "auroc")]
            lines.append(f"| {method} | {score} | " + " | ".join(cells) + " |")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
