"""The synthetic-image quality table (LoGex §4.4): the oracle's accuracy on each method's synthetic tail
images and on the real tail test images, overall and per tail class, from ``quality.json``."""
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


def quality_table(quality: Mapping[str, Any]) -> Table:
    classes = list(quality["real_tail_test"]["per_class"])
    table = Table("Synthetic image quality (oracle accuracy, %, LoGex §4.4)", ["images", "oracle acc."] + classes,
                  caption="The oracle is trained on every non-test image of every class; it is used for this "
                          "table only.")
    for name, entry in quality.items():
        label = "real tail (test)" if name == "real_tail_test" else f"synthetic: {name}"
        cells = [f"{100 * entry['per_class'][c]:.1f}" if c in entry["per_class"] else "–" for c in classes]
        overall = f"{100 * entry['overall']:.1f}" if entry["overall"] is not None else "–"
        table.rows.append([(label, ""), (overall, "")] + [(c, "") for c in cells])
    return table
