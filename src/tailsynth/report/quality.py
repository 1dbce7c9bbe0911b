"""The synthetic-image quality table (LoGex §4.4): the oracle's accuracy on each method's synthetic tail
images and on the real tail test images, overall and per tail class, from ``quality.json``; and the
memorisation figures of each synthetic set (``memorisation.json``, :mod:`tailsynth.report.memorisation`)."""
from __future__ import annotations

from typing import Any, Mapping

from .tables import Table


def settings_table(settings: Mapping[str, Mapping[str, Any]]) -> Table:
    """One row per synthetic generator: the settings its images were made with (``SyntheticGenerator.settings``)."""
    keys = ["DDIM steps", "CFG", "aux classifier", "images / class"]
    table = Table("Synthetic image settings", ["generator"] + keys + ["other settings"],
                  caption="DDIM steps and CFG as the generator used them (FG-Entropy keeps its own unless set).")
    for name, entry in settings.items():
        other = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in keys)
        table.rows.append([(name, "")] + [(str(entry[k]), "") for k in keys] + [(other or "–", "")])
    return table


def synthetic_summary(rows: list[dict], threshold: float | None) -> dict[str, dict[str, Any]]:
    """Per class of one synthetic set: images, mean score (the auxiliary classifier's target confidence) and,
    for a thresholded generator (DiG-IN), the share of images at or above the threshold."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["class"] for r in rows):
        scores = [float(r["score"]) for r in rows if r["class"] == name]
        entry = {"n": len(scores), "mean_score": sum(scores) / len(scores)}
        if threshold is not None:
            entry["accepted"] = sum(s >= threshold for s in scores) / len(scores)
        out[name] = entry
    return out


def synthetic_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Table:
    table = Table("Synthetic sets: auxiliary-classifier confidence per tail class",
                  ["generator", "class", "images", "mean confidence", "share >= threshold"],
                  caption="Confidence = the auxiliary classifier's softmax of the target class on the saved image "
                          "(DiG-IN stops at its threshold).")
    for generator, classes in summary.items():
        for name, e in classes.items():
            accepted = f"{100 * e['accepted']:.1f} %" if "accepted" in e else "–"
            table.rows.append([(generator, ""), (name, ""), (str(e["n"]), ""), (f"{e['mean_score']:.3f}", ""),
                               (accepted, "")])
    return table


def quality_table(quality: Mapping[str, Any], memorisation: Mapping[str, Any] | None = None) -> Table:
    """The oracle's accuracy per set and tail class; with ``memorisation`` (:func:`memorisation_table`'s input)
    each synthetic set's overall near-copy share in the oracle's features and in pixels."""
    classes = list(quality["real_tail_test"]["per_class"])
    spaces = [("features", "near-copies, oracle features"), ("pixels", "near-copies, pixels")] if memorisation else []
    table = Table("Synthetic image quality (oracle accuracy, %, LoGex §4.4)",
                  ["images", "oracle acc.", *classes, "aux acc.", "aux right, oracle wrong"]
                  + [h for _, h in spaces],
                  caption="The oracle is trained on every non-test image of every class; it is used for this "
                          "table only. aux acc. = the auxiliary classifier's accuracy on the same images; "
                          "'aux right, oracle wrong' = images the guidance made the auxiliary's class without "
                          "the oracle agreeing (adversarial for the auxiliary)."
                          + (" Near-copies: the share of synthetic images closer to a training image of their "
                             "class than the class's typical real-real nearest-neighbour distance (per class: "
                             "the memorisation table)." if spaces else ""))
    pct = lambda v: f"{100 * v:.1f}" if v is not None else "–"  # noqa: E731
    for name, entry in quality.items():
        label = "real tail (test)" if name == "real_tail_test" else f"synthetic: {name}"
        cells = [pct(entry["per_class"][c]) if c in entry["per_class"] else "–" for c in classes]
        aux = [pct(entry.get("aux_accuracy")), pct(entry.get("aux_right_oracle_wrong"))]
        mem = [pct((memorisation or {}).get(name, {}).get(k, {}).get("overall", {}).get("near_copies"))
               for k, _ in spaces]
        table.rows.append([(label, ""), (pct(entry["overall"]), "")] + [(c, "") for c in cells + aux + mem])
    return table


def memorisation_table(memorisation: Mapping[str, Any]) -> Table:
    """Per synthetic set and class (then "all"): images, and in the oracle's features and in pixels the typical
    real-real nearest-neighbour distance tau, the median distance of a synthetic image to its nearest training
    image of its class, their median ratio and the share of near-copies (``tailsynth.report.memorisation``)."""
    spaces = (("features", "features"), ("pixels", "pixels"))
    headers = ["images", "class", "n"]
    for _, h in spaces:
        headers += [f"{h}: tau", f"{h}: median NN dist.", f"{h}: median dist./tau", f"{h}: near-copies %"]
    table = Table("Synthetic image memorisation (nearest training image of the class)", headers,
                  caption="For each synthetic image, the distance to its nearest training image of its class, in "
                          "the oracle's penultimate features (Euclidean) and in pixels (root-mean-square "
                          "difference, pixels in [0, 1]). tau = the class's typical real-real distance: the "
                          "median over its training images of the distance to their nearest other training image "
                          "of the class (defined from two training images). Near-copy: distance < tau, or 0. "
                          "'all': every image of the set whose class has a tau.")
    num = lambda v, f="{:.3f}": f.format(v) if v is not None else "–"  # noqa: E731
    pct = lambda v: f"{100 * v:.1f}" if v is not None else "–"  # noqa: E731
    for name, entry in memorisation.items():
        classes = list(entry[spaces[0][0]]["per_class"]) + ["all"]
        for c in classes:
            row = [(f"synthetic: {name}", ""), (c, "")]
            for i, (key, _) in enumerate(spaces):
                part = entry[key]
                e = part["overall"] if c == "all" else part["per_class"][c]
                if i == 0:
                    row.append((str(e["n"]), ""))
                row += [(num(e.get("typical")), ""), (num(e.get("median")), ""),
                        (num(e.get("median_ratio"), "{:.2f}"), ""), (pct(e.get("near_copies")), "")]
            table.rows.append(row)
    return table
