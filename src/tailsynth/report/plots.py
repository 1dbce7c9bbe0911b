"""Report figures as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot, no global backend change).

ROC curves and score histograms use ONE run per method: its lowest seed (seed 0 in the usual setup).
Pooling scores over seeds would mix differently-scaled scores of different models, and the pooled curve
would not match the per-seed AUROC of the tables. The ROC follows the metric convention of LoGex /
Dream-OOD: head is the positive class, head-likeness = -score, x = FPR (tail accepted as head), y = TPR
(head accepted); FPR@95 is the x where the curve reaches y = 0.95 (dashed line).
"""
from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from .format import score_label
from .runs import RunResult

DPI = 110
MAX_BAR_CLASSES = 30


def figure_png(fig: Figure) -> bytes:
    """Render a matplotlib Figure to PNG bytes through the Agg canvas."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def representative_runs(groups: Mapping[str, Sequence[RunResult]], score: str,
                        own: Mapping[str, str] | None = None) -> dict[str, RunResult]:
    """{method: its lowest-seed run} among runs that hold the per-sample ``score`` (``own[method]`` for a row
    with its own score) with head and tail."""
    chosen = {}
    for method, runs in groups.items():
        name = (own or {}).get(method, score)
        usable = [r for r in runs if name in r.score_arrays and r.is_tail is not None
                  and r.is_tail.any() and (~r.is_tail).any()]
        if usable:
            chosen[method] = min(usable, key=lambda r: r.seed)
    return chosen


def roc_points(run: RunResult, score: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(FPR, TPR, AUROC) of ``score`` with head positive on head-likeness = -score (sklearn ``roc_curve``)."""
    is_head = ~run.is_tail
    head_likeness = -run.score_arrays[score]
    fpr, tpr, _ = roc_curve(is_head, head_likeness)
    return fpr, tpr, float(roc_auc_score(is_head, head_likeness))


def plot_roc(groups: Mapping[str, Sequence[RunResult]], score: str, own: Mapping[str, str] | None = None
             ) -> bytes | None:
    """One ROC curve per method (lowest seed) for ``score`` (``own[method]`` for a row with its own primary
    score, named in its legend entry); None when no run holds that score."""
    own = own or {}
    runs = representative_runs(groups, score, own)
    if not runs:
        return None
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    for method, run in runs.items():
        name = own.get(method, score)
        fpr, tpr, auc = roc_points(run, name)
        which = f", {score_label(name)}" if name != score else ""
        ax.plot(fpr, tpr, lw=1.6, label=f"{method} (seed {run.seed}{which}, AUROC {100 * auc:.2f})")
    ax.axhline(0.95, color="grey", ls="--", lw=0.8, label="TPR 95 %")
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.8)
    ax.set_xlabel("FPR: tail accepted as head")
    ax.set_ylabel("TPR: head accepted as head")
    ax.set_title(f"ROC of {score_label(score)} (head positive)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    return figure_png(fig)


def plot_histograms(groups: Mapping[str, Sequence[RunResult]], score: str, own: Mapping[str, str] | None = None
                    ) -> bytes | None:
    """Per method (lowest seed): density histograms of ``score`` (``own[method]``) on head vs tail test images."""
    own = own or {}
    runs = representative_runs(groups, score, own)
    if not runs:
        return None
    ncols = min(3, len(runs))
    nrows = math.ceil(len(runs) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.0 * nrows))
    for i, (method, run) in enumerate(runs.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        name = own.get(method, score)
        values = run.score_arrays[name]
        finite = values[np.isfinite(values)]
        bins = np.histogram_bin_edges(finite, bins=40) if finite.size else 10
        ax.hist(values[~run.is_tail], bins=bins, density=True, alpha=0.6, label="head", color="tab:blue")
        ax.hist(values[run.is_tail], bins=bins, density=True, alpha=0.6, label="tail", color="tab:red")
        ax.set_title(f"{method} (seed {run.seed})", fontsize=9)
        ax.set_xlabel(score_label(name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def mean_per_class(runs: Sequence[RunResult], class_names: Sequence[str]) -> np.ndarray:
    """Per-class accuracy averaged over the runs that have the class (NaN where none has it)."""
    out = np.full(len(class_names), np.nan)
    for i, name in enumerate(class_names):
        values = [r.per_class_acc[name] for r in runs if name in r.per_class_acc]
        if values:
            out[i] = float(np.mean(values))
    return out


def plot_per_class(groups: Mapping[str, Sequence[RunResult]]) -> bytes | None:
    """Grouped bars: per-class test accuracy (mean over seeds) of each method; tail classes shaded.

    With more than ``MAX_BAR_CLASSES`` classes (CIFAR-100) each method is a line of markers instead.
    """
    groups = {m: runs for m, runs in groups.items() if any(r.per_class_acc for r in runs)}
    if not groups:
        return None
    first = next(iter(groups.values()))[0]
    class_names = first.class_names or sorted({c for rs in groups.values() for r in rs for c in r.per_class_acc})
    tail = set(first.tail_classes)
    n_cls, n_meth = len(class_names), len(groups)
    width = 0.8 / n_meth
    per_class_width = 0.25 * max(1.0, n_meth / 2) if n_cls <= MAX_BAR_CLASSES else 0.15
    fig = Figure(figsize=(min(24.0, max(6.0, per_class_width * n_cls)), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n_cls)
    for c in sorted(tail):
        if c < n_cls:
            ax.axvspan(c - 0.5, c + 0.5, color="mistyrose", zorder=0)
    for j, (method, runs) in enumerate(groups.items()):
        acc = 100 * mean_per_class(runs, class_names)
        if n_cls <= MAX_BAR_CLASSES:
            ax.bar(x - 0.4 + (j + 0.5) * width, np.nan_to_num(acc), width, label=method, zorder=2)
        else:  # too many classes for grouped bars: one line of markers per method
            ax.plot(x, acc, marker="o", ms=2.5, lw=0.7, label=method, zorder=2)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n}*" if i in tail else n for i, n in enumerate(class_names)],
                       rotation=90 if n_cls > 12 else 30, fontsize=7, ha="center" if n_cls > 12 else "right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class accuracy, mean over seeds (tail classes shaded, *)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure_png(fig)
