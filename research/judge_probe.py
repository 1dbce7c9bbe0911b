"""Which independent judge tells a DiG-IN image the auxiliary believes from one that is the class? (issue: guidance
that does not fool its guide). On a finished pbc-lt-cpu runs folder: for each synthetic set, each candidate judge
(an ensemble of baseline classifiers other than the auxiliary, trained on the training split only) accepts an image
when the argmax of its mean softmax is the target class. Reported: acceptance, and among accepted / rejected images
the oracle's accuracy and the share the auxiliary gets right while the oracle does not (adversarial for the aux).
The oracle only measures; nothing here trains or chooses on test.

    python research/judge_probe.py --runs runs-pbc --out research/results/pbc-lt-judge/judge_probe.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs-pbc")
    ap.add_argument("--out", default="research/results/pbc-lt-judge/judge_probe.json")
    args = ap.parse_args()
    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.engine.artifacts import load_classifier
    from tailsynth.training.trainer import predict
    from tailsynth.utils import read_json
    runs = Path(args.runs)
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    manifests = [read_json(p) | {"dir": p.parent} for p in runs.glob("*/*/manifest.json")]
    split_m = next(m for m in manifests if m["stage"] == "split")
    from tailsynth.data.split import Split
    from tailsynth.engine.artifacts import SPLIT_FILE
    split = Split.read(split_m["dir"] / SPLIT_FILE)
    names = split.class_names
    classifiers = {m["label"]: m["dir"] for m in manifests if m["stage"] == "train_classifier"}
    oracle_dir = next(m["dir"] for m in manifests if m["stage"] == "train_oracle")
    oracle, card = load_classifier(oracle_dir)
    size, ch = card["image_size"], card["in_channels"]
    probs_cache = {}

    def probs(label, images, key):
        if (label, key) not in probs_cache:
            model, _ = load_classifier(classifiers[label])
            probs_cache[(label, key)] = torch.softmax(torch.as_tensor(predict(model, images, dev)[0]), 1).numpy()
        return probs_cache[(label, key)]

    out = {}
    for m in manifests:
        if m["stage"] != "synthesize":
            continue
        set_name = m["config"]["method"]
        syn = SyntheticSet.read(m["dir"])
        images, labels = syn.load_images(names, size, ch)
        oracle_pred = predict(oracle, images, dev)[0].argmax(1)
        aux_label = f"{m['config']['synthesis'].get('params', {}).get(set_name, {}).get('aux_method') or m['config']['synthesis']['aux_method']} seed {m['config']['synthesis']['aux_seed']}"
        aux_pred = probs(aux_label, images, set_name).argmax(1)
        judges = {
            "ce-rw seeds 1,2": ["ce-rw seed 1", "ce-rw seed 2"],
            "ce seeds 0-2": ["ce seed 0", "ce seed 1", "ce seed 2"],
            "focal seeds 0-2": ["focal seed 0", "focal seed 1", "focal seed 2"],
            "ldam-rw-drw seeds 0-2": ["ldam-rw-drw seed 0", "ldam-rw-drw seed 1", "ldam-rw-drw seed 2"],
            "ce-rw 1,2 + ldam-rw-drw 0-2": ["ce-rw seed 1", "ce-rw seed 2", "ldam-rw-drw seed 0",
                                            "ldam-rw-drw seed 1", "ldam-rw-drw seed 2"],
        }
        rows = {}
        for jname, members in judges.items():
            if not all(x in classifiers for x in members):
                continue
            p = np.mean([probs(x, images, set_name) for x in members], axis=0)
            conf = p[np.arange(len(labels)), labels]
            accept = p.argmax(1) == labels
            oracle_right, aux_right = oracle_pred == labels, aux_pred == labels

            def stats(mask):
                n = int(mask.sum())
                return {"n": n, "oracle_acc": float(oracle_right[mask].mean()) if n else None,
                        "aux_right_oracle_wrong": float((aux_right & ~oracle_right)[mask].mean()) if n else None}

            per_class = {names[c]: {"accept": float(accept[labels == c].mean()),
                                    "oracle_acc_accepted": float(oracle_right[(labels == c) & accept].mean())
                                    if ((labels == c) & accept).any() else None,
                                    "oracle_acc_all": float(oracle_right[labels == c].mean())}
                         for c in split.tail_classes}
            rows[jname] = {"accept": float(accept.mean()), "accepted": stats(accept), "rejected": stats(~accept),
                           "judge_conf_mean": float(conf.mean()), "per_class": per_class,
                           "auroc_judge_conf_vs_oracle": _auroc(conf, oracle_right)}
        rows.update(feature_judges(images, labels, oracle_pred, aux_pred, split, classifiers, size, ch, dev))
        out[set_name] = {"n": int(len(labels)), "aux": aux_label, "oracle_acc": float((oracle_pred == labels).mean()),
                         "aux_right_oracle_wrong": float(((aux_pred == labels) & (oracle_pred != labels)).mean()),
                         "judges": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for s, r in out.items():
        print(f"## {s}: n {r['n']} oracle {r['oracle_acc']:.3f} adversarial {r['aux_right_oracle_wrong']:.3f}")
        for j, v in r["judges"].items():
            print(f"  {j:30s} accept {v['accept']:.2f} | kept: oracle {v['accepted']['oracle_acc']} adv "
                  f"{v['accepted']['aux_right_oracle_wrong']} | rejected: oracle {v['rejected']['oracle_acc']} "
                  f"| AUROC {v['auroc_judge_conf_vs_oracle']}")
            print("     ", {k: (round(x['accept'], 2), x['oracle_acc_accepted'] and round(x['oracle_acc_accepted'], 2),
                             round(x['oracle_acc_all'], 2)) for k, x in v["per_class"].items()})


def feature_judges(images, labels, oracle_pred, aux_pred, split, classifiers, size, ch, dev):
    """Judges by feature distance to the REAL training images (10 per tail class): nearest class mean (cosine, in
    the penultimate features of independent CE classifiers; class counts do not bias it) and class-balanced 1-NN
    (the class whose nearest training image is nearest)."""
    from tailsynth.engine.artifacts import load_classifier, split_data
    from tailsynth.data import DataConfig
    from tailsynth.training.trainer import predict
    train = split_data(split, DataConfig(image_size=size, channels=ch), "train")
    rows = {}
    oracle_right, aux_right = oracle_pred == labels, aux_pred == labels
    spaces = {}
    for members in (["ce seed 0", "ce seed 1", "ce seed 2"], ["ce-rw seed 1", "ce-rw seed 2"]):
        fs, ft = [], []
        for x in members:
            model, _ = load_classifier(classifiers[x])
            fs.append(_unit(predict(model, images, dev)[1]))
            ft.append(_unit(predict(model, train.images, dev)[1]))
        spaces[" + ".join(members) + " features"] = (np.concatenate(fs, 1), np.concatenate(ft, 1))
    spaces["pixels"] = (_unit(images.reshape(len(images), -1).astype(np.float32) - 127.5),
                        _unit(train.images.reshape(len(train.images), -1).astype(np.float32) - 127.5))
    K = len(split.class_names)
    for name, (fs, ft) in spaces.items():
        means = _unit(np.stack([ft[train.labels == c].mean(0) for c in range(K)]))
        sim = fs @ means.T
        nn = np.stack([(fs @ ft[train.labels == c].T).max(1) for c in range(K)], 1)
        for rule, score in (("class mean", sim), ("balanced 1-NN", nn)):
            accept = score.argmax(1) == labels
            margin = score[np.arange(len(labels)), labels] - np.where(
                np.eye(K, dtype=bool)[labels], -np.inf, score).max(1)
            per_class = {split.class_names[c]: {"accept": float(accept[labels == c].mean()),
                                                "oracle_acc_accepted": float(oracle_right[(labels == c) & accept].mean())
                                                if ((labels == c) & accept).any() else None,
                                                "oracle_acc_all": float(oracle_right[labels == c].mean())}
                         for c in split.tail_classes}

            def stats(mask):
                n = int(mask.sum())
                return {"n": n, "oracle_acc": float(oracle_right[mask].mean()) if n else None,
                        "aux_right_oracle_wrong": float((aux_right & ~oracle_right)[mask].mean()) if n else None}
            rows[f"{rule}: {name}"] = {"accept": float(accept.mean()), "accepted": stats(accept),
                                       "rejected": stats(~accept), "judge_conf_mean": float(margin.mean()),
                                       "per_class": per_class, "auroc_judge_conf_vs_oracle": _auroc(margin, oracle_right)}
    return rows


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _auroc(score, positive):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(positive, score)) if 0 < positive.sum() < len(positive) else None


if __name__ == "__main__":
    main()
