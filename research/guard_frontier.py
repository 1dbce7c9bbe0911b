"""How far can a judge's rule push the adversarial share of the kept LoGex images down, and at what cost in images?
(issue: guidance that does not fool its guide; target: <= 10 % of kept images adversarial for the auxiliary).

On a finished runs folder with a ``guard_synthetic`` stage (the ``logex-guarded`` row): the guided set, its
un-guided (only-LoRA) partners, the row's judges and auxiliary, and the oracle. Every rule of
:func:`tailsynth.guard.decide` (agree; confidence p >= t; not_lower; not_lower with a margin, the judge's confidence
in the class raised by at least delta over the partner's: ``min_gain``; and, not in the module, the ratio of the two
confidences), with rejected images replaced by their partners or
dropped, with and without the per-class fall-back. Per rule: images kept, share of them guided, the oracle's accuracy
on the kept set and the share the auxiliary gets right while the oracle does not ("aux right, oracle wrong", the
quality table's number). The same numbers as the pipeline's: the same judges (mean softmax), the same guide (the
auxiliary as DiG-IN saw it), the same oracle. The oracle only measures; no rule here is chosen on it -- this maps
what a rule could reach, reported in the issue's terms.

    python research/guard_frontier.py --runs runs-fashion-canon --out research/results/guard-frontier/fashion.json

``--pool`` adds, per guided set judged by several sets of judges (rows with another ``judge_train``), the frontier of
all of them at once (an ensemble of recipes, e.g. of two architectures), without training anything.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def rules() -> list[tuple[str, dict]]:
    """(name, keyword arguments of :func:`tailsynth.guard.decide`) for every rule mapped, margin rules apart."""
    out = [("agree", {"rule": "agree"}), ("not_lower", {"rule": "not_lower"})]
    out += [(f"confidence >= {t}", {"rule": "confidence", "min_confidence": t}) for t in (0.3, 0.5, 0.7, 0.9)]
    return out


def evaluate_rule(ok: np.ndarray, labels: np.ndarray, has_plain: np.ndarray, replace: str, fallback_below: float,
                  g_oracle: np.ndarray, p_oracle: np.ndarray, g_aux: np.ndarray, p_aux: np.ndarray) -> dict:
    """The kept set's size and quality for one verdict vector ``ok`` (per guided image), kept by the module's
    replacement and fall-back (:func:`tailsynth.guard.judge.keep`)."""
    from tailsynth.guard.judge import GUIDED, PLAIN, keep
    decision = keep(ok, labels, has_plain, replace=replace, fallback_below=fallback_below)
    g, p = decision.source == GUIDED, decision.source == PLAIN
    n = int(g.sum() + p.sum())
    oracle_right = (g & g_oracle) | (p & p_oracle)
    adversarial = (g & g_aux & ~g_oracle) | (p & p_aux & ~p_oracle)
    return {"kept": n, "guided": int(g.sum()), "plain": int(p.sum()),
            "fallback_classes": [int(c) for c, f in decision.fallback.items() if f],
            "oracle_acc": float(oracle_right.sum() / n) if n else None,
            "aux_right_oracle_wrong": float(adversarial.sum() / n) if n else None}


def frontier(runs: Path, guard_dir: Path, pooled: list[Path] | None = None) -> dict:
    """The frontier of ``guard_dir``'s guided set; with ``pooled``, judged by the judges of all these guard stages
    together (their mean softmax: e.g. two architectures' judges of the same guided set)."""
    from tailsynth.data.split import Split
    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.engine.artifacts import SPLIT_FILE, load_classifier
    from tailsynth.guard import judge_probabilities
    from tailsynth.guard.judge import accepts
    from tailsynth.pipeline.diffusion_stages import aux_guide, aux_keys
    from tailsynth.pipeline.quality_stages import aux_predictions
    from tailsynth.training import predict
    from tailsynth.utils import read_json

    dev = torch.device("cpu")
    manifest = read_json(guard_dir / "manifest.json")
    inputs = manifest["inputs"]
    where = lambda key: runs / inputs[key]["stage"] / inputs[key]["fingerprint"]  # noqa: E731
    split = Split.read(where("split") / SPLIT_FILE)
    names = split.class_names
    cfg = manifest["config"]
    size, ch = cfg["data"]["image_size"], cfg["data"]["channels"]
    guided, plain = SyntheticSet.read(where("guided")), SyntheticSet.read(where("plain"))
    plain_rows = {r["file"]: r for r in plain.rows}
    has_plain = np.array([r["file"] in plain_rows for r in guided.rows], dtype=bool)
    if not has_plain.all():
        raise SystemExit(f"{guard_dir}: {int((~has_plain).sum())} guided images have no partner; the frontier "
                         f"assumes every guided image has one")
    g_images, labels = guided.load_images(names, size, ch)
    p_images, p_labels = SyntheticSet(plain.folder, [plain_rows[r["file"]] for r in guided.rows]).load_images(
        names, size, ch)
    assert (p_labels == labels).all()
    judge_dirs = [where(k) for k in sorted(inputs) if k.startswith("judge_")]
    for other in pooled or []:
        o_inputs = read_json(other / "manifest.json")["inputs"]
        if (o_inputs["guided"], o_inputs["plain"]) != (inputs["guided"], inputs["plain"]):
            raise SystemExit(f"{other}: judges another guided / un-guided pair than {guard_dir}; cannot pool")
        more = [runs / o_inputs[k]["stage"] / o_inputs[k]["fingerprint"] for k in sorted(o_inputs)
                if k.startswith("judge_")]
        judge_dirs += [d for d in more if d not in judge_dirs]
    judges = [load_classifier(d)[0] for d in judge_dirs]
    g_probs, p_probs = judge_probabilities(judges, g_images, dev), judge_probabilities(judges, p_images, dev)
    oracle_dir = next(p.parent for p in runs.glob("train_oracle/*/manifest.json")
                      if read_json(p)["inputs"]["split"]["fingerprint"] == inputs["split"]["fingerprint"])
    oracle, _ = load_classifier(oracle_dir)
    guide = aux_guide([where(k) for k in aux_keys(inputs)], dev, cfg["synthesis"]["guide_resize"])
    g_oracle = predict(oracle, g_images, dev)[0].argmax(1) == labels
    p_oracle = predict(oracle, p_images, dev)[0].argmax(1) == labels
    g_aux, p_aux = aux_predictions(guide, g_images, dev) == labels, aux_predictions(guide, p_images, dev) == labels
    rows_ = np.arange(len(labels))
    verdicts = {name: accepts(g_probs, labels, kw["rule"], kw.get("min_confidence", 0.5), p_probs)
                for name, kw in rules()}
    gain = g_probs[rows_, labels] - p_probs[rows_, labels]
    for delta in (0.01, 0.02, 0.05, 0.1, 0.2):  # min_gain of the module's not_lower rule
        verdicts[f"not_lower + {delta}"] = accepts(g_probs, labels, "not_lower", 0.5, p_probs, min_gain=delta)
    ratio = g_probs[rows_, labels] / np.maximum(p_probs[rows_, labels], 1e-12)
    for r in (1.5, 2.0, 4.0):
        verdicts[f"ratio >= {r}"] = ratio >= r
    verdicts["agree and not_lower"] = verdicts["agree"] & verdicts["not_lower"]
    table = {}
    for name, ok in verdicts.items():
        for replace in ("plain", "drop"):
            for fb in (0.0, 0.5):
                table[f"{name} | {replace} | fall-back {fb}"] = evaluate_rule(
                    ok, labels, has_plain, replace, fb, g_oracle, p_oracle, g_aux, p_aux) | {
                    "accepted": float(ok.mean())}
    sets = {"guided": (g_oracle, g_aux), "plain": (p_oracle, p_aux)}
    label = str(guard_dir) + "".join(f" + judges of {p.name}" for p in pooled or [])
    return {"guard_dir": label, "guided": inputs["guided"]["fingerprint"], "n": len(labels),
            "judges": len(judges), "rule_shipped": cfg["guard"],
            "sets": {k: {"oracle_acc": float(o.mean()), "aux_right_oracle_wrong": float((a & ~o).mean())}
                     for k, (o, a) in sets.items()},
            "judge_auroc_guided_conf_vs_oracle": _auroc(g_probs[rows_, labels], g_oracle),
            "judge_auroc_gain_vs_oracle": _auroc(gain, g_oracle),
            "rules": table}


def _auroc(score, positive):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(positive, score)) if 0 < positive.sum() < len(positive) else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--guard", nargs="*", help="guard_synthetic stage folders (default: every one in --runs)")
    ap.add_argument("--pool", action="store_true",
                    help="also map the guard stages of one guided set with all their judges together")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from tailsynth.utils import read_json
    torch.set_num_threads(1)
    runs = Path(args.runs)
    dirs = [Path(d) for d in args.guard] if args.guard else sorted(
        p.parent for p in runs.glob("guard_synthetic/*/manifest.json"))
    out, seen = [], set()
    by_set: dict[tuple, list[Path]] = {}  # (guided, plain) -> one guard stage per set of judges
    for d in dirs:  # guard stages that differ only in their rule map the same frontier: once
        inputs = read_json(d / "manifest.json")["inputs"]
        key = tuple(sorted((k, v["fingerprint"]) for k, v in inputs.items()))
        if key not in seen:
            seen.add(key)
            out.append(frontier(runs, d))
            by_set.setdefault((inputs["guided"]["fingerprint"], inputs["plain"]["fingerprint"]), []).append(d)
    if args.pool:  # every guided set judged by more than one set of judges: all of them at once
        out += [frontier(runs, stages[0], stages[1:]) for stages in by_set.values() if len(stages) > 1]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    pct = lambda v: "  –  " if v is None else f"{100 * v:5.1f}"  # noqa: E731
    for r in out:
        print(f"## {r['guard_dir']} (guided {r['guided']}, n {r['n']}, {r['judges']} judges): guided oracle "
              f"{pct(r['sets']['guided']['oracle_acc'])} adv {pct(r['sets']['guided']['aux_right_oracle_wrong'])}; "
              f"plain oracle {pct(r['sets']['plain']['oracle_acc'])} adv "
              f"{pct(r['sets']['plain']['aux_right_oracle_wrong'])}; judge AUROC conf "
              f"{r['judge_auroc_guided_conf_vs_oracle']}, gain {r['judge_auroc_gain_vs_oracle']}")
        print("| rule | replace | fall-back | accepted | kept (guided / plain) | oracle acc. kept | adversarial kept |")
        print("|---|---|---|---|---|---|---|")
        for key, v in r["rules"].items():
            rule, replace, fb = key.split(" | ")
            print(f"| {rule} | {replace} | {fb.split()[-1]} | {pct(v['accepted'])} | {v['kept']} ({v['guided']} / "
                  f"{v['plain']}) | {pct(v['oracle_acc'])} | {pct(v['aux_right_oracle_wrong'])} |")


if __name__ == "__main__":
    main()
