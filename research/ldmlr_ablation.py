"""LDMLR ablations on one experiment config (LDMLR Table 4: which classes get pseudo-features; Fig. 2: the
generation ratio; Table 5: only generated features), CE+LDMLR and label shift+LDMLR, per seed.

Every variant is an ordinary pipeline request (``StageGraph.classifier("ldmlr")`` with overrides of
``method_params.ldmlr``): the encoder, its features and the feature diffusion model are shared and cached;
only the pseudo-features and the classifier-layer fine-tune are per variant. Accuracies are computed from
the cached test features through the tuned classifier layer (f(x) = G(E(x)), E frozen: the same logits the
evaluate stage computes from the images). Validation numbers are written beside the test numbers: choices
are made on them.

    python research/ldmlr_ablation.py cifar10-lt-cpu --runs runs --seeds 0 1 2 \
        --out research/results/ldmlr/cifar10-lt-ablation
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tailsynth.data.features import FeatureSet
from tailsynth.ood.metrics import balanced_accuracy_on, group_accuracy, top1
from tailsynth.engine.artifacts import load_classifier, read_split
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.methods.ldmlr.label_shift import label_shift
from tailsynth.methods.ldmlr.stages import features
from tailsynth.pipeline.graph import StageGraph
from tailsynth.engine.runner import Runner
from tailsynth.engine.store import ArtifactStore

VARIANTS = {  # name -> overrides of method_params.ldmlr (Table 4, Fig. 2, Table 5)
    "classes=all": {"pseudo.classes": "all"},
    "classes=many": {"pseudo.classes": "many"},
    "classes=medium": {"pseudo.classes": "medium"},
    "classes=few": {"pseudo.classes": "few"},
    "ratio=0.1": {"pseudo.ratio": 0.1},
    "ratio=0.2": {"pseudo.ratio": 0.2},
    "ratio=0.4": {"pseudo.ratio": 0.4},
    "ratio=0.8": {"pseudo.ratio": 0.8},
    "only generated (ratio 1, all)": {"only_generated": True, "pseudo.classes": "all", "pseudo.ratio": 1.0},
}


def head_metrics(model, fs: FeatureSet, split, bias_shift: np.ndarray | None = None) -> dict[str, float]:
    out = {}
    for which in ("val", "test"):
        z, y = fs.subset(which)
        with torch.no_grad():
            logits = model.forward_head(torch.as_tensor(z)).numpy()
        if bias_shift is not None:
            logits = logits + bias_shift[None]
        pred = logits.argmax(1)
        out[f"{which}_acc"] = top1(y, pred)
        out[f"{which}_bacc"] = balanced_accuracy_on(y, pred, range(len(split.class_names)))
        if which == "test":
            out.update({f"test_acc_{k}": v for k, v in group_accuracy(y, pred, split.groups).items()})
    return out


def run(config: str, runs: str, seeds: list[int], variants: list[str], extra: list[str]) -> dict:
    rows: dict[str, dict[str, list]] = {}
    for variant in ["baseline (encoder's own head)"] + variants:
        overrides = [f"method_params.ldmlr.{k}={v}" for k, v in VARIANTS.get(variant, {}).items()]
        cfg = load_experiment(config, list(extra) + overrides + ["methods=[ldmlr]"])
        graph = StageGraph(cfg, Runner(ArtifactStore(runs), log=print))
        split = read_split(graph.split())
        for seed in seeds:
            started = time.time()
            lcfg = cfg.method_config("ldmlr")
            base = graph.classifier(lcfg.encoder, seed)
            fs = FeatureSet.read(features(graph, base, seed=seed).path, encoder=base.fingerprint)
            if variant in VARIANTS:
                art = graph.classifier("ldmlr", seed)
                la = label_shift(graph, art, "la-ldmlr", seed, _la_config(cfg))
            else:
                art = base
                la = label_shift(graph, base, "la", seed, _la_config(cfg))
            model, _ = load_classifier(art.path)
            m = head_metrics(model, fs, split)
            la_model, la_card = load_classifier(la.path)
            shift = -la_card["label_shift"]["tau"] * np.asarray(la_card["label_shift"]["log_prior"])
            m.update({f"la_{k}": v for k, v in head_metrics(model, fs, split, shift.astype(np.float32)).items()})
            m["la_tau"] = la_card["label_shift"]["tau"]
            m["wall_s"] = round(time.time() - started, 1)
            row = rows.setdefault(variant, {})
            for k, v in m.items():
                row.setdefault(k, []).append(v)
    return rows


def _la_config(cfg):
    from tailsynth.config import build_config
    from tailsynth.methods.ldmlr import LabelShiftConfig
    return build_config(LabelShiftConfig, cfg.method_params.get("la", {}), "method_params.la")


def fmt(values: list[float]) -> str:
    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():.2f}" + (f" ± {a.std(ddof=1):.2f}" if len(a) > 1 else "")


def write(rows: dict, out: Path, command: str, seeds: list[int]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"command": command, "seeds": seeds, "rows": rows}, indent=1))
    keys = [("test_acc", "CE+LDMLR test top-1"), ("test_acc_many", "many"), ("test_acc_medium", "medium"),
            ("test_acc_few", "few"), ("val_bacc", "val bAcc"), ("la_test_acc", "LS+LDMLR test top-1"),
            ("la_val_bacc", "LS+LDMLR val bAcc")]
    lines = [f"# LDMLR ablations ({len(seeds)} seed(s): {seeds}; mean ± std over seeds, %)", "",
             f"Command: `{command}`", "", "| variant | " + " | ".join(h for _, h in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for variant, row in rows.items():
        lines.append(f"| {variant} | " + " | ".join(fmt(row[k]) if k in row else "-" for k, _ in keys) + " |")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    ratios = [(float(v.split("=")[1]), rows[v]) for v in rows if v.startswith("ratio=")]
    if ratios:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(5, 3.4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        xs = [r for r, _ in ratios]
        for key, label in (("test_acc", "CE+LDMLR test"), ("la_test_acc", "LS+LDMLR test"),
                           ("val_bacc", "CE+LDMLR val bAcc")):
            ys = [100 * np.mean(row[key]) for _, row in ratios]
            es = [100 * np.std(row[key], ddof=1) if len(row[key]) > 1 else 0 for _, row in ratios]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
        base = rows.get("baseline (encoder's own head)")
        if base:
            ax.axhline(100 * np.mean(base["test_acc"]), color="0.5", ls="--", label="CE test")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("generation ratio")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{out}-ratio.png", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--runs", default="runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an experiment override (repeatable)")
    a = p.parse_args()
    import sys
    rows = run(a.config, a.runs, a.seeds, a.variants, a.overrides)
    write(rows, Path(a.out), "python " + " ".join(sys.argv), a.seeds)
    print(Path(f"{a.out}.md").read_text())


if __name__ == "__main__":
    main()
