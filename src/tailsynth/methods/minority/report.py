"""Report sections of the ``minority_figures`` stage (Um et al. 2024): score vs rarity correlations (Fig. 10), the
Table-1 metrics of plain and minority-guided synthetic tail images, and the figures (Figs. 2, 3 / 6, 15-16)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...report.html import Section
from ...report.tables import Table
from ...utils import read_json

_METRICS = (("avgknn", "AvgkNN ↑", 3), ("lof", "LOF ↑", 3), ("rarity", "Rarity ↑", 3), ("rarity_scored", "in manifold", 2),
            ("precision", "precision ↑", 3), ("recall", "recall ↑", 3), ("frechet", "Fréchet ↓", 1))


def correlation_table(result: dict[str, Any]) -> Table:
    table = Table("Minority score vs rarity of the real images (Spearman, within class; Um et al. Fig. 10)",
                  ["distance", "AvgkNN (k = 5)", "LOF (k = 20)"],
                  caption="Mean over classes of the within-class Spearman correlation between a score distance and "
                          "the image's AvgkNN / LOF among the scored real images of its class, in the oracle's "
                          f"features. The guidance's levels are cut from the {result['distance']} score.")
    for dist, row in result["correlations"].items():
        cells = [row[m]["mean"] for m in ("avgknn", "lof")]
        table.rows.append([(dist, "")] + [("–" if v is None else f"{v:.3f}", "") for v in cells])
    return table


def generation_table(result: dict[str, Any]) -> Table:
    pair = {"conditional": "class-conditional, Eq. 16/17; ", "unconditional": "unconditional, Eq. 7/8; "}
    table = Table(f"Minority guidance: synthetic tail images ({pair.get(result.get('mode'), '')}w = "
                  f"{result['scale']:g}, target level {result['target']} of L = {result['num_levels']}; "
                  "Um et al. Table 1, Figs. 3 / 6)",
                  ["images"] + [label for _, label, _ in _METRICS] + ["oracle acc. %"],
                  caption="Mean over tail classes. AvgkNN, LOF, Rarity against the class's real non-test tail "
                          f"images ({result['n_pool_tail']} in all); precision, recall and Fréchet distance against "
                          "their most unique half (highest AvgkNN), oracle features. Ancestral rows: ancestral "
                          "sampling with the same noise without and with guidance (the paper's comparison); DDIM "
                          "rows: the images the logex-lora and minority rows train on.")
    for name in result.get("sets", list(result["generation"])):  # the JSON file sorts its keys
        mean = result["generation"][name]["mean"]
        cells = ["–" if mean.get(key) is None else f"{mean[key]:.{digits}f}" for key, _, digits in _METRICS]
        acc = result["oracle_accuracy"].get(name)
        table.rows.append([(name, "")] + [(c, "") for c in cells] + [("–" if acc is None else f"{100 * acc:.1f}", "")])
    return table


def minority_sections(folder: Path) -> tuple[list[Section], dict[str, Any]]:
    """(Tables and figure sections, the ``minority`` block of results.json) from a minority_figures artifact."""
    folder = Path(folder)
    result = read_json(folder / "minority.json")
    sections: list[Section] = [correlation_table(result), generation_table(result)]
    figures = [("rarity_hist.png", "Minority guidance: AvgkNN / LOF / Rarity of plain vs guided synthetic tail images "
                                   "(ancestral pair above, DDIM pair below; Figs. 3, 6)"),
               ("ancestral.png", "Ancestral sampling without and with minority guidance, the same noise per column"),
               ("real_by_score.png", "Real images with the lowest / median / highest minority score per class (Fig. 2)")]
    figures += [(p.name, f"Target level x scale, {p.stem[len('levels_'):]} (Figs. 15-16)")
                for p in sorted(folder.glob("levels_*.png"))]
    sections += [(title, (folder / name).read_bytes()) for name, title in figures if (folder / name).is_file()]
    return sections, result
