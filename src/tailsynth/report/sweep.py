"""The images-per-class sweep sections of the report (LoGex Fig. 3: synthetic images per tail class vs FPR@95).

Rows come from the evaluation artifacts of the sweep (``logex@25`` ...) and, for N = ``synthesis.n_per_class``,
of the method's main row; every N is averaged over the same seeds (``sweep_seeds``) so the points compare.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import read_json
from .tables import Table


def row_label(method: str, per_class: int | None, n_default: int) -> str:
    """The report row of ``method`` trained on ``per_class`` synthetic images per tail class: the method's
    own name at its default count (or None), ``method@N`` otherwise."""
    return method if per_class is None or per_class == n_default else f"{method}@{per_class}"


COLUMNS = (("fpr95", "FPR@95 ↓"), ("auroc", "AUROC ↑"), ("bacc_head", "bAcc-head ↑"), ("bacc_tail", "bAcc-tail ↑"))


def sweep_points(sweep: dict[str, list[int]], n_default: int, seeds: list[int],
                 evaluation_dirs: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """{method: [{"n": N, "seeds": [...], metric: (mean, std) ...}, ...] sorted by N}; metrics in %."""
    runs = [read_json(Path(d) / "metrics.json") for d in evaluation_dirs]
    out: dict[str, list[dict[str, Any]]] = {}
    for method, counts in sweep.items():
        points = []
        for n in sorted(set(counts) | {n_default}):
            label = row_label(method, n, n_default)
            chosen = [r for r in runs if r["method"] == label and r["seed"] in seeds]
            if not chosen:
                continue
            point: dict[str, Any] = {"n": n, "seeds": sorted(r["seed"] for r in chosen)}
            for key, _ in COLUMNS:
                values = np.array([100 * r["metrics"][key] for r in chosen])
                point[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
            points.append(point)
        out[method] = points
    return out


def _cells(point: dict[str, Any]) -> list[str]:
    return [str(point["n"])] + [f"{point[k][0]:.2f} ± {point[k][1]:.2f}" if len(point["seeds"]) > 1
                                else f"{point[k][0]:.2f}" for k, _ in COLUMNS] + [",".join(map(str, point["seeds"]))]


HEADER = ["images / tail class"] + [label for _, label in COLUMNS] + ["seeds"]


def sweep_tables(points: dict[str, list[dict[str, Any]]]) -> list[Table]:
    """One table per swept method: images per tail class vs the Table-2 metrics (mean ± std over seeds)."""
    tables = []
    for method, rows in points.items():
        table = Table(f"Synthetic images per tail class: {method} (LoGex Fig. 3)", list(HEADER),
                      caption="Percent, mean ± sample std over the listed seeds.")
        table.rows = [[(c, "") for c in _cells(p)] for p in rows]
        tables.append(table)
    return tables


def sweep_plot(method: str, rows: list[dict[str, Any]]) -> bytes:
    """FPR@95 vs synthetic images per tail class (log2 axis), error bars = std over seeds (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ns = [p["n"] for p in rows]
    ax.errorbar(ns, [p["fpr95"][0] for p in rows], yerr=[p["fpr95"][1] for p in rows], marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("synthetic images per tail class")
    ax.set_ylabel("FPR@95 (%)")
    ax.set_title(method)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def sweep_sections(points: dict[str, list[dict[str, Any]]]) -> list:
    """The sweep tables (Markdown + HTML) and plots (HTML) of the report."""
    sections: list = []
    for table, (method, rows) in zip(sweep_tables(points), points.items()):
        sections += [table, (f"FPR@95 vs synthetic images per tail class ({method})", sweep_plot(method, rows))]
    return sections
