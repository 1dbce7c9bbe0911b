"""LDMLR ablations on one experiment config (LDMLR Table 4: which classes get pseudo-features; Fig. 2: the
generation ratio; Table 5: only generated features), CE+LDMLR and label shift+LDMLR, per seed.

Two rows separate LDMLR's own gain from the re-fit it comes with: ``gamma=0 (re-fit control)`` is the same
fine-tune of the classifier layer on the same batches with the pseudo-features weighted 0 in Eq. 13, so
"LDMLR's own gain" = ldmlr (``classes=all``) minus it, and "re-fit gain" = it minus the encoder's own layer
(their sum is ldmlr - ce), both per seed; ``allocation=uniform`` reads Eq. 12's y ~ p(y) as uniform (the same
total pseudo-feature count, equal per class).

Model selection: every row keeps the fine-tune epoch chosen on the VALIDATION split (the pipeline's rule). The
official LDMLR recipe keeps the epoch with the best TEST accuracy; ``test top-1, epoch chosen on test`` repeats each
variant's fine-tune (same seed, data, objective and batches) with the test features in the place of the validation
ones, as that protocol does. It is reported only, to compare with the paper's numbers; nothing is chosen on it.

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
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tailsynth.data.features import FeatureSet
from tailsynth.errors import TailsynthError
from tailsynth.ood.metrics import balanced_accuracy_on, group_accuracy, top1
from tailsynth.engine.artifacts import load_classifier, read_split
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.methods.ldmlr.label_shift import label_shift
from tailsynth.methods.ldmlr.stages import features
from tailsynth.pipeline.graph import StageGraph
from tailsynth.engine.runner import Runner
from tailsynth.engine.store import ArtifactStore
from tailsynth.engine.artifacts import new_classifier
from tailsynth.methods.registry import METHODS
from tailsynth.pipeline.stages import TrainStageConfig
from tailsynth.training import FeatureData
from tailsynth.training.trainer import fit

VARIANTS = {  # name -> overrides of method_params.ldmlr (Table 4, Fig. 2, Table 5)
    "shipped": {},  # the config's own method_params.ldmlr (pbc-lt-cpu: tail classes, ratio 10, gamma 0.05)
    "classes=all": {"pseudo.classes": "all"},
    "classes=many": {"pseudo.classes": "many"},
    "classes=medium": {"pseudo.classes": "medium"},
    "classes=few": {"pseudo.classes": "few"},
    "ratio=0.1": {"pseudo.ratio": 0.1},
    "ratio=0.2": {"pseudo.ratio": 0.2},
    "ratio=0.4": {"pseudo.ratio": 0.4},
    "ratio=0.8": {"pseudo.ratio": 0.8},
    "only generated (ratio 1, all)": {"only_generated": True, "pseudo.classes": "all", "pseudo.ratio": 1.0},
    # the control: the same 30-epoch re-fit of G on the same batches, the pseudo-features weighted 0 (Eq. 13)
    "gamma=0 (re-fit control)": {"gamma": 0},
    # Eq. 12's y ~ p(y) read as uniform: the same total 0.2 N pseudo-features, an equal count per class
    "allocation=uniform": {"pseudo.allocation": "uniform"},
    "classes=all, allocation=uniform": {"pseudo.classes": "all", "pseudo.allocation": "uniform"},
}
DEFAULT = "classes=all"  # = the shipped ldmlr row (ratio 0.2, all classes, proportional counts, gamma 0.05)
CONTROL = "gamma=0 (re-fit control)"
BASELINE = "baseline (encoder's own head)"
# (name, minuend, subtrahend): per-seed differences; ldmlr - ce = re-fit gain + LDMLR's own gain
DIFFERENCES = [("LDMLR's own gain, shipped settings (shipped - gamma=0)", "shipped", CONTROL),
               ("LDMLR's own gain (classes=all - gamma=0)", DEFAULT, CONTROL),
               ("re-fit gain (gamma=0 - encoder's own head)", CONTROL, BASELINE),
               ("uniform - proportional counts (allocation=uniform - classes=all)", "allocation=uniform", DEFAULT),
               ("uniform - proportional counts, all classes", "classes=all, allocation=uniform", DEFAULT)]


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


def test_selected_top1(store: ArtifactStore, art, fs: FeatureSet, split, workdir: Path) -> float:
    """Test top-1 of the fine-tune of ``art`` (an ldmlr classifier) repeated with the epoch chosen on the TEST
    features (the official recipe's selection; reported only): the stage's own config and inputs, the test
    features in the place of the validation ones."""
    manifest = art.manifest
    cfg = TrainStageConfig.model_validate(manifest["config"])
    inputs = {k: store.lookup(v["stage"], v["fingerprint"]) for k, v in manifest["inputs"].items()}
    method = METHODS.get(cfg.method)
    train = method.training_data(split, None, inputs, cfg.data, cfg.synthetic_per_class, cfg.method_config)
    counts = np.bincount(np.asarray(train.labels), minlength=len(split.class_names))
    torch.manual_seed(cfg.seed)
    model, _ = new_classifier(cfg.train, cfg.data, split, cfg.label or cfg.method, cfg.seed,
                              head=method.head_spec(split, inputs, cfg.method_config))
    trainable = method.init_model(model, inputs, cfg.seed)
    z, y = fs.subset("test")
    summary = fit(model, method.objective(counts.tolist(), split, cfg.method_config), method.batches(train, cfg.train),
                  FeatureData(z, y), cfg.train, workdir, seed=cfg.seed, device=torch.device("cpu"),
                  select=lambda logits, labels: top1(labels, logits.argmax(1)), trainable=trainable, log=lambda _: None,
                  progress=False)
    return float(summary["best_score"])


def run(config: str, runs: str, seeds: list[int], variants: list[str], extra: list[str]) -> dict:
    rows: dict[str, dict[str, list]] = {}
    for variant in [BASELINE] + variants:
        overrides = [f"method_params.ldmlr.{k}={v}" for k, v in VARIANTS.get(variant, {}).items()]
        try:
            cfg = load_experiment(config, list(extra) + overrides + ["methods=[ldmlr]"])
        except TailsynthError as err:  # e.g. classes=many on a benchmark without many/medium/few groups
            print(f"skipped variant {variant!r}: {err}")
            continue
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
            if variant in VARIANTS:
                with tempfile.TemporaryDirectory() as tmp:
                    m["test_acc_test_selected"] = test_selected_top1(graph.runner.store, art, fs, split, Path(tmp))
            m["wall_s"] = round(time.time() - started, 1)
            row = rows.setdefault(variant, {})
            for k, v in m.items():
                row.setdefault(k, []).append(v)
    return rows


def _la_config(cfg):
    from tailsynth.config import build_config
    from tailsynth.methods.ldmlr import LabelShiftConfig
    return build_config(LabelShiftConfig, cfg.method_params.get("la", {}), "method_params.la")


def differences(rows: dict) -> dict:
    """Per-seed differences of two variants' figures (``DIFFERENCES``), for the pairs both present."""
    out = {}
    for name, a, b in DIFFERENCES:
        if a in rows and b in rows:
            out[name] = {k: [x - y for x, y in zip(rows[a][k], rows[b][k])]
                         for k in rows[a] if k in rows[b] and k not in ("la_tau", "wall_s")}
    return out


def fmt(values: list[float]) -> str:
    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():.2f}" + (f" ± {a.std(ddof=1):.2f}" if len(a) > 1 else "")


def write(rows: dict, out: Path, command: str, seeds: list[int]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    diffs = differences(rows)
    Path(f"{out}.json").write_text(json.dumps({"command": command, "seeds": seeds, "rows": rows,
                                               "differences": diffs}, indent=1))
    keys = [("test_acc", "CE+LDMLR test top-1"), ("test_acc_test_selected", "test top-1, epoch chosen on test"),
            ("test_acc_many", "many"), ("test_acc_medium", "medium"),
            ("test_acc_few", "few"), ("val_bacc", "val bAcc"), ("la_test_acc", "LS+LDMLR test top-1"),
            ("la_val_bacc", "LS+LDMLR val bAcc")]
    lines = [f"# LDMLR ablations ({len(seeds)} seed(s): {seeds}; mean ± std over seeds, %)", "",
             f"Command: `{command}`", "", "| variant | " + " | ".join(h for _, h in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for variant, row in rows.items():
        lines.append(f"| {variant} | " + " | ".join(fmt(row[k]) if k in row else "-" for k, _ in keys) + " |")
    if diffs:
        lines += ["", "Differences, per seed, then mean ± std over seeds (percentage points):", "",
                  "| difference | " + " | ".join(h for _, h in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name, row in diffs.items():
            lines.append(f"| {name} | " + " | ".join(fmt(row[k]) if k in row else "-" for k, _ in keys) + " |")
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
        base = rows.get(BASELINE)
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
    write(rows, Path(a.out), "python " + shlex.join(sys.argv), a.seeds)
    print(Path(f"{a.out}.md").read_text())


if __name__ == "__main__":
    main()
