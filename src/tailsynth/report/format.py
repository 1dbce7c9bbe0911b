"""Display names, the "25.05 ± 1.23" cell format and best / second-best ranking (LoGex Tables 1-3).

Tables show percentages (fraction x 100) with two decimals, "mean ± std" over seeds. Ranking compares
the means AS DISPLAYED (rounded to two decimals), so two cells that read the same are ranked the same.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

# (key, header, higher_is_better): the four columns of LoGex Table 2
TABLE2_COLUMNS = (("fpr95", "FPR@95 ↓", False), ("auroc", "AUROC ↑", True),
                  ("bacc_head", "bAcc-head ↑", True), ("bacc_tail", "bAcc-tail ↑", True))
VAL_COLUMNS = (("val_fpr95", "val FPR@95 ↓", False), ("val_auroc", "val AUROC ↑", True))
SCORE_COLUMNS = (("fpr95", "FPR@95 ↓", False), ("auroc", "AUROC ↑", True))
ACCURACY_LABELS = {"acc": "top-1 acc ↑", "acc_many": "many-shot acc ↑", "acc_medium": "medium-shot acc ↑",
                   "acc_few": "few-shot acc ↑"}

# score names of tailsynth.ood in the row order of LoGex Table 3, with the paper's labels
SCORE_LABELS = {
    "p_tail": "P(tail)", "msp_head": "MSP head", "msp_tail": "MSP tail", "energy_head": "Energy head",
    "energy_tail": "Energy tail", "maxlogit_head": "MaxLogit head", "maxlogit_tail": "MaxLogit tail",
    "maha_head": "Maha dist. to head", "maha_tail": "Maha dist. to tail",
    "maha_tail_minus_head": "Maha dist. to tail - to head", "rmaha": "relative Maha distance",
    "knn": "Deep k-NN", "vim": "ViM",
}


def score_label(name: str) -> str:
    return SCORE_LABELS.get(name, name)


def order_scores(names: Sequence[str]) -> list[str]:
    """Table-3 order for the known scores, the others after them in sorted order."""
    known = [n for n in SCORE_LABELS if n in names]
    return known + sorted(n for n in names if n not in SCORE_LABELS)


def order_methods(available: Sequence[str], preferred: Sequence[str] | None) -> list[str]:
    """``preferred`` names that have results first (in that order), then the rest in results order."""
    first = [m for m in (preferred or []) if m in available]
    return first + [m for m in available if m not in first]


def percent(value: float) -> float:
    """The displayed number: fraction -> percent, rounded to two decimals."""
    return round(100.0 * float(value), 2)


def fmt_cell(stat: Mapping[str, Any] | None) -> str:
    """``{"mean": 0.2505, "std": 0.0123}`` -> ``"25.05 ± 1.23"``; one seed -> ``"25.05"`` (no std to show);
    a missing metric -> ``"–"``. A stat with a 95 % interval ``ci95`` shows it: ``"25.05 ± 1.23 [22.9, 27.1]"``."""
    if not stat:
        return "–"
    if len(stat.get("values", [None, None])) < 2:
        text = f"{100.0 * stat['mean']:.2f}"
    else:
        text = f"{100.0 * stat['mean']:.2f} ± {100.0 * stat['std']:.2f}"
    if stat.get("ci95"):
        lo, hi = stat["ci95"]
        text += f" [{100.0 * lo:.1f}, {100.0 * hi:.1f}]"
    return text


def rank_marks(stats: Sequence[Mapping[str, Any] | None], higher_is_better: bool) -> list[str]:
    """Per row ``"best"``, ``"second"`` or ``""`` (LoGex Table 2 marks the best and the second best).

    Nothing is marked with fewer than two rows or when all rows read the same, and no second best with
    fewer than three rows.
    """
    shown = [percent(s["mean"]) if s else None for s in stats]
    distinct = sorted({v for v in shown if v is not None}, reverse=higher_is_better)
    n_rows = sum(v is not None for v in shown)
    marks = []
    for v in shown:
        if v is None or n_rows < 2 or len(distinct) < 2:
            marks.append("")
        elif v == distinct[0]:
            marks.append("best")
        elif n_rows >= 3 and len(distinct) > 1 and v == distinct[1]:
            marks.append("second")
        else:
            marks.append("")
    return marks


def md_mark(text: str, mark: str) -> str:
    """Markdown emphasis: bold best, underline (``<u>``, as in the paper's table) second best."""
    if mark == "best":
        return f"**{text}**"
    if mark == "second":
        return f"<u>{text}</u>"
    return text


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"
